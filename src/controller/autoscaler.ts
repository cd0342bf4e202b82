// The autoscaler of one node: how many instances it should have, from the calls in flight
// (running + waiting, summed over every gateway) sampled every SAMPLE_MS. Pure arithmetic over
// the samples it is given, so it is tested without processes (test/unit/autoscaler.test.ts).
//
// Rules (docs/scaling.md):
//   need(x)   = ceil(x / (sessionsPerInstance × targetUtilization))
//   wake      — no instance ready and calls held: need(in flight) at once (at least 1), so calls
//               arriving together start as many instances as their sessions need
//   scale up  — the level held for 80% of the last UP_WINDOW_MS still needs more: sustained
//               excess, not a spike, moves it (within about a second), to what the last samples
//               need; a dip of a sample or two (a caller between two calls, a worker's late
//               report) is not read as the level, and a ramp is one step (1 → 4, not 1 → 2 → 3 → 4)
//   scale down— the *most* in flight over the stabilisation window (scaleDownDelaySeconds) needs
//               fewer, and the node has had its size that long: a sawtooth whose peaks come back
//               within the window keeps its peak size (no flapping); acted on once it has held
//               DOWN_SETTLE_MS, to what it is then (one step, not stairs)
//   to zero   — minInstances 0 and no call at all (none sampled, none ended) for the window
import type { Scaling } from '../core/types.js';
import { SCALING_DEFAULTS } from '../core/types.js';

export const SAMPLE_MS = 100;
export const UP_WINDOW_MS = 1000;
/** The share of the scale-up window's samples, lowest first, that a scale-up looks past (dips). */
export const UP_DIPS = 0.2;
/**
 * A lower count must stay recommended this long before it is acted on: the tail of a burst
 * (4, 3, 2 calls as they finish) leaves the window over a second or so, and acting on its first
 * step would go down in stairs (4 → 3, a window later 3 → 1) instead of once.
 */
export const DOWN_SETTLE_MS = 1500;

export interface Recommendation {
  /** Instances the node should have (within [minInstances, maxInstances]). */
  target: number;
  /** wake: from none ready; up, down: a decision on load; steady: no decision (the bounds may still move it). */
  kind: 'wake' | 'up' | 'down' | 'steady';
  /** Why, in words (a node event's reason). */
  reason: string;
}

/** A second's bucket of samples: the most and least calls in flight seen in it. */
interface Bucket { second: number; max: number }

export class Autoscaler {
  /** The last second or so of samples, oldest first (scale-up looks at these). */
  private recent: Array<{ at: number; inFlight: number }> = [];
  /** One bucket per second over the stabilisation window (scale-down looks at these). */
  private buckets: Bucket[] = [];
  /** When the node's size last changed (or the scaler started): a scale-down needs a full window after it. */
  private changedAt: number;
  /** Since when a lower count has been recommended without a break (null: none is). */
  private downSince: number | null = null;

  constructor(now: number) { this.changedAt = now; }

  record(now: number, inFlight: number, windowMs: number): void {
    this.recent.push({ at: now, inFlight });
    while (this.recent.length > 0 && this.recent[0]!.at < now - UP_WINDOW_MS - SAMPLE_MS) this.recent.shift();
    const second = Math.floor(now / 1000);
    const last = this.buckets[this.buckets.length - 1];
    if (last && last.second === second) last.max = Math.max(last.max, inFlight);
    else this.buckets.push({ second, max: inFlight });
    const oldest = Math.floor((now - windowMs) / 1000);
    while (this.buckets.length > 0 && this.buckets[0]!.second < oldest) this.buckets.shift();
  }

  /** The node's size changed (a decision was carried out, or instances were added or lost otherwise). */
  changed(now: number): void { this.changedAt = now; this.downSince = null; }

  /**
   * What the node should have now. `current`: instances running or starting (not being removed);
   * `ready`: those of them in balancing; `lastCallAt`: when a call last ended on one (ms; 0: never).
   */
  recommend(now: number, current: number, ready: number, s: Scaling, lastCallAt: number): Recommendation {
    const perInstance = s.sessionsPerInstance * (s.targetUtilization ?? SCALING_DEFAULTS.targetUtilization);
    const need = (calls: number): number => Math.ceil(calls / perInstance - 1e-9);
    const clamp = (n: number): number => Math.min(s.maxInstances, Math.max(s.minInstances, n));
    const util = `${Math.round((s.targetUtilization ?? SCALING_DEFAULTS.targetUtilization) * 100)}%`;
    const latest = this.recent[this.recent.length - 1]?.inFlight ?? 0;

    if (ready === 0 && latest > 0) {
      const target = clamp(Math.max(1, need(latest)));
      if (target > current) return { target, kind: current === 0 ? 'wake' : 'up', reason: `${latest} call${latest === 1 ? '' : 's'} held with no instance ready` };
    }

    // sustained excess (the level held for 80% of the last second, once a second of samples
    // exists) moves it; to what the calls need now (the middle of the last three samples), so a
    // ramp the window is still catching up with is served in one step
    const span = this.recent.length > 0 ? now - this.recent[0]!.at : 0;
    if (span >= UP_WINDOW_MS - SAMPLE_MS) {
      const window = this.recent.filter((r) => r.at >= now - UP_WINDOW_MS).map((r) => r.inFlight).sort((x, y) => x - y);
      const held = window[Math.floor(window.length * UP_DIPS)];
      if (held !== undefined && need(held) > current) { // no recent sample: no evidence
        const lastThree = this.recent.slice(-3).map((r) => r.inFlight).sort((x, y) => x - y);
        const level = Math.max(held, lastThree[Math.floor(lastThree.length / 2)]!);
        const up = clamp(need(level));
        if (up > current) {
          const rising = level > held ? `, ${level} now` : '';
          return { target: up, kind: 'up', reason: `at least ${held} calls in flight for 80% of the last ${UP_WINDOW_MS / 1000}s${rising}: ${current} instance${current === 1 ? '' : 's'} × ${s.sessionsPerInstance} session${s.sessionsPerInstance === 1 ? '' : 's'} at a target of ${util} is too few` };
        }
      }
    }

    const windowMs = s.scaleDownDelaySeconds * 1000;
    if (current > s.minInstances && now - this.changedAt >= windowMs) {
      let most = 0;
      for (const b of this.buckets) most = Math.max(most, b.max);
      let down = clamp(need(most));
      const quiet = lastCallAt === 0 || now - lastCallAt >= windowMs;
      // calls too short for a sample to see still keep the last instance
      if (down === 0 && !quiet) down = clamp(1);
      if (down < current) {
        this.downSince ??= now;
        if (now - this.downSince < DOWN_SETTLE_MS) return { target: current, kind: 'steady', reason: 'settling before a scale-down' };
        const reason = down === 0
          ? `no call for ${s.scaleDownDelaySeconds}s`
          : `at most ${most} call${most === 1 ? '' : 's'} in flight over the last ${s.scaleDownDelaySeconds}s: ${down} instance${down === 1 ? ' is' : 's are'} enough at a target of ${util}`;
        return { target: down, kind: 'down', reason };
      }
    }
    this.downSince = null;
    return { target: clamp(current), kind: 'steady', reason: current < s.minInstances ? `minInstances is ${s.minInstances}` : current > s.maxInstances ? `maxInstances is ${s.maxInstances}` : 'steady' };
  }
}
