// Unit tests of alias picking (src/aliases/table.ts): smooth weighted round-robin over the
// backends with a Healthy instance, weighted rendezvous hashing for sticky keys, the mirror
// share, and the table that swaps aliases whole. These replace the 10,000-call end-to-end
// weight check (test/aliases.test.ts keeps one smaller end-to-end run): here the split is
// exact, in milliseconds, so a regression shows as a wrong count, not a flaky percentage.
// Only the imports below name the module, so a move to src/routing/ changes just them.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { AliasTable, percentile, type AliasRoute } from '../../src/aliases/table.js';
import type { AliasSpec } from '../../src/core/types.js';

let ids = 0;
/** A route as the gateway gets it: through the table, from a stored alias record. */
function route(backends: Array<[string, number]>, extra: Partial<AliasSpec> = {}, table = new AliasTable()): AliasRoute {
  const name = extra.name ?? `alias-${++ids}`;
  const spec: AliasSpec = {
    name, description: '', folderId: 'default', projectId: 'default',
    backends: backends.map(([nodeId, weight]) => ({ nodeId, weight })),
    executionAcl: { folders: ['default'], isPublic: false }, proxyMetadata: { headers: [] }, sticky: null, mirror: null, ...extra,
  };
  table.set({ id: extra.name ? `id-${extra.name}` : `id-${ids}`, spec, createdAt: '', updatedAt: '', createdBy: 'test' });
  return table.get(name)!;
}

const all = (): boolean => true;
const except = (...down: string[]) => (nodeId: string): boolean => !down.includes(nodeId);

function picks(r: AliasRoute, n: number, canServe: (id: string) => boolean = all): string[] {
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(r.pick(canServe));
  return out;
}

function count(list: string[]): Record<string, number> {
  const c: Record<string, number> = {};
  for (const x of list) c[x] = (c[x] ?? 0) + 1;
  return c;
}

describe('weighted round-robin', () => {
  test('90/10 over 10,000 calls is exactly 9,000/1,000, and 90±1 in every window of 100', () => {
    const r = route([['a', 90], ['b', 10]]);
    const seq = picks(r, 10_000);
    assert.deepEqual(count(seq), { a: 9000, b: 1000 });
    for (let i = 0; i + 100 <= seq.length; i++) {
      const a = seq.slice(i, i + 100).filter((x) => x === 'a').length;
      assert.ok(Math.abs(a - 90) <= 1, `window at ${i}: ${a} calls to a`);
    }
    // smooth: never two calls in a row to the light backend
    for (let i = 1; i < seq.length; i++) assert.ok(!(seq[i] === 'b' && seq[i - 1] === 'b'), `b twice in a row at ${i}`);
  });

  test('three backends 5/3/2: exact in every block of 10; weights need not be integers', () => {
    const r = route([['a', 5], ['b', 3], ['c', 2]]);
    const seq = picks(r, 1000);
    for (let i = 0; i < seq.length; i += 10) assert.deepEqual(count(seq.slice(i, i + 10)), { a: 5, b: 3, c: 2 }, `block at ${i}`);
    const f = route([['a', 0.75], ['b', 0.25]]);
    assert.deepEqual(count(picks(f, 400)), { a: 300, b: 100 });
  });

  test('equal weights alternate', () => {
    const r = route([['a', 1], ['b', 1]]);
    assert.deepEqual(picks(r, 6), ['a', 'b', 'a', 'b', 'a', 'b']);
  });

  test('a backend without a Healthy instance gets nothing; the rest keep their ratio', () => {
    const r = route([['a', 50], ['b', 30], ['c', 20]]);
    assert.deepEqual(count(picks(r, 800, except('c'))), { a: 500, b: 300 });
    assert.deepEqual(count(picks(r, 100, except('a', 'b'))), { c: 100 });
    // back to healthy: the full split again (over whole periods once the state has settled)
    picks(r, 100);
    assert.deepEqual(count(picks(r, 1000)), { a: 500, b: 300, c: 200 });
  });

  test('when no backend has a Healthy instance, all of them by weight (the call then waits or fails at the node)', () => {
    const r = route([['a', 3], ['b', 1]]);
    assert.deepEqual(count(picks(r, 400, () => false)), { a: 300, b: 100 });
  });

  test('one backend is always the one, healthy or not', () => {
    const r = route([['only', 7]]);
    assert.deepEqual(count(picks(r, 10, () => false)), { only: 10 });
  });

  test('each route keeps its own state: two aliases over the same nodes do not disturb each other', () => {
    const table = new AliasTable();
    const x = route([['a', 1], ['b', 1]], { name: 'x-alias' }, table);
    const y = route([['a', 1], ['b', 1]], { name: 'y-alias' }, table);
    assert.deepEqual([x.pick(all), y.pick(all), x.pick(all), y.pick(all)], ['a', 'a', 'b', 'b']);
  });
});

