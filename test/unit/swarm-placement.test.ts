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

test('constraints as Berth reads them to choose a zone to spread to', async () => {
  const { satisfies } = await import('../../src/runtimes/swarm.js');
  const node = { ID: 'abc', Spec: { Role: 'worker', Labels: { zone: 'z2' } }, Description: { Hostname: 'h2', Engine: { Labels: { disk: 'ssd' } } } };
  assert.equal(satisfies(node, 'node.labels.zone==z2'), true);
  assert.equal(satisfies(node, 'node.labels.zone != z2'), false);
  assert.equal(satisfies(node, 'node.labels.rack==r1'), false);
  assert.equal(satisfies(node, 'node.labels.rack!=r1'), true);
  assert.equal(satisfies(node, 'node.role==manager'), false);
  assert.equal(satisfies(node, 'node.hostname==h2'), true);
  assert.equal(satisfies(node, 'node.id==abc'), true);
  assert.equal(satisfies(node, 'engine.labels.disk==ssd'), true);
  assert.equal(satisfies(node, 'node.platform.os==linux'), true, 'unknown to Berth: Swarm decides');
});
