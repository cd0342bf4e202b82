// Unit tests of the autoscaler's arithmetic (src/controller/autoscaler.ts): waking with held
// calls, scaling up only on sustained excess, down only after the stabilisation window, to zero
// only without any call, and no flapping under a sawtooth. Samples are fed in by hand (a fake
// clock), so each rule is checked exactly and in milliseconds; test/scale.test.ts checks the
// same behaviour end to end with real processes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Autoscaler, DOWN_SETTLE_MS, SAMPLE_MS } from '../../src/controller/autoscaler.js';
import type { Scaling } from '../../src/core/types.js';

const S: Scaling = { minInstances: 0, maxInstances: 8, sessionsPerInstance: 2, queueSize: 100, scaleDownDelaySeconds: 10 };

/** Feeds `inFlight` every SAMPLE_MS for `ms`, from `t`; returns the time after. */
function feed(a: Autoscaler, t: number, ms: number, inFlight: number, windowMs = S.scaleDownDelaySeconds * 1000): number {
  for (let x = 0; x < ms; x += SAMPLE_MS) { t += SAMPLE_MS; a.record(t, inFlight, windowMs); }
  return t;
}

test('calls held at zero wake as many instances as their sessions need, at once', () => {
  const a = new Autoscaler(0);
  a.record(100, 5, 10_000);
  const r = a.recommend(100, 0, 0, S, 0);
  assert.deepEqual([r.kind, r.target], ['wake', 3]); // 5 calls, 2 sessions each
  // more calls while none is ready yet: more instances, still at once
  a.record(200, 9, 10_000);
  const more = a.recommend(200, 3, 0, S, 0);
  assert.deepEqual([more.kind, more.target], ['up', 5]);
  // never past maxInstances
  a.record(300, 100, 10_000);
  assert.equal(a.recommend(300, 5, 0, S, 0).target, 8);
});

test('a spike does not scale up; a second of excess does', () => {
  const a = new Autoscaler(0);
  let t = feed(a, 0, 2000, 2);
  assert.equal(a.recommend(t, 1, 1, S, t).kind, 'steady');
  t = feed(a, t, 500, 6);
  assert.equal(a.recommend(t, 1, 1, S, t).kind, 'steady', 'half a second of excess is a spike');
  t = feed(a, t, 600, 6);
  const r = a.recommend(t, 1, 1, S, t);
  assert.deepEqual([r.kind, r.target], ['up', 3]);
  assert.match(r.reason, /at least 6 calls in flight/);
});

test('a dip of a sample does not set the level, and a ramp scales up once, not in stairs', () => {
  // 4 callers, one session each: a sample taken as a caller sends its next call sees 3
  const S1: Scaling = { ...S, minInstances: 1, sessionsPerInstance: 1 };
  const a = new Autoscaler(0);
  let t = feed(a, 0, 2000, 0);
  let current = 1;
  const decisions: string[] = [];
  // the load arrives over two samples (one gateway worker reports before the other), then holds with dips
  for (const load of [2, 3, 4, 4, 3, 4, 4, 4, 4, 3, 4, 4, 4, 4, 4, 3, 4, 4, 4, 4, 4, 4, 3, 4, 4]) {
    t += SAMPLE_MS;
    a.record(t, load, 10_000);
    const r = a.recommend(t, current, current, S1, t);
    if (r.kind !== 'steady') { decisions.push(`${r.kind} ${current}→${r.target}`); current = r.target; a.changed(t); }
  }
  assert.deepEqual(decisions, ['up 1→4']);
});

test('target utilisation leaves headroom', () => {
  const a = new Autoscaler(0);
  const t = feed(a, 0, 1500, 4);
  assert.equal(a.recommend(t, 2, 2, S, t).kind, 'steady'); // 4 calls on 2×2 sessions at 100%
  const r = a.recommend(t, 2, 2, { ...S, targetUtilization: 0.5 }, t);
  assert.deepEqual([r.kind, r.target], ['up', 4]);
});

test('down only after the stabilisation window, to what its busiest moment needed', () => {
  const a = new Autoscaler(0);
  let t = feed(a, 0, 3000, 8);
  a.changed(t); // scaled to 4
  t = feed(a, t, 9000, 2);
  assert.equal(a.recommend(t, 4, 4, S, t).kind, 'steady', 'the 8 calls of 9s ago are inside the window');
  // asked every sample from here: the busy second (t = 3.0 s) leaves the window at 14 s, and the
  // lower count must then hold DOWN_SETTLE_MS before it is acted on
  let r = a.recommend(t, 4, 4, S, t);
  while (r.kind === 'steady' && t < 30_000) { t = feed(a, t, SAMPLE_MS, 2); r = a.recommend(t, 4, 4, S, t); }
  assert.deepEqual([r.kind, r.target], ['down', 1]);
  assert.ok(t >= 14_000 + DOWN_SETTLE_MS && t <= 14_000 + DOWN_SETTLE_MS + 2 * SAMPLE_MS, `down at ${t} ms`);
});

test('to zero only with no call at all for the window, and only when minInstances is 0', () => {
  const a = new Autoscaler(0);
  const t = feed(a, 0, 11_000, 0);
  // a call ended 3s ago (too short for any sample to see): the last instance stays
  assert.deepEqual([a.recommend(t, 1, 1, S, t - 3000).kind, a.recommend(t, 1, 1, S, t - 3000).target], ['steady', 1]);
  assert.equal(a.recommend(t, 1, 1, S, t - 10_500).kind, 'steady', 'settling');
  const r = a.recommend(t + 2000, 1, 1, S, t - 10_500);
  assert.deepEqual([r.kind, r.target], ['down', 0]);
  assert.equal(a.recommend(t, 1, 1, { ...S, minInstances: 1 }, 0).kind, 'steady');
});

test('a sawtooth within the window does not flap: one scale-up, no scale-down; then down in one step', () => {
  const a = new Autoscaler(0);
  let t = 0;
  let current = 1;
  const decisions: string[] = [];
  for (let cycle = 0; cycle < 10; cycle++) {
    // each burst ends in a tail (8, 6, 4, 2 calls as they finish) that straddles a second
    for (const [ms, load] of [[2900, 8], [100, 6], [200, 4], [200, 2], [2600, 0]] as const) {
      for (let x = 0; x < ms; x += SAMPLE_MS) {
        t += SAMPLE_MS;
        a.record(t, load, 10_000);
        const r = a.recommend(t, current, current, S, load > 0 ? t : t - x);
        if (r.kind !== 'steady') { decisions.push(`${r.kind} ${current}→${r.target}`); current = r.target; a.changed(t); }
      }
    }
  }
  assert.deepEqual(decisions, ['up 1→4']);
  // the load stops: down once the window has passed, then to zero
  for (let x = 0; x < 25_000; x += SAMPLE_MS) {
    t += SAMPLE_MS;
    a.record(t, 0, 10_000);
    const r = a.recommend(t, current, current, S, t - x - 3000);
    if (r.kind !== 'steady') { decisions.push(`${r.kind} ${current}→${r.target}`); current = r.target; a.changed(t); }
  }
  assert.deepEqual(decisions, ['up 1→4', 'down 4→0']);
});
