// How a node spec's placement becomes Swarm's (src/runtimes/swarm.ts placementOf).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { placementOf, serviceName } from '../../src/runtimes/swarm.js';

test('constraints pass through; spread becomes a spread preference over node.labels.<label>', () => {
  assert.deepEqual(placementOf(undefined), {});
  assert.deepEqual(placementOf({ constraints: [] }), {});
  assert.deepEqual(placementOf({ constraints: ['node.role==worker'], spread: 'zone' }), {
    Constraints: ['node.role==worker'], Preferences: [{ Spread: { SpreadDescriptor: 'node.labels.zone' } }],
  });
  assert.deepEqual(placementOf({ constraints: [], spread: 'node.labels.rack' }), { Preferences: [{ Spread: { SpreadDescriptor: 'node.labels.rack' } }] });
  assert.equal(serviceName('abc'), 'berth-abc');
});
