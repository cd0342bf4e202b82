// The gateway's routing table applied from controller snapshots: instances join balancing
// only once their sessions are open, leave it at once when a snapshot drops them and are
// closed when their last call ends; stale snapshots are ignored; a dropped node's waiting
// calls are refused; a worker that cannot be reached is reported back; with gateway workers,
// where a call goes when its node's home changes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseNodeSpec } from '../../src/core/node-spec.js';
import { RELAYED, RoutingTable, loadShape, type LoadReport } from '../../src/gateway/routing-table.js';
import { RelayClient } from '../../src/cluster/call-relay.js';
import type { InstanceEvents, NodeEntry, RoutingSnapshot } from '../../src/routing/snapshot.js';
import { BerthError } from '../../src/core/errors.js';

const ctx = { defaultFolder: 'default', defaultProject: 'default', defaultPython: '/usr/bin/python3' };
const cellSpec = (sessions = 1) => parseNodeSpec({
  kind: 'cell', name: 'node-one', checkpointId: 'c', inputs: [{ name: 'x', type: 'int' }], outputs: [{ name: 'y', type: 'int' }],
  scaling: { minInstances: 1, maxInstances: 4, sessionsPerInstance: sessions },
}, ctx);

/** Real worker-like Unix sockets: they accept connections and count them. */
async function socketServer(path: string): Promise<{ server: Server; open: () => number }> {
  const sockets = new Set<Socket>();
  const server = createServer((s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); s.on('error', () => undefined); });
  await new Promise<void>((r) => server.listen(path, () => r()));
  return { server, open: () => sockets.size };
}

function recorder(): InstanceEvents & { refusedCalls: string[] } {
  const refusedCalls: string[] = [];
  return { refusedCalls, refused: (_n, i) => { refusedCalls.push(i); }, timedOut: () => undefined, held: () => undefined };
}

