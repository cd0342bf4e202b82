// What usage accounting keeps in the store, and how it is read back: one row per hour,
// folder, node and resources preset (so `day` grouping and from/to ranges are sums over a
// few rows), plus the instances running at the last write (so an adopted container's time
// between two Berth processes is not lost). Implemented by store/sqlite.ts.

/** Usage accrued in one hour bucket; added to what the store holds for that bucket. */
export interface UsageDelta {
  /** Start of the hour, ms since the epoch (UTC). */
  hour: number;
  folderId: string;
  nodeId: string;
  /** The node's name when written; kept, so a deleted node's rows still name it. */
  nodeName: string | null;
  preset: string;
  instanceSeconds: number;
  calls: number;
  bytesIn: number;
  bytesOut: number;
}

/** A run of an instance being clocked, as of `until` (ms since the epoch). */
export interface OpenInstance {
  instanceId: string;
  folderId: string;
  nodeId: string;
  preset: string;
  until: number;
}

export type UsageGroupBy = 'node' | 'folder' | 'day';

export interface UsageQuery {
  /** null: every folder. */
  folders: string[] | null;
  /** Hour buckets that start in [from, to), ms since the epoch. */
  from: number;
  to: number;
  groupBy: UsageGroupBy;
}

/** One row of `GET /v1/usage`. */
export interface UsageRow {
  folderId: string;
  nodeId?: string;
  nodeName?: string | null;
  preset?: string;
  /** `YYYY-MM-DD` (UTC) with groupBy=day. */
  day?: string;
  instanceSeconds: number;
  calls: number;
  bytesIn: number;
  bytesOut: number;
}

export interface UsageStore {
  /**
   * One transaction: adds each delta to its bucket, records the runs still open (replacing
   * what was recorded for them) and drops the rows of runs that ended.
   */
  writeUsage(deltas: UsageDelta[], open: OpenInstance[], ended: string[]): Promise<void>;
  /** The runs the last writer left open (a crashed Berth's instances). */
  openInstances(): Promise<OpenInstance[]>;
  queryUsage(q: UsageQuery): Promise<UsageRow[]>;
}
