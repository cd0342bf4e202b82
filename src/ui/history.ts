// The dashboard's charts without an external Prometheus: every SAMPLE_MS the server reads the node
// and alias families of its own Prometheus exposition (as `/metrics` serves them, so with
// --gateway-workers N the sum over the workers) and keeps, per node and per alias, one point per sample for the last
// hour: calls/s, errors/s by code, latency percentiles from the histogram buckets, instances.
// Reading the exposition rather than prom-client objects is what makes it work in both modes.

/** How often the exposition is sampled; also the charts' resolution. */
export const SAMPLE_MS = 2000;
/** How much history is kept (the charts show the last hour). */
export const KEEP_MS = 60 * 60_000;

/** One sample of one node or alias: rates over the interval since the previous sample. */
export interface Point {
  /** Unix ms of the sample. */
  t: number;
  /** Calls per second. */
  rps: number;
  /** Error answers per second by code (`http 503`, `grpc 14`). */
  errors: Record<string, number>;
  /** Latency percentiles in ms over the interval (null: no calls). */
  p50: number | null;
  p90: number | null;
  p99: number | null;
  /** Instances per status (nodes only). */
  instances?: Record<string, number>;
}

/** Cumulative counters of one node or alias as read from one exposition. */
interface Totals {
  requests: number;
  codes: Map<string, number>;
  /** le → cumulative count (le = Infinity for +Inf). */
  buckets: Map<number, number>;
  instances: Record<string, number>;
}

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

function labels(text: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (!text) return out;
  for (const m of text.matchAll(LABEL)) out[m[1]!] = m[2]!.replace(/\\(.)/g, (_s, c: string) => (c === 'n' ? '\n' : c));
  return out;
}

/** Reads the node_… and alias_… call families out of a Prometheus text exposition. */
export function parseExposition(text: string): { nodes: Map<string, Totals>; aliases: Map<string, Totals> } {
  const nodes = new Map<string, Totals>();
  const aliases = new Map<string, Totals>();
  const get = (map: Map<string, Totals>, id: string): Totals => {
    let t = map.get(id);
    if (!t) { t = { requests: 0, codes: new Map(), buckets: new Map(), instances: {} }; map.set(id, t); }
    return t;
  };
  for (const line of text.split('\n')) {
    if (line.length === 0 || line.charCodeAt(0) === 35 /* # */) continue;
    const isNode = line.startsWith('node_');
    if (!isNode && !line.startsWith('alias_')) continue;
    const m = LINE.exec(line);
    if (!m) continue;
    const value = Number(m[3]);
    if (!Number.isFinite(value)) continue;
    const l = labels(m[2]);
    const id = isNode ? l.node_id : l.alias_name;
    if (id === undefined) continue;
    const family = m[1]!.slice(isNode ? 5 : 6);
    const t = get(isNode ? nodes : aliases, id);
    if (family === 'requests' || family === 'requests_total') t.requests = value;
    else if (family === 'http_codes' || family === 'http_codes_total') t.codes.set(`http ${l.code}`, value);
    else if (family === 'grpc_codes' || family === 'grpc_codes_total') t.codes.set(`grpc ${l.code}`, value);
    else if (family === 'request_durations_bucket') t.buckets.set(l.le === '+Inf' ? Infinity : Number(l.le), value);
    else if (family === 'instances' && l.status) t.instances[l.status] = value;
  }
  return { nodes, aliases };
}

/** An answer that counts as an error: HTTP 4xx/5xx, any gRPC status but OK. */
function isError(code: string): boolean {
  const [proto, value] = code.split(' ');
  if (proto === 'http') return Number(value) >= 400;
  return value !== '0' && value !== 'OK';
}

/** The q-quantile in ms from the increase of cumulative buckets (linear inside a bucket). */
function quantile(q: number, now: Map<number, number>, before: Map<number, number> | undefined): number | null {
  const les = [...now.keys()].sort((a, b) => a - b);
  const counts = les.map((le) => Math.max(0, (now.get(le) ?? 0) - (before?.get(le) ?? 0)));
  const total = counts[counts.length - 1] ?? 0;
  if (total <= 0) return null;
  const rank = q * total;
  for (let i = 0; i < les.length; i++) {
    if (counts[i]! >= rank) {
      const hi = les[i]!;
      const lo = i > 0 ? les[i - 1]! : 0;
      if (hi === Infinity) return lo * 1000;
      const below = i > 0 ? counts[i - 1]! : 0;
      const inBucket = counts[i]! - below;
      const frac = inBucket > 0 ? (rank - below) / inBucket : 1;
      return (lo + (hi - lo) * frac) * 1000;
    }
  }
  return null;
}

