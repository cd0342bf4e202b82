// Unit tests of the per-node dispatcher (src/gateway/dispatcher.ts): the session limit per
// instance, least-busy spreading, the bounded FIFO queue and its 503s, waiter timeouts, a
// caller that leaves while queued, release waking the next waiter, sticky affinity, and an
// instance removed while its sessions are leased. Slots here are plain objects of the shape
// the controller hands over; sessions are tokens (the dispatcher never touches a connection
// beyond its `closed` flag). Only the imports name the module, for the move to src/routing/.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { NodeDispatcher, type Lease, type Slot } from '../../src/gateway/dispatcher.js';
import { hash32 } from '../../src/core/hash.js';
import { BerthError } from '../../src/core/errors.js';

interface TestSession { closed: boolean; n: number }

function slot(id: string, sessions: number): Slot {
  return { id, free: Array.from({ length: sessions }, (_, n): TestSession => ({ closed: false, n })), busy: 0, lastUsedAt: 0, upstream: null, ready: true, retired: false };
}

/** A lease now (asserting it did not queue). */
function now(d: NodeDispatcher, affinity?: string): Lease {
  const l = d.acquire(1000, affinity);
  assert.ok(!(l instanceof Promise), 'expected a free session right away');
  return l;
}

/** A queued acquire (asserting it did queue), with its outcome recorded in order. */
function queued(d: NodeDispatcher, waitMs: number, log: string[], label: string, affinity?: string, signal?: AbortSignal): Promise<Lease | BerthError> {
  const p = d.acquire(waitMs, affinity, signal);
  assert.ok(p instanceof Promise, `${label}: expected to wait`);
  return p.then((l) => { log.push(label); return l; }, (e: BerthError) => { log.push(`${label}:${e.code ?? e.name}`); return e; });
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('sessions per instance', () => {
  test('never more leases on a slot than its sessions, under a random acquire/release mix', async () => {
    const d = new NodeDispatcher('n', 10_000);
    const sessions = 3;
    const slots = [slot('i1', sessions), slot('i2', sessions), slot('i3', sessions)];
    d.setSlots(slots);
    const out = new Map<Slot, Set<unknown>>(slots.map((s) => [s, new Set()]));
    const held: Lease[] = [];
    const pending: Array<Promise<Lease | BerthError>> = [];
    const check = (l: Lease): void => {
      const set = out.get(l.slot)!;
      assert.ok(!set.has(l.conn), 'a session leased twice at once');
      set.add(l.conn);
      assert.ok(set.size <= sessions, `${set.size} leases on ${l.slot.id}`);
      // (a queued lease is seen a microtask after it was handed out, so busy may be ahead of the set)
      assert.ok(l.slot.busy >= set.size && l.slot.busy <= sessions, `${l.slot.id}: busy ${l.slot.busy}`);
      held.push(l);
    };
    let seed = 12345;
    const rand = (): number => { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; return seed / 2 ** 32; };
    for (let step = 0; step < 5000; step++) {
      if (rand() < 0.55) {
        const a = d.acquire(60_000, rand() < 0.2 ? `key-${Math.floor(rand() * 20)}` : undefined);
        if (a instanceof Promise) pending.push(a.then((l) => { check(l); return l; }));
        else check(a);
      } else if (held.length > 0) {
        const l = held.splice(Math.floor(rand() * held.length), 1)[0]!;
        out.get(l.slot)!.delete(l.conn);
        d.release(l); // may hand the session to a waiter synchronously
      }
      for (const s of slots) assert.ok(s.busy + s.free.length === sessions && s.busy >= 0, `${s.id}: busy ${s.busy}, free ${s.free.length}`);
      if (step % 500 === 0) await tick();
    }
    // hand everything back: every waiter gets a session, nothing is left over
    for (let i = 0; i < 100_000 && (held.length > 0 || d.waiting > 0); i++) {
      const l = held.pop();
      if (l) { out.get(l.slot)!.delete(l.conn); d.release(l); }
      await tick();
    }
    await Promise.all(pending);
    for (const l of held.splice(0)) d.release(l);
    assert.equal(d.waiting, 0);
    assert.equal(d.busy, 0);
    for (const s of slots) assert.equal(s.free.length, sessions);
  });

  test('the least busy instance first, so idle instances share the load', () => {
    const d = new NodeDispatcher('n', 10);
    const a = slot('a', 2);
    const b = slot('b', 2);
    d.setSlots([a, b]);
    const l1 = now(d);
    const l2 = now(d);
    assert.notEqual(l1.slot, l2.slot, 'two calls on two idle instances go one each');
    assert.equal(a.busy, 1);
    assert.equal(b.busy, 1);
    d.release(l1);
    const l3 = now(d);
    assert.equal(l3.slot, l1.slot, 'the one with more free sessions');
    assert.equal(d.busy, 2);
  });

  test('a session whose connection broke is not handed out again', () => {
    const d = new NodeDispatcher('n', 10);
    const a = slot('a', 2);
    d.setSlots([a]);
    const l = now(d);
    (l.conn as TestSession).closed = true;
    d.release(l);
    assert.equal(a.busy, 0);
    assert.equal(a.free.length, 1);
    const again = now(d);
    assert.notEqual(again.conn, l.conn);
    const more = d.acquire(10, undefined);
    assert.ok(more instanceof Promise, 'only one session is left');
    more.catch(() => undefined);
  });
});

describe('queue', () => {
  test('waiters are served first in, first out as sessions come back', async () => {
    const d = new NodeDispatcher('n', 100);
    d.setSlots([slot('a', 1)]);
    const first = now(d);
    const log: string[] = [];
    const ws = ['w1', 'w2', 'w3', 'w4', 'w5'].map((w) => queued(d, 10_000, log, w));
    assert.equal(d.waiting, 5);
    assert.equal(d.hasFree(), false);
    let lease = first;
    for (let i = 0; i < 5; i++) {
      d.release(lease);
      lease = (await ws[i]!) as Lease;
      assert.deepEqual(log, ['w1', 'w2', 'w3', 'w4', 'w5'].slice(0, i + 1), 'release wakes exactly the next waiter');
      assert.equal(d.waiting, 4 - i);
    }
    d.release(lease);
    assert.equal(d.hasFree(), true);
  });

  test('a full queue answers NODE_UNAVAILABLE (503, Retry-After) at once', async () => {
    const d = new NodeDispatcher('node-x', 2);
    d.setSlots([slot('a', 1)]);
    const l = now(d);
    const log: string[] = [];
    const w = [queued(d, 10_000, log, 'w1'), queued(d, 10_000, log, 'w2')];
    assert.throws(() => d.acquire(10_000), (e: unknown) => {
      assert.ok(e instanceof BerthError);
      assert.equal(e.code, 'NODE_UNAVAILABLE');
      assert.equal(e.httpStatus, 503);
      assert.equal(e.headers['retry-after'], '1');
      assert.deepEqual(e.details, { nodeId: 'node-x', queueSize: 2 });
      return true;
    });
    assert.equal(d.waiting, 2, 'the refused call did not queue');
    d.release(l);
    d.release((await w[0]!) as Lease);
    d.release((await w[1]!) as Lease);
    assert.deepEqual(log, ['w1', 'w2']);
    // queueSize 0: no waiting at all; setQueueSize applies to the next call
    d.setQueueSize(0);
    const busy = now(d);
    assert.throws(() => d.acquire(10_000), { code: 'NODE_UNAVAILABLE' });
    d.setQueueSize(1);
    const p = d.acquire(10_000);
    assert.ok(p instanceof Promise);
    d.release(busy);
    d.release(await p);
  });

  test('a waiter times out with NODE_UNAVAILABLE and a reason; its place frees, the session skips it', async () => {
    const d = new NodeDispatcher('n', 1);
    d.setSlots([slot('a', 1)]);
    const l = now(d);
    const log: string[] = [];
    const t0 = Date.now();
    const e = await queued(d, 40, log, 'late');
    assert.ok(e instanceof BerthError);
    assert.equal(e.code, 'NODE_UNAVAILABLE');
    assert.equal(e.headers['retry-after'], '1');
    assert.match(e.message, /had no free session within/);
    assert.ok(Date.now() - t0 >= 35, 'not before its time');
    assert.equal(d.waiting, 0);
    const next = queued(d, 10_000, log, 'next'); // the queue (size 1) has room again
    d.release(l);
    assert.equal(((await next) as Lease).slot.id, 'a');
    assert.deepEqual(log, ['late:NODE_UNAVAILABLE', 'next']);
  });

  test('with no Healthy instance a waiter says so when it times out, and is served if one comes up in time', async () => {
    const d = new NodeDispatcher('n', 10);
    const log: string[] = [];
    const e = await queued(d, 30, log, 'none');
    assert.match((e as BerthError).message, /has no healthy instance/);
    const w = queued(d, 10_000, log, 'served');
    d.setSlots([slot('fresh', 1)]);
    assert.equal(((await w) as Lease).slot.id, 'fresh', 'setSlots serves the queue');
  });

  test('a caller that leaves (abort signal) leaves the queue at once and hands its turn on', async () => {
    const d = new NodeDispatcher('n', 2);
    d.setSlots([slot('a', 1)]);
    const l = now(d);
    const log: string[] = [];
    const ac = new AbortController();
    const gone = queued(d, 10_000, log, 'gone', undefined, ac.signal);
    const stays = queued(d, 10_000, log, 'stays');
    assert.throws(() => d.acquire(10_000), { code: 'NODE_UNAVAILABLE' }, 'queue full');
    ac.abort(new Error('client closed'));
    assert.equal(d.waiting, 1, 'its place is free at once, not at its timeout');
    const third = queued(d, 10_000, log, 'third');
    d.release(l);
    const s = (await stays) as Lease;
    assert.equal(s.slot.id, 'a');
    d.release(s);
    d.release((await third) as Lease);
    assert.equal(((await gone) as unknown as Error).message, 'client closed');
    assert.deepEqual(log, ['gone:Error', 'stays', 'third']);
    assert.equal(d.busy, 0);
    // already aborted: no queueing at all
    const busy = now(d);
    const pre = AbortSignal.abort(new Error('already gone'));
    await assert.rejects(d.acquire(10_000, undefined, pre) as Promise<Lease>, /already gone/);
    assert.equal(d.waiting, 0);
    d.release(busy);
  });

  test('a caller that abandons its wait without a signal releases the late lease, which goes to the next waiter', async () => {
    // what the proxy does around acquire (raceAbort): the lease that arrives late is released
    const d = new NodeDispatcher('n', 10);
    d.setSlots([slot('a', 1)]);
    const l = now(d);
    const abandoned = d.acquire(10_000) as Promise<Lease>;
    void abandoned.then((late) => d.release(late));
    const log: string[] = [];
    const next = queued(d, 10_000, log, 'next');
    d.release(l);
    const got = (await next) as Lease;
    assert.equal(got.slot.id, 'a');
    assert.equal(d.busy, 1);
    d.release(got);
  });

  test('rejectAll fails every waiter with the given error and empties the queue', async () => {
    const d = new NodeDispatcher('n', 10);
    d.setSlots([slot('a', 1)]);
    const l = now(d);
    const log: string[] = [];
    const ws = [queued(d, 10_000, log, 'w1'), queued(d, 10_000, log, 'w2', 'sticky')];
    d.rejectAll(new BerthError('SHUTTING_DOWN', 'bye'));
    await Promise.all(ws);
    assert.deepEqual(log, ['w1:SHUTTING_DOWN', 'w2:SHUTTING_DOWN']);
    assert.equal(d.waiting, 0);
    d.release(l);
    assert.equal(d.busy, 0);
    assert.equal(d.hasFree(), true);
  });
});

describe('sticky affinity', () => {
  test('the same key gets the same instance while it stays; keys spread over instances', () => {
    const d = new NodeDispatcher('n', 10);
    const slots = ['i1', 'i2', 'i3', 'i4'].map((id) => slot(id, 1000));
    d.setSlots(slots);
    const first = now(d, 'user-1');
    for (let i = 0; i < 20; i++) assert.equal(now(d, 'user-1').slot, first.slot);
    const used = new Set<string>();
    for (let k = 0; k < 200; k++) used.add(now(d, `k${k}`).slot.id);
    assert.equal(used.size, 4);
    // removing another instance does not move the key
    d.setSlots(slots.filter((s) => s !== first.slot).slice(0, 2).concat(first.slot));
    assert.equal(now(d, 'user-1').slot, first.slot);
  });

  test('a new instance takes no key from an instance that still serves; a key moves when its instance goes', () => {
    const d = new NodeDispatcher('n', 10);
    const [a, b2] = [slot('a', 1000), slot('b', 1000)];
    d.setSlots([a, b2]);
    const keys = Array.from({ length: 100 }, (_, i) => `user-${i}`);
    const before = new Map(keys.map((k) => [k, now(d, k).slot.id]));
    // a third instance joins (a rollout's new one): every key stays where it was
    const c = slot('c', 1000);
    d.setSlots([a, b2, c]);
    for (const k of keys) assert.equal(now(d, k).slot.id, before.get(k), `key ${k} moved to a new instance`);
    // a goes away: only its keys move, the others stay
    d.setSlots([b2, c]);
    for (const k of keys) {
      const id = now(d, k).slot.id;
      if (before.get(k) === 'b') assert.equal(id, 'b');
      else assert.notEqual(id, 'a');
    }
  });

  test('a sticky waiter waits for its own instance and does not hold up others behind it', async () => {
    const d = new NodeDispatcher('n', 10);
    const a = slot('a', 1);
    const b = slot('b', 1);
    d.setSlots([a, b]);
    // a key that hashes to a
    const key = Array.from({ length: 100 }, (_, i) => `key-${i}`).find((k) => hash32(`${k}\u0000a`) > hash32(`${k}\u0000b`))!;
    const onA = now(d, key);
    assert.equal(onA.slot, a);
    const onB = now(d);
    assert.equal(onB.slot, b);
    const log: string[] = [];
    const sticky = queued(d, 10_000, log, 'sticky', key);
    const plain = queued(d, 10_000, log, 'plain');
    d.release(onB); // b frees: the sticky waiter (for a) must not block the plain one
    assert.equal(((await plain) as Lease).slot, b);
    assert.deepEqual(log, ['plain']);
    d.release(onA);
    assert.equal(((await sticky) as Lease).slot, a);
    assert.deepEqual(log, ['plain', 'sticky']);
  });
});

describe('instances coming and going', () => {
  test('an instance removed while leased: its lease releases cleanly and it gets no new calls', async () => {
    const d = new NodeDispatcher('n', 10);
    const a = slot('a', 1);
    const b = slot('b', 1);
    d.setSlots([a, b]);
    const la = now(d);
    const lb = now(d);
    const onA = la.slot === a ? la : lb;
    const onB = la.slot === a ? lb : la;
    d.setSlots([b]); // a is going away; its call is still running
    assert.equal(d.healthyCount, 1);
    const log: string[] = [];
    const w = queued(d, 10_000, log, 'w');
    d.release(onA); // the removed instance's session comes back...
    await tick();
    assert.deepEqual(log, [], '...but is not handed to the waiter');
    assert.equal(d.busy, 1, 'busy counts only the balanced instances');
    d.release(onB);
    assert.equal(((await w) as Lease).slot, b);
    for (let i = 0; i < 20; i++) {
      const p = d.acquire(5);
      if (!(p instanceof Promise)) { assert.equal(p.slot, b); d.release(p); } else await p.catch(() => undefined);
    }
  });

  test('all instances removed: queued calls wait, then time out or are served by a replacement', async () => {
    const d = new NodeDispatcher('n', 10);
    const a = slot('a', 1);
    d.setSlots([a]);
    const l = now(d);
    d.setSlots([]);
    const log: string[] = [];
    const short = queued(d, 30, log, 'short');
    const long = queued(d, 10_000, log, 'long');
    d.release(l);
    await short;
    assert.deepEqual(log, ['short:NODE_UNAVAILABLE']);
    await sleep(5);
    d.setSlots([slot('b', 1)]);
    assert.equal(((await long) as Lease).slot.id, 'b');
  });
});

describe('scale to zero: calls held while an instance starts', () => {
  test('with no instance, a call waits the hold (not its own wait), the controller is told, and the instance serves it', async () => {
    const d = new NodeDispatcher('n', 10);
    let told = 0;
    d.onHeld = () => { told++; };
    d.setHold({ ms: 300 });
    assert.equal(d.holdMs, 300);
    const log: string[] = [];
    const p = queued(d, 20, log, 'a'); // its own wait (20 ms) is not what bounds it
    assert.equal(told, 1);
    await sleep(60);
    assert.deepEqual(log, [], 'still held past its own wait');
    d.setSlots([slot('i1', 1)]);
    assert.equal(d.holdMs, null, 'an instance takes calls: no hold');
    const l = await p;
    assert.ok(!(l instanceof BerthError));
    assert.deepEqual(log, ['a']);
  });

  test('past the hold: 503 NODE_UNAVAILABLE with Retry-After and why the last start failed', async () => {
    const d = new NodeDispatcher('n', 10);
    d.setHold({ ms: 50, startError: 'process exited with code 3' });
    const log: string[] = [];
    const e = await queued(d, 10_000, log, 'a');
    assert.ok(e instanceof BerthError);
    assert.equal(e.code, 'NODE_UNAVAILABLE');
    assert.match(e.message, /scaled to zero and no instance became ready within the hold of 0.1s: the last start failed: process exited with code 3/);
    assert.equal(e.details.holdTimeoutSeconds, 0.05);
    assert.ok(e.headers?.['retry-after']);
  });

  test('held calls count against queueSize', () => {
    const d = new NodeDispatcher('n', 2);
    d.setHold({ ms: 10_000 });
    const ps = [d.acquire(1000), d.acquire(1000)];
    assert.throws(() => d.acquire(1000), (e: BerthError) => e.code === 'NODE_UNAVAILABLE');
    d.rejectAll(new BerthError('NODE_NOT_FOUND', 'gone'));
    for (const p of ps) (p as Promise<Lease>).catch(() => undefined);
  });
});

describe('pipelining (cell nodes: pipelineDepth)', () => {
  test('a freed session takes up to pipelineDepth waiting calls at once; it is free again when the last ends; they count as waiting', async () => {
    const d = new NodeDispatcher('n', 100);
    d.pipelineDepth = 4;
    const a = slot('a', 1);
    d.setSlots([a]);
    const first = now(d);
    const log: string[] = [];
    const waiting = Array.from({ length: 6 }, (_, i) => queued(d, 10_000, log, `w${i}`));
    assert.equal(d.waiting, 6);
    d.release(first);
    await tick();
    assert.deepEqual(log, ['w0', 'w1', 'w2', 'w3'], 'four calls share the freed session, in order');
    const group = (await Promise.all(waiting.slice(0, 4))) as Lease[];
    assert.ok(group.every((l) => l === group[0] && l.conn === first.conn), 'one lease, one session');
    assert.equal(a.busy, 1, 'one session in use, not four');
    assert.equal(d.waiting, 2 + 3, 'two still queued, three sent behind the first');
    for (let i = 0; i < 3; i++) { d.release(group[i]!); await tick(); }
    assert.deepEqual(log, ['w0', 'w1', 'w2', 'w3'], 'the session is not free while a call of the group runs');
    assert.equal(d.waiting, 2);
    d.release(group[3]!);
    await tick();
    assert.deepEqual(log, ['w0', 'w1', 'w2', 'w3', 'w4', 'w5'], 'then the rest go, together');
    assert.equal(d.waiting, 1);
  });

  test('waiting calls are not piled on one session while another instance has a free one', async () => {
    const d = new NodeDispatcher('n', 100);
    d.pipelineDepth = 4;
    const a = slot('a', 1);
    d.setSlots([a]);
    now(d);
    const log: string[] = [];
    const waiting = [queued(d, 10_000, log, 'w0'), queued(d, 10_000, log, 'w1')];
    d.setSlots([a, slot('b', 1), slot('c', 1)]); // two instances join, each with a free session
    const [l0, l1] = (await Promise.all(waiting)) as Lease[];
    assert.notEqual(l0!.slot, l1!.slot, 'one call on each new instance');
    assert.equal(l0!.calls, undefined);
  });

  test('a queue full of pipelined calls still bounds new ones at queueSize', () => {
    const d = new NodeDispatcher('n', 3);
    d.pipelineDepth = 4;
    d.setSlots([slot('a', 1)]);
    const first = now(d);
    const log: string[] = [];
    for (let i = 0; i < 3; i++) void queued(d, 50, log, `w${i}`);
    d.release(first); // w0 runs, w1 and w2 are sent behind it: they still count against the queue
    const last = d.acquire(50);
    assert.ok(last instanceof Promise, 'one place left');
    last.catch(() => undefined);
    assert.throws(() => d.acquire(50), { code: 'NODE_UNAVAILABLE' });
  });
});
