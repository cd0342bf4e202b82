// Per-folder quotas: what one tenant may take of a shared machine. An admin sets them
// (`berth folder set-quota`); unset fields take the defaults below.
import { BerthError, invalidArgument } from '../core/errors.js';
import { MB } from '../core/config.js';
import type { Quota } from '../core/types.js';
import type { Store } from '../store/store.js';

const GB = 1024 * MB;

/** Defaults sized so one tenant cannot exhaust a small machine; raise them per folder. */
export const DEFAULT_QUOTA: Quota = {
  maxInstances: 16,
  maxNodes: 20,
  maxCheckpointBytes: 10 * GB,
  maxUploadBytes: 2 * GB,
  maxCheckpointRuns: 2,
};

const BOUNDS: Record<keyof Quota, [number, number]> = {
  maxInstances: [0, 10_000],
  maxNodes: [0, 10_000],
  maxCheckpointBytes: [0, 2 ** 50],
  maxUploadBytes: [0, 2 ** 50],
  maxCheckpointRuns: [0, 1_000],
};

export const QUOTA_FIELDS = Object.keys(BOUNDS) as Array<keyof Quota>;

/** Parses a quota change: known fields only, each an integer within bounds. */
export function parseQuota(body: unknown): Partial<Quota> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw invalidArgument('body', 'must be a JSON object of quota fields');
  const out: Partial<Quota> = {};
  for (const [k, v] of Object.entries(body)) {
    if (!(k in BOUNDS)) throw invalidArgument(k, `is not a quota field (one of ${QUOTA_FIELDS.join(', ')})`);
    const [lo, hi] = BOUNDS[k as keyof Quota];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi) throw invalidArgument(k, `must be an integer between ${lo} and ${hi}`);
    out[k as keyof Quota] = v;
  }
  return out;
}

export class Quotas {
  /** Checkpoint runs going on now, per folder (runs are short-lived: memory is enough). */
  private readonly runs = new Map<string, number>();

  constructor(private readonly store: Store) {}

  async of(folderId: string): Promise<Quota> {
    return { ...DEFAULT_QUOTA, ...(await this.store.getQuota(folderId)) };
  }

  /** Holds one of the folder's concurrent checkpoint runs until `release` is called. */
  async startRun(folderId: string): Promise<() => void> {
    const quota = await this.of(folderId);
    const running = this.runs.get(folderId) ?? 0;
    if (running + 1 > quota.maxCheckpointRuns) {
      throw new BerthError('QUOTA_EXCEEDED', `folder ${folderId} already runs ${running} checkpoint run(s), its quota maxCheckpointRuns`,
        { quota: 'maxCheckpointRuns', limit: quota.maxCheckpointRuns, wanted: running + 1 }, { 'retry-after': '5' });
    }
    this.runs.set(folderId, running + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = (this.runs.get(folderId) ?? 1) - 1;
      if (n > 0) this.runs.set(folderId, n); else this.runs.delete(folderId);
    };
  }
}
