// A global bound on concurrent checkpoint runs: `max` run at once, up to `queue` wait their
// turn (in order), the rest are refused at once with 429 TOO_MANY_RUNS.
import { BerthError } from '../core/errors.js';

export class RunLimiter {
  private running = 0;
  private readonly waiting: Array<{ go: () => void; fail: (err: Error) => void }> = [];

  constructor(readonly max: number, readonly queue: number) {}

  get active(): number { return this.running; }
  get queued(): number { return this.waiting.length; }

  /** Resolves with a release function once a slot is free; rejects if the queue is full or `signal` aborts. */
  acquire(signal?: AbortSignal): Promise<() => void> {
    const release = (): (() => void) => {
      let done = false;
      return () => {
        if (done) return;
        done = true;
        this.running--;
        const next = this.waiting.shift();
        if (next) next.go();
      };
    };
    if (this.running < this.max) { this.running++; return Promise.resolve(release()); }
    if (this.waiting.length >= this.queue) {
      return Promise.reject(new BerthError('TOO_MANY_RUNS',
        `${this.running} checkpoint runs are running and ${this.waiting.length} waiting, the most this server allows; try again shortly`,
        { running: this.running, waiting: this.waiting.length, maxRuns: this.max, maxQueue: this.queue }, { 'retry-after': '5' }));
    }
    return new Promise((resolve, reject) => {
      const entry = {
        go: () => { signal?.removeEventListener('abort', onAbort); this.running++; resolve(release()); },
        fail: reject,
      };
      const onAbort = (): void => {
        const i = this.waiting.indexOf(entry);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(new BerthError('CLIENT_CLOSED', 'the caller left while the run was waiting'));
      };
      if (signal?.aborted) { onAbort(); return; }
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(entry);
    });
  }
}