function point(t: number, seconds: number, now: Totals, before: Totals | undefined, node: boolean): Point {
  const errors: Record<string, number> = {};
  for (const [code, v] of now.codes) {
    if (!isError(code)) continue;
    const d = v - (before?.codes.get(code) ?? 0);
    if (d > 0) errors[code] = d / seconds;
  }
  const p: Point = {
    t, rps: Math.max(0, now.requests - (before?.requests ?? 0)) / seconds, errors,
    p50: quantile(0.5, now.buckets, before?.buckets), p90: quantile(0.9, now.buckets, before?.buckets), p99: quantile(0.99, now.buckets, before?.buckets),
  };
  if (node) p.instances = now.instances;
  return p;
}

/** A bounded ring of points per node and per alias, fed by a timer. */
export class MetricsHistory {
  private readonly series = { node: new Map<string, Point[]>(), alias: new Map<string, Point[]>() };
  private last: { t: number; nodes: Map<string, Totals>; aliases: Map<string, Totals> } | null = null;
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private readonly listeners = new Set<(t: number) => void>();

  constructor(private readonly exposition: () => Promise<string>, private readonly sampleMs = SAMPLE_MS, private readonly keepMs = KEEP_MS) {}

  start(): void {
    if (this.timer) return;
    void this.sample();
    this.timer = setInterval(() => { void this.sample(); }, this.sampleMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Called after each sample (the watch stream sends the new points). */
  onSample(fn: (t: number) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** One sample; overlapping ticks (a slow exposition with many workers) are skipped, not queued. */
  sample(): Promise<void> {
    this.running ??= (async () => {
      // timed when asked, not when every worker has answered: the answers' delay varies, and
      // a rate over an interval shortened by it would overstate (the points are sampleMs apart)
      const t = Date.now();
      try {
        const text = await this.exposition();
        this.add(t, text);
      } catch {
        // a worker that does not answer in time: this sample is skipped, the next one counts
      } finally {
        this.running = null;
      }
    })();
    return this.running;
  }

  /** Adds one exposition read at `t` (exported for unit tests). */
  add(t: number, text: string): void {
    const { nodes, aliases } = parseExposition(text);
    const last = this.last;
    this.last = { t, nodes, aliases };
    if (!last) return; // rates need two samples
    const seconds = Math.max(0.001, (t - last.t) / 1000);
    const cutoff = t - this.keepMs;
    for (const [kind, now, before] of [['node', nodes, last.nodes], ['alias', aliases, last.aliases]] as const) {
      const map = this.series[kind];
      for (const [id, totals] of now) {
        let s = map.get(id);
        if (!s) { s = []; map.set(id, s); }
        s.push(point(t, seconds, totals, before.get(id), kind === 'node'));
        let drop = 0;
        while (drop < s.length && s[drop]!.t < cutoff) drop++;
        if (drop) s.splice(0, drop);
      }
      // a node or alias gone from the exposition (deleted) is forgotten
      for (const id of map.keys()) if (!now.has(id)) map.delete(id);
    }
    for (const fn of this.listeners) fn(t);
  }

  /** The points of one node or alias since `since` (unix ms). */
  get(kind: 'node' | 'alias', id: string, since = 0): Point[] {
    const s = this.series[kind].get(id) ?? [];
    return since > 0 ? s.filter((p) => p.t >= since) : s.slice();
  }

  /** The latest point of one node or alias. */
  latest(kind: 'node' | 'alias', id: string): Point | undefined {
    const s = this.series[kind].get(id);
    return s?.[s.length - 1];
  }

  /** "Now" for the overview: rates averaged over the last `points` samples (a steadier number than one sample). */
  recent(kind: 'node' | 'alias', id: string, points = 5): Point | undefined {
    const s = this.series[kind].get(id);
    if (!s?.length) return undefined;
    const tail = s.slice(-points);
    const errors: Record<string, number> = {};
    let rps = 0;
    for (const p of tail) {
      rps += p.rps;
      for (const [c, v] of Object.entries(p.errors)) errors[c] = (errors[c] ?? 0) + v;
    }
    for (const c of Object.keys(errors)) errors[c]! /= tail.length;
    const last = [...tail].reverse().find((p) => p.p50 !== null);
    const latest = tail[tail.length - 1]!;
    return { t: latest.t, rps: rps / tail.length, errors, p50: last?.p50 ?? null, p90: last?.p90 ?? null, p99: last?.p99 ?? null, instances: latest.instances };
  }
}