describe('sticky keys (weighted rendezvous hashing)', () => {
  const keys = Array.from({ length: 10_000 }, (_, i) => `session-${i}`);
  const map = (r: AliasRoute, canServe: (id: string) => boolean = all): string[] => keys.map((k) => r.pick(canServe, k));

  test('the same key always reaches the same node, and does not move the round-robin', () => {
    const r = route([['a', 1], ['b', 1], ['c', 1]]);
    const first = r.pick(all, 'user-42');
    for (let i = 0; i < 100; i++) assert.equal(r.pick(all, 'user-42'), first);
    assert.deepEqual(picks(r, 3), ['a', 'b', 'c'], 'sticky picks leave the round-robin state alone');
  });

  test('keys spread by weight: 10,000 keys at 90/10 within ±2 points', () => {
    const shareA = map(route([['a', 90], ['b', 10]])).filter((n) => n === 'a').length / keys.length;
    assert.ok(Math.abs(shareA - 0.9) <= 0.02, `a got ${(shareA * 100).toFixed(2)}%`);
    const c = count(map(route([['a', 1], ['b', 1], ['c', 1], ['d', 1]])));
    for (const n of ['a', 'b', 'c', 'd']) assert.ok(Math.abs(c[n]! / keys.length - 0.25) <= 0.02, JSON.stringify(c));
  });

  test('a weight change moves only the keys it must: none away from a node whose weight grows', () => {
    const before = map(route([['a', 90], ['b', 10]]));
    const after = map(route([['a', 80], ['b', 20]]));
    let moved = 0;
    for (let i = 0; i < keys.length; i++) {
      if (before[i] === 'b') assert.equal(after[i], 'b', `key ${keys[i]} left b although b grew`);
      if (before[i] !== after[i]) moved++;
    }
    // the least any scheme can move is the share that changed hands: 10 points
    assert.ok(moved / keys.length <= 0.13, `${moved} keys moved`);
    assert.ok(moved > 0);
  });

  test('scaling all weights alike moves no key; the order of backends does not matter', () => {
    const base = map(route([['a', 3], ['b', 1], ['c', 2]]));
    assert.deepEqual(map(route([['a', 300], ['b', 100], ['c', 200]])), base);
    assert.deepEqual(map(route([['c', 2], ['a', 3], ['b', 1]])), base);
  });

  test('adding a node moves keys only to it; removing one moves only its keys', () => {
    const two = map(route([['a', 1], ['b', 1]]));
    const three = map(route([['a', 1], ['b', 1], ['c', 1]]));
    for (let i = 0; i < keys.length; i++) if (three[i] !== two[i]) assert.equal(three[i], 'c', keys[i]);
    const share = three.filter((n) => n === 'c').length / keys.length;
    assert.ok(Math.abs(share - 1 / 3) <= 0.02, `c took ${share}`);
  });

  test('an unhealthy node loses only its own keys, and gets them back when healthy', () => {
    const r = route([['a', 1], ['b', 1], ['c', 1]]);
    const healthy = map(r);
    const bDown = map(r, except('b'));
    for (let i = 0; i < keys.length; i++) {
      if (healthy[i] === 'b') assert.notEqual(bDown[i], 'b');
      else assert.equal(bDown[i], healthy[i], `key ${keys[i]} moved although its node stayed healthy`);
    }
    assert.deepEqual(map(r), healthy);
  });
});