const until = async (what: string, ok: () => boolean): Promise<void> => {
  for (let i = 0; i < 200 && !ok(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(ok(), what);
};

test('instances take calls once connected, leave at once when dropped, close when idle', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-rt-'));
  const a = await socketServer(join(dir, 'a.sock'));
  const b = await socketServer(join(dir, 'b.sock'));
  const table = new RoutingTable(recorder(), 1024 * 1024);
  try {
    const spec = cellSpec(2);
    const node = (version: number, instances: NodeEntry['instances']): RoutingSnapshot =>
      ({ version, nodes: [{ id: 'n1', spec, specVersion: 'v1', instances }] });
    table.apply(node(1, [{ id: 'a', endpoint: { path: join(dir, 'a.sock') } }]));
    const route = table.route('n1')!;
    assert.ok(route.validateInput, 'a cell node gets its input validator compiled');
    await until('instance a connected with its 2 sessions', () => table.healthyCount('n1') === 1 && a.open() === 2);

    const lease = route.dispatcher.acquire(100) as Exclude<ReturnType<typeof route.dispatcher.acquire>, Promise<unknown>>;
    assert.equal(table.instance('n1', 'a').busy, 1);

    // b joins, a leaves while its call runs: a takes no new call, its idle session closes now, the busy one after release
    table.apply(node(2, [{ id: 'b', endpoint: { path: join(dir, 'b.sock') } }]));
    await until('instance b connected', () => table.healthyCount('n1') === 1 && b.open() === 2);
    await until('a keeps only the session in use', () => a.open() === 1);
    route.dispatcher.release(lease);
    await until('a fully closed after its last call', () => a.open() === 0);
    assert.equal(table.node('n1').busy, 0);

    // a late, older snapshot changes nothing
    table.apply(node(1, [{ id: 'a', endpoint: { path: join(dir, 'a.sock') } }]));
    assert.equal(b.open(), 2);
    assert.equal(a.open(), 0);
  } finally {
    table.apply({ version: 100, nodes: [] }); // closes every connection
    a.server.close(); b.server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a node dropped from the snapshot refuses its waiting calls; an unreachable instance is reported', async () => {
  const events = recorder();
  const table = new RoutingTable(events, 1024 * 1024);
  const spec = cellSpec(1);
  table.apply({ version: 1, nodes: [{ id: 'n1', spec, specVersion: 'v1', instances: [{ id: 'gone', endpoint: { path: '/nonexistent/berth.sock' } }] }] });
  await until('refusal reported', () => events.refusedCalls.includes('gone'));
  assert.equal(table.healthyCount('n1'), 0);
  const waiting = table.route('n1')!.dispatcher.acquire(5000) as Promise<unknown>;
  assert.equal(table.node('n1').waiting, 1);
  table.apply({ version: 2, nodes: [] });
  await assert.rejects(waiting, (err: unknown) => err instanceof BerthError && err.code === 'NODE_NOT_FOUND');
  assert.equal(table.route('n1'), undefined);
});

test('a home that went away: calls waiting here go to the next one (RELAYED); a call that finds it gone after the next was named goes there at once', async () => {
  const clients = new Map<string, RelayClient>();
  const relayTo = (path: string): RelayClient => {
    let c = clients.get(path);
    if (!c) clients.set(path, c = new RelayClient(path, 1 << 20));
    return c;
  };
  const table = new RoutingTable(recorder(), 1024 * 1024, relayTo);
  const spec = cellSpec(1);
  const snapshot = (version: number, relay?: string): RoutingSnapshot =>
    ({ version, nodes: [{ id: 'n1', spec, specVersion: 'v1', instances: [], ...(relay ? { relay } : {}) }] });
  table.apply(snapshot(1, '/run/gateway-1.sock'));
  const route = table.route('n1')!;
  const first = route.relay!;
  assert.equal(route.homeAfter(first), null, 'the home named now could not be reached: the call waits here for the next');

  // the primary makes this worker the home (sessions come here): a call that failed to reach the old one waits here too
  table.apply(snapshot(2));
  assert.equal(route.relay, null);
  assert.equal(route.homeAfter(first), null);

  // a call waiting here when a home is named goes there (RELAYED) ...
  const waiting = route.dispatcher.acquire(5000) as Promise<unknown>;
  table.apply(snapshot(3, '/run/gateway-2.sock'));
  await assert.rejects(waiting, (err: unknown) => err === RELAYED);
  // ... and one still on its way to the dead home when that happened must not wait for a RELAYED already sent
  const next = route.relay!;
  assert.ok(next !== first);
  assert.equal(route.homeAfter(first), next);
  assert.equal(route.homeAfter(next), null);
  for (const c of clients.values()) c.close();
});

test('a load report\'s shape moves with what session leases depend on, not with the counts of running calls', () => {
  const report = (busy: number, waiting: number, held: number, lastUsedAt: number, stickyWaiting?: number): LoadReport => ({
    version: 3,
    nodes: { n1: { busy, waiting, instances: { i1: { busy, held, lastUsedAt, ...(stickyWaiting ? { stickyWaiting } : {}) } } } },
  });
  const steady = loadShape(report(5, 0, 8, 1000));
  assert.equal(loadShape(report(7, 0, 8, 2000)), steady, 'only the running count and last use moved');
  for (const [what, moved] of [
    ['calls wait', report(8, 1, 8, 1000)], ['more calls wait', report(8, 2, 8, 1000)], ['the node went idle', report(0, 0, 8, 1000)],
    ['sessions held', report(5, 0, 7, 1000)], ['a sticky call waits', report(5, 0, 8, 1000, 1)],
  ] as const) assert.notEqual(loadShape(moved), steady, what);
  assert.notEqual(loadShape(report(8, 1, 8, 1000)), loadShape(report(8, 2, 8, 1000)), 'how many wait (queueSize is shared between workers by it)');
  assert.equal(loadShape(null), '');
});
