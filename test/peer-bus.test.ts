// The servers' bus (src/peers/bus.ts) on a real PostgreSQL: one lease holder at a time, snapshots
// and changes reaching the other server, catch-up after a broken session, takeover when the
// leader's session ends, and a leader whose session breaks told so (it must stop leading).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { PeerBus, type PeerHandlers, type PeerEvent } from '../src/peers/bus.js';
import type { RoutingSnapshot } from '../src/routing/snapshot.js';
import { createTestDatabase, pgProblem, type TestDatabase } from './pg-support.js';
import { waitFor } from './helpers.js';

let db: TestDatabase;
let skip: string | null = null;
const buses: PeerBus[] = [];

before(async () => {
  skip = await pgProblem();
  if (skip) {
    if (process.env.CI) throw new Error(`CI must have PostgreSQL: ${skip}`);
    return;
  }
  db = await createTestDatabase();
});

after(async () => {
  for (const b of buses) await b.close().catch(() => undefined);
  await db?.drop();
});

interface Seen { elected: number[]; lost: string[]; snapshots: RoutingSnapshot[]; changes: string[]; events: PeerEvent[] }

async function join(url: string): Promise<{ bus: PeerBus; seen: Seen }> {
  const seen: Seen = { elected: [], lost: [], snapshots: [], changes: [], events: [] };
  const handlers: PeerHandlers = {
    elected: async (term) => { seen.elected.push(term); },
    lost: (reason) => { seen.lost.push(reason); },
    snapshot: (s) => { seen.snapshots.push(s); },
    changed: (kind) => { seen.changes.push(kind); },
    event: (e) => { seen.events.push(e); },
    load: () => undefined,
  };
  const bus = await PeerBus.connect(db.url);
  buses.push(bus);
  await bus.start(url, handlers);
  return { bus, seen };
}

const snapshot = (version: number): RoutingSnapshot => ({ version, nodes: [] });

test('one leader; its snapshots, changes and followers\' events cross within 100 ms', async (t) => {
  if (skip) return t.skip(skip);
  const one = await join('http://127.0.0.1:1');
  const two = await join('http://127.0.0.1:2');
  assert.equal(one.bus.isLeader, true, 'the first server up leads');
  assert.equal(two.bus.isLeader, false);
  assert.equal(two.bus.leader, 'http://127.0.0.1:1', 'followers know where the leader answers');
  assert.equal(one.bus.clusterId, two.bus.clusterId);

  const delays: number[] = [];
  for (let v = 1; v <= 50; v++) {
    const at = performance.now();
    one.bus.publishSnapshot(snapshot(v));
    await waitFor(`snapshot ${v}`, async () => two.seen.snapshots.at(-1)?.version === v, 2000, 1);
    delays.push(performance.now() - at);
  }
  delays.sort((x, y) => x - y);
  t.diagnostic(`snapshot propagation p50 ${delays[25].toFixed(1)} ms, max ${delays[49].toFixed(1)} ms`);
  assert.ok(delays[25] < 100, `p50 under 100 ms (${delays[25]})`);

  // a burst is coalesced; the last one always arrives
  for (let v = 51; v <= 150; v++) one.bus.publishSnapshot(snapshot(v));
  await waitFor('the newest of a burst', async () => two.seen.snapshots.at(-1)?.version === 150, 2000, 5);
  const versions = two.seen.snapshots.map((s) => s.version);
  assert.deepEqual(versions, [...versions].sort((x, y) => x - y), 'never an older one after a newer');

  two.bus.changed('tokens');
  await waitFor('the leader hears a follower\'s change', async () => one.seen.changes.includes('tokens'), 1000, 5);
  two.bus.event({ t: 'held', nodeId: 'n1' });
  await waitFor('the leader gets the event', async () => one.seen.events.some((e) => e.t === 'held' && e.nodeId === 'n1'), 1000, 5);
  assert.deepEqual(two.seen.events, [], 'followers do not act on events');
});

test('the leader\'s session ends: it is told, and a follower takes the lease within a second', async (t) => {
  if (skip) return t.skip(skip);
  const [one, two] = [buses[0]!, buses[1]!];
  assert.ok(one.isLeader);
  // end the leader's database session from outside, as a network cut or a database restart would
  const admin = new pg.Client({ connectionString: db.url });
  await admin.connect();
  const at = Date.now();
  await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()`);
  await admin.end();
  await waitFor('the old leader knows', async () => !one.isLeader, 2000, 10);
  await waitFor('the follower leads', async () => two.isLeader, 2000, 10);
  t.diagnostic(`takeover ${Date.now() - at} ms after the leader's session ended`);
  assert.ok(Date.now() - at < 1500);
  // the new leader's term is newer: its snapshots win even though its versions start again
  const three = await join('http://127.0.0.1:3');
  two.publishSnapshot(snapshot(1));
  await waitFor('the new term\'s snapshot reaches a new follower', async () => three.seen.snapshots.at(-1)?.version === 1, 2000, 5);
  assert.equal(three.bus.leader, 'http://127.0.0.1:2');
  const servers = await three.bus.servers();
  assert.ok(servers.some((s) => s.leader && s.url === 'http://127.0.0.1:2'));
});