describe('mirror share', () => {
  const mirrored = (percent: number, n: number): boolean[] => {
    const r = route([['a', 1]], { mirror: { nodeId: 'shadow', percent } });
    return Array.from({ length: n }, () => r.shouldMirror());
  };

  test('exactly percent out of every 100 calls, evenly spread', () => {
    for (const p of [1, 10, 25, 33, 50, 99, 100]) {
      const seq = mirrored(p, 1000);
      for (let i = 0; i < 1000; i += 100) assert.equal(seq.slice(i, i + 100).filter(Boolean).length, p, `${p}% block at ${i}`);
    }
    const tenth = mirrored(10, 100);
    assert.deepEqual(tenth.flatMap((m, i) => (m ? [i] : [])), [9, 19, 29, 39, 49, 59, 69, 79, 89, 99], 'one in ten, not ten in a row');
  });

  test('fractional percent and none', () => {
    assert.equal(mirrored(12.5, 800).filter(Boolean).length, 100);
    assert.equal(mirrored(0.5, 1000).filter(Boolean).length, 5);
    const r = route([['a', 1]]);
    for (let i = 0; i < 100; i++) assert.equal(r.shouldMirror(), false);
  });

  test('statistics survive an update that keeps the shadow node, and start over when it changes', () => {
    const table = new AliasTable();
    const r = route([['a', 1]], { name: 'mirrored', mirror: { nodeId: 'shadow', percent: 50 } }, table);
    r.mirrorStats.sent += 3;
    r.recordMirror(10, 12, true);
    r.recordMirror(20, 25, false);
    r.recordMirror(30, null, null);
    const s1 = table.mirrorStatus('mirrored')!;
    assert.equal(s1.sent, 3);
    assert.equal(s1.compared, 2);
    assert.equal(s1.differing, 1);
    assert.equal(s1.differingRatio, 0.5);
    assert.equal(s1.shadowErrors, 1);
    assert.equal(s1.primaryP50Ms, 20);
    assert.equal(s1.shadowP99Ms, 25);
    route([['a', 2]], { name: 'mirrored', mirror: { nodeId: 'shadow', percent: 10 } }, table);
    assert.equal(table.mirrorStatus('mirrored')!.compared, 2, 'same shadow: kept');
    assert.equal(table.get('mirrored')!.spec.mirror!.percent, 10);
    route([['a', 2]], { name: 'mirrored', mirror: { nodeId: 'other-shadow', percent: 10 } }, table);
    assert.equal(table.mirrorStatus('mirrored')!.compared, 0, 'new shadow: fresh statistics');
    route([['a', 2]], { name: 'mirrored' }, table);
    assert.equal(table.mirrorStatus('mirrored'), null, 'no mirror, no status');
  });

  test('latency samples are bounded', () => {
    const r = route([['a', 1]], { mirror: { nodeId: 's', percent: 100 } });
    for (let i = 0; i < 5000; i++) r.recordMirror(i, i, true);
    assert.equal(r.mirrorStats.primaryMs.length, 1000);
    assert.equal(r.mirrorStats.primaryMs[0], 4000, 'the newest are kept');
  });
});

describe('alias table', () => {
  test('a rename drops the old name; relatedTo finds backends and shadows; delete', () => {
    const table = new AliasTable();
    const spec = (name: string, extra: Partial<AliasSpec> = {}): AliasSpec => ({
      name, description: '', folderId: 'f', projectId: 'p', backends: [{ nodeId: 'n1', weight: 1 }],
      executionAcl: { folders: ['f'], isPublic: false }, proxyMetadata: { headers: [] }, sticky: null, mirror: null, ...extra,
    });
    table.set({ id: 'A1', spec: spec('first'), createdAt: '', updatedAt: '', createdBy: 'test' });
    table.set({ id: 'A2', spec: spec('second', { mirror: { nodeId: 'n2', percent: 5 } }), createdAt: '', updatedAt: '', createdBy: 'test' });
    const old = table.get('first')!;
    table.set({ id: 'A1', spec: spec('renamed'), createdAt: '', updatedAt: '', createdBy: 'test' });
    assert.equal(table.get('first'), undefined);
    assert.notEqual(table.get('renamed'), old, 'an update is a new route object (an atomic swap)');
    assert.deepEqual(table.relatedTo('n1').sort(), ['renamed', 'second']);
    assert.deepEqual(table.relatedTo('n2'), ['second']);
    assert.deepEqual(table.relatedTo('n3'), []);
    table.delete('second');
    assert.deepEqual(table.relatedTo('n2'), []);
  });

  test('ACL: listed folders, or everyone when public', () => {
    const r = route([['a', 1]], { executionAcl: { folders: ['team-a', 'team-b'], isPublic: false } });
    assert.equal(r.mayCall('team-a'), true);
    assert.equal(r.mayCall('team-b'), true);
    assert.equal(r.mayCall('team-c'), false);
    const p = route([['a', 1]], { executionAcl: { folders: [], isPublic: true } });
    assert.equal(p.mayCall('anyone'), true);
  });

  test('percentile', () => {
    assert.equal(percentile([], 50), null);
    assert.equal(percentile([5], 99), 5);
    assert.equal(percentile([3, 1, 2, 4], 50), 3);
    assert.equal(percentile(Array.from({ length: 100 }, (_, i) => 100 - i), 99), 100);
  });
});
