// Benchmark for "Aliases: one stable endpoint, weighted over nodes, swapped with zero failed calls".
//
// Part 1, the alias's cost. One `berth up` (process runtime), one cell node serving the
// randomizer (examples/randomizer.py) with minInstances = maxInstances = 2, and an alias whose
// only backend is that node. wrk (one thread, the same connections, duration, POST body and
// headers) loads the node's own URL and the alias's URL in turn, in the same run:
//     direct  POST /datasphere/v1/nodes/{id}:execute
//     alias   POST /datasphere/v1/aliases/{name}:execute
// after a warm-up of each, in --rounds rounds whose order alternates (direct alias | alias
// direct | direct alias …), so slow drift on the machine falls on both alike. Reports req/s,
// p50, p99 and the gateway's CPU per call for each, and the alias/direct throughput ratio
// (goal: the alias costs under 5% of throughput). Then, because a 5% difference is within the
// noise between two 10-second runs on a shared 2-core machine, the alias's own cost measured
// finely: --c1-pairs calls to each URL at concurrency 1 on one keep-alive connection, alternating
// call by call (direct, alias, alias, direct, …), so both see the same machine at the same
// moment; the difference is the time the alias adds to a call, which is gateway CPU.
//
// Part 2, swaps under load. A second `berth up`, two cell nodes answering {"who": "A"} and
// {"who": "B"} (min = max = 2 each) and an alias over A. A client in this process (undici,
// --swap-concurrency calls in flight) calls the alias for --swap-seconds while the alias is
// switched A→B→A… with PATCH /v1/aliases/{name} every --swap-interval-ms. Reports every call,
// every failure (non-200 or transport error), how many calls each node answered, and the
// "stale" answers: calls sent after a PATCH had returned that still reached the node it had
// just replaced (must be 0: a change applies to every call that starts after it).
//
//   node --import tsx bench/alias.ts [--duration 10] [--warmup 3] [--connections 16] [--rounds 6]
//        [--swap-seconds 15] [--swap-concurrency 8] [--swap-interval-ms 500] [--repeats 3] [--c1-pairs 10000] [--control] [--parts 1,2] [--keep]
//
// The machine may be shared: each part waits (up to 120 s) for other processes to leave it
// quiet, and a round during which they used more than 0.25 cores is measured again, at most
// --repeats times in all (then kept, flagged DISTURBED). Every table says what else ran.
//
// --control: an A/A run: the "alias" target calls the node's own URL as well, so the ratio
// shows how far apart two identical targets land on this machine (the noise floor).
//
// Prints markdown tables at the end; writes the raw numbers to bench/results/ (ignored by git).
// Fails (exit 1) on any non-2xx answer or socket error in part 1, any failed or stale call in
// part 2, or fewer than 10 swaps. Stops every process it started, on errors and signals too.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { Pool } from 'undici';
import { startBerth, removeHome, makeCheckpoint, createNode, type Berth } from '../test/helpers.js';
import {
  CLK_TCK, ROOT, berthCommand, WRK, firstLine, loadGenerators, log, machine, onSignals, percentile, posInt as int, procTicks as ticks,
  signalGroup, sleep, waitQuiet as waitQuietFor, wrk as wrkRun, wrkErrors, assertClean, type WrkResult,
} from './lib.js';

const LUA = join(ROOT, 'bench', 'alias.lua');
const PYTHON = '/usr/bin/python3';
const INSTANCES = 2;
const RANDOMIZER_BODY = JSON.stringify({ folder_id: 'default', input: { input_data: { left_bound: 1, right_bound: 10 } } });
const WHO_BODY = JSON.stringify({ folder_id: 'default', input: { x: 1 } });
const COST_ALIAS = 'bench.randomizer';
const SWAP_ALIAS = 'bench.swap';
/** Background load (cores used by processes that are not ours) under which the machine counts as quiet. */
const QUIET_CORES = 0.25;
const QUIET_WAIT_S = 120;
/** A round during which other processes used more cores than this is measured again (within --repeats). */
const OTHER_MAX = 0.25;
/** Part 2 must swap at least this many times. */
const MIN_SWAPS = 10;

const { values: args } = parseArgs({
  options: {
    duration: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '3' },
    connections: { type: 'string', default: '16' },
    rounds: { type: 'string', default: '6' },
    'swap-seconds': { type: 'string', default: '15' },
    'swap-concurrency': { type: 'string', default: '8' },
    'swap-interval-ms': { type: 'string', default: '500' },
    repeats: { type: 'string', default: '3' },
    'c1-pairs': { type: 'string', default: '10000' },
    control: { type: 'boolean', default: false },
    parts: { type: 'string', default: '1,2' },
    keep: { type: 'boolean', default: false },
  },
});
const DURATION = int(args.duration!, 'duration', 1, 600);
const WARMUP = int(args.warmup!, 'warmup', 0, 600);
const CONNECTIONS = int(args.connections!, 'connections', 1, 1024);
const ROUNDS = int(args.rounds!, 'rounds', 1, 20);
const SWAP_SECONDS = int(args['swap-seconds']!, 'swap-seconds', 5, 600);
const SWAP_CONCURRENCY = int(args['swap-concurrency']!, 'swap-concurrency', 1, 256);
const SWAP_INTERVAL_MS = int(args['swap-interval-ms']!, 'swap-interval-ms', 50, 10_000);
const REPEATS = int(args.repeats!, 'repeats', 0, 20);
const C1_PAIRS = int(args['c1-pairs']!, 'c1-pairs', 0, 1_000_000);
/** The concurrency-1 comparison runs in this many blocks (each a share of the pairs), the unit of its interval. */
const C1_BLOCKS = 20;
/** A/A control: the second target calls the node's own URL too, to show the noise between two identical targets. */
const CONTROL = args.control!;
const PARTS = new Set(args.parts!.split(',').map((p) => p.trim()));
for (const p of PARTS) if (p !== '1' && p !== '2') throw new Error(`--parts: 1 (alias vs direct), 2 (swaps under load) or 1,2; got ${args.parts}`);

// ---------------------------------------------------------------------------
// Processes we start: `berth up` children (their Python workers die with them,
// PR_SET_PDEATHSIG) and wrk runs (bash + wrk in their own process group).

const berths = new Set<Berth>();

async function stopBerth(b: Berth): Promise<void> {
  if (!berths.has(b)) return;
  berths.delete(b);
  await b.stop(); // SIGTERM, SIGKILL after 40 s
  if (args.keep) log(`Berth home kept: ${b.home}`);
  else removeHome(b.home);
}

async function stopAll(): Promise<void> {
  for (const c of loadGenerators) signalGroup(c.pid, 'SIGKILL');
  await Promise.all([...berths].map((b) => stopBerth(b)));
}

process.on('exit', () => {
  for (const c of loadGenerators) signalGroup(c.pid, 'SIGKILL');
  for (const b of berths) if (b.proc.exitCode === null && b.proc.signalCode === null) b.proc.kill('SIGKILL');
});
onSignals(stopAll);

// ---------------------------------------------------------------------------
// Small helpers

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

async function ok(b: Berth, method: string, path: string, body: unknown, want: number): Promise<any> {
  const r = await b.request(method, path, body);
  if (r.status !== want) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

/** Berth's own counters by status code, from /metrics: {label value → {code → count}}. */
async function codes(b: Berth, family: 'node' | 'alias'): Promise<Record<string, Record<string, number>>> {
  const text = await fetch(`${b.url}/metrics`, { headers: { authorization: `Bearer ${b.token}` }, signal: AbortSignal.timeout(10_000) }).then((r) => r.text());
  const re = family === 'node' ? /^node_http_codes\{node_id="([^"]+)",code="(\d+)"\} (\d+)/ : /^alias_http_codes\{alias_name="([^"]+)",code="(\d+)"\} (\d+)/;
  const out: Record<string, Record<string, number>> = {};
  for (const line of text.split('\n')) {
    const m = re.exec(line);
    if (m) (out[m[1]!] ??= {})[m[2]!] = Number(m[3]);
  }
  return out;
}

// ---------------------------------------------------------------------------
// CPU accounting from /proc

const procTicks = (pid: number): number => ticks(pid) ?? 0;

function machineTicks(): { busy: number; total: number; steal: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0); // guest time is already in user
  return { busy: total - f[3]! - (f[4] ?? 0) - (f[7] ?? 0), total, steal: f[7] ?? 0 }; // minus idle, iowait, steal
}

interface Groups { gateway: number[]; workers: number[] }
interface Snapshot { gateway: number; workers: number; machine: ReturnType<typeof machineTicks>; t: number; bench: NodeJS.CpuUsage }
/** Cores: Berth's gateway, its workers, wrk, this script, the whole machine, everything else; steal: taken by the hypervisor. */
interface CpuUse { gateway: number; workers: number; wrk: number; bench: number; machine: number; other: number; steal: number }

function snapshot(g: Groups): Snapshot {
  const sum = (pids: number[]): number => pids.reduce((a, p) => a + procTicks(p), 0);
  return { gateway: sum(g.gateway), workers: sum(g.workers), machine: machineTicks(), t: performance.now(), bench: process.cpuUsage() };
}

/** Average cores used between two snapshots: Berth's gateway, its workers, wrk, this script, and everything else. */
function cpuUse(a: Snapshot, b: Snapshot, wrkCpuS: number): CpuUse {
  const secs = (b.t - a.t) / 1000;
  const bench = process.cpuUsage(a.bench);
  const u: CpuUse = {
    gateway: (b.gateway - a.gateway) / CLK_TCK / secs,
    workers: (b.workers - a.workers) / CLK_TCK / secs,
    wrk: wrkCpuS / secs,
    bench: (bench.user + bench.system) / 1e6 / secs,
    machine: ((b.machine.busy - a.machine.busy) / Math.max(1, b.machine.total - a.machine.total)) * cpus().length,
    other: 0,
    steal: ((b.machine.steal - a.machine.steal) / Math.max(1, b.machine.total - a.machine.total)) * cpus().length,
  };
  u.other = Math.max(0, u.machine - u.gateway - u.workers - u.wrk - u.bench);
  return u;
}

/** Cores busy on the whole machine over `ms`, minus what `ours` (pids) used. */
async function otherLoad(ms: number, ours: number[]): Promise<number> {
  const a = machineTicks();
  const oa = ours.reduce((s, p) => s + procTicks(p), 0);
  const ca = process.cpuUsage();
  await sleep(ms);
  const b = machineTicks();
  const ob = ours.reduce((s, p) => s + procTicks(p), 0);
  const c = process.cpuUsage(ca);
  const machine = ((b.busy - a.busy) / Math.max(1, b.total - a.total)) * cpus().length;
  return Math.max(0, machine - (ob - oa) / CLK_TCK / (ms / 1000) - (c.user + c.system) / 1e6 / (ms / 1000));
}

/** The machine is shared: wait (bounded) until other processes leave it quiet, and say what was seen. */
function waitQuiet(label: string, ours: number[]): Promise<number> {
  return waitQuietFor(label, {
    cores: QUIET_CORES, waitS: QUIET_WAIT_S, sample: (ms) => otherLoad(ms, ours),
    busy: (load, waitS) => `machine busy (${load} cores used by other processes); waiting up to ${waitS}s`,
    warn: (load) => `WARNING: going ahead with ${load} cores used by other processes`,
  });
}

// ---------------------------------------------------------------------------
// wrk

async function wrk(url: string, seconds: number, auth: string, body: string): Promise<WrkResult> {
  const r = await wrkRun(LUA, url, CONNECTIONS, seconds, { BENCH_BODY: body, BENCH_AUTH: auth });
  delete r.raw; // not kept in the results file
  return r;
}

// ---------------------------------------------------------------------------
// Part 1: alias vs direct

type Target = 'direct' | 'alias';
interface Run { target: Target; round: number; attempt: number; wrk: WrkResult; cpu: CpuUse }
interface CostResult {
  nodeId: string;
  runs: Run[];
  /** the runs kept: the last attempt of each round */
  kept: Run[];
  repeatsUsed: number;
  idleLoad: number;
  healthySeconds: number;
  nodeCodes: Record<string, number>;
  aliasCodes: Record<string, number>;
  c1: C1Result | null;
}

async function aliasCost(): Promise<CostResult> {
  log('part 1: starting berth up (process runtime)');
  const b = await startBerth(undefined, { BERTH_PYTHON: PYTHON }, { cli: berthCommand() });
  berths.add(b);
  log(`part 1: berth listening on ${b.url}`);
  await makeCheckpoint(b, 'randomizer-checkpoint', readFileSync(join(ROOT, 'examples/randomizer.py'), 'utf8'));
  const t = performance.now();
  const node = await createNode(b, {
    name: 'randomizer-node', checkpointId: 'randomizer-checkpoint',
    inputs: [{ name: 'input_data', type: 'dict' }], outputs: [{ name: 'output_data', type: 'dict' }],
    scaling: { minInstances: INSTANCES, maxInstances: INSTANCES },
  });
  const healthySeconds = (performance.now() - t) / 1000;
  const pids = (node.instances as Array<{ status: string; pid: number }>).filter((i) => i.status === 'Healthy').map((i) => i.pid);
  if (pids.length !== INSTANCES) throw new Error(`expected ${INSTANCES} Healthy instances, got ${JSON.stringify(node.instances)}`);
  log(`part 1: node ${node.id} Healthy after ${healthySeconds.toFixed(2)}s, workers ${pids.join(', ')}`);
  await ok(b, 'POST', '/v1/aliases', { name: COST_ALIAS, backends: [{ nodeId: node.id, weight: 1 }] }, 201);

  const urls: Record<Target, string> = {
    direct: `${b.url}/datasphere/v1/nodes/${node.id}:execute`,
    alias: CONTROL ? `${b.url}/datasphere/v1/nodes/${node.id}:execute` : `${b.url}/datasphere/v1/aliases/${COST_ALIAS}:execute`,
  };
  if (CONTROL) log('part 1: --control: the "alias" target calls the node directly too (an A/A run)');
  for (const target of ['direct', 'alias'] as const) {
    const r = await b.request('POST', new URL(urls[target]).pathname, RANDOMIZER_BODY);
    const v = r.body?.output?.output_data?.generated_value;
    if (r.status !== 200 || !Number.isInteger(v) || v < 1 || v > 10) throw new Error(`${target}: ${r.status} ${JSON.stringify(r.body)}`);
  }

  const auth = `Bearer ${b.token}`;
  const groups: Groups = { gateway: [b.proc.pid!], workers: pids };
  const ours = [...groups.gateway, ...groups.workers];
  const idleLoad = await waitQuiet('part 1', ours);
  for (const target of ['direct', 'alias'] as const) {
    if (WARMUP === 0) break;
    log(`part 1: warm-up ${target} ${WARMUP}s, ${CONNECTIONS} connections`);
    assertClean(`${target} (warm-up)`, await wrk(urls[target], WARMUP, auth, RANDOMIZER_BODY));
  }

  const runs: Run[] = [];
  const kept: Run[] = [];
  let repeatsUsed = 0;
  for (let round = 1; round <= ROUNDS; round++) {
    // direct alias | alias direct | direct alias …: each target runs first in half the rounds
    const order: Target[] = round % 2 === 1 ? ['direct', 'alias'] : ['alias', 'direct'];
    for (let attempt = 1; ; attempt++) {
      const pair: Run[] = [];
      for (const target of order) {
        const a = snapshot(groups);
        const r = await wrk(urls[target], DURATION, auth, RANDOMIZER_BODY);
        const cpu = cpuUse(a, snapshot(groups), r.cpu_s);
        assertClean(`${target} round ${round}`, r);
        const run = { target, round, attempt, wrk: r, cpu };
        pair.push(run);
        runs.push(run);
        log(`part 1: round ${round} ${target}: ${r.rps.toFixed(0)} req/s, p50 ${(r.latency_us.p50 / 1000).toFixed(2)} ms, ` +
          `p99 ${(r.latency_us.p99 / 1000).toFixed(2)} ms; cores: gateway ${cpu.gateway.toFixed(2)}, workers ${cpu.workers.toFixed(2)}, ` +
          `wrk ${cpu.wrk.toFixed(2)}, other ${cpu.other.toFixed(2)}, steal ${cpu.steal.toFixed(2)}`);
      }
      const disturbed = pair.some((r) => r.cpu.other > OTHER_MAX);
      if (!disturbed || repeatsUsed >= REPEATS) {
        kept.push(...pair);
        if (disturbed) log(`part 1: round ${round} disturbed by other processes and no repeats left: kept, flagged`);
        break;
      }
      repeatsUsed++;
      log(`part 1: round ${round} disturbed by other processes; measuring it again (repeat ${repeatsUsed} of ${REPEATS})`);
      await waitQuiet(`part 1 round ${round}`, ours);
    }
  }

  let c1: C1Result | null = null;
  if (C1_PAIRS > 0) {
    await waitQuiet('part 1, concurrency 1', ours);
    log(`part 1: concurrency 1, ${C1_PAIRS} calls to each URL, alternating call by call`);
    const a = snapshot(groups);
    c1 = await interleaved(Number(new URL(b.url).port), new URL(urls.direct).pathname, new URL(urls.alias).pathname, auth);
    c1.cpu = cpuUse(a, snapshot(groups), 0);
    log(`part 1: concurrency 1: direct p50 ${c1.direct.p50.toFixed(1)} µs, alias p50 ${c1.alias.p50.toFixed(1)} µs; ` +
      `other processes ${c1.cpu.other.toFixed(2)} cores`);
  }

  // Berth's own counters, as a cross-check of wrk's: every answer a 200
  const nodeCodes = (await codes(b, 'node'))[node.id] ?? {};
  const aliasCodes = (await codes(b, 'alias'))[COST_ALIAS] ?? {};
  for (const [what, c] of [['node', nodeCodes], ['alias', aliasCodes]] as const) {
    if (Object.keys(c).some((k) => k !== '200')) throw new Error(`berth counted non-200 answers on the ${what}: ${JSON.stringify(c)}`);
  }
  await stopBerth(b);
  return { nodeId: node.id, runs, kept, repeatsUsed, idleLoad, healthySeconds, nodeCodes, aliasCodes, c1 };
}

// ---------------------------------------------------------------------------
// Part 1b: the alias's added time per call, at concurrency 1, interleaved call by call.
// A raw HTTP/1.1 client on one keep-alive socket: no client library in the measured path.

interface LatStats { calls: number; p10: number; p50: number; p90: number; p99: number; mean: number }
interface C1Result {
  direct: LatStats;
  alias: LatStats;
  /** per block: median(alias) − median(direct), µs */
  blockDiffs: number[];
  cpu: CpuUse;
}

function latStats(samples: number[]): LatStats {
  const s = [...samples].sort((x, y) => x - y);
  return {
    calls: s.length, p10: percentile(s, 10), p50: percentile(s, 50), p90: percentile(s, 90), p99: percentile(s, 99),
    mean: s.reduce((x, y) => x + y, 0) / s.length,
  };
}

class RawHttp {
  private buf: Buffer = Buffer.alloc(0);
  private pending: { resolve: (status: number) => void; reject: (e: Error) => void; timer: NodeJS.Timeout } | null = null;

  private constructor(private readonly sock: Socket) {
    sock.setNoDelay(true);
    sock.on('data', (d) => this.onData(d));
    sock.on('error', (e) => this.fail(e));
    sock.on('close', () => this.fail(new Error('connection closed')));
  }

  static open(port: number): Promise<RawHttp> {
    return new Promise((res, rej) => {
      const sock = connect(port, '127.0.0.1');
      const t = setTimeout(() => { sock.destroy(); rej(new Error('connect timeout')); }, 5000);
      sock.once('connect', () => { clearTimeout(t); sock.removeAllListeners('error'); res(new RawHttp(sock)); });
      sock.once('error', (e) => { clearTimeout(t); rej(e); });
    });
  }

  /** Sends one request and resolves with the status once the whole response (Content-Length) is in. */
  call(request: Buffer, timeoutMs = 10_000): Promise<number> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.fail(new Error('call timeout')), timeoutMs);
      this.pending = { resolve, reject, timer };
      this.sock.write(request);
    });
  }

  close(): void { this.sock.destroy(); }

  private onData(d: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    const end = this.buf.indexOf('\r\n\r\n');
    if (end === -1) return;
    const head = this.buf.toString('latin1', 0, end);
    const m = /\r\ncontent-length:\s*(\d+)/i.exec(head);
    if (!m) return this.fail(new Error(`response without content-length: ${head}`));
    const total = end + 4 + Number(m[1]);
    if (this.buf.length < total) return;
    this.buf = this.buf.subarray(total);
    const p = this.pending;
    this.pending = null;
    if (p) { clearTimeout(p.timer); p.resolve(Number(head.slice(9, 12))); }
  }

  private fail(e: Error): void {
    const p = this.pending;
    this.pending = null;
    if (p) { clearTimeout(p.timer); p.reject(e); }
  }
}

async function interleaved(port: number, directPath: string, aliasPath: string, auth: string): Promise<C1Result> {
  const req = (path: string): Buffer => Buffer.from(
    `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: ${auth}\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${Buffer.byteLength(RANDOMIZER_BODY)}\r\n\r\n${RANDOMIZER_BODY}`);
  const reqs = { direct: req(directPath), alias: req(aliasPath) };
  const client = await RawHttp.open(port);
  const samples = { direct: [] as number[], alias: [] as number[] };
  const blockDiffs: number[] = [];
  const perBlock = Math.max(1, Math.ceil(C1_PAIRS / C1_BLOCKS));
  const deadline = Date.now() + 300_000;
  const one = async (t: Target, into: number[] | null): Promise<void> => {
    const start = performance.now();
    const status = await client.call(reqs[t]);
    const us = (performance.now() - start) * 1000;
    if (status !== 200) throw new Error(`${t} answered ${status} at concurrency 1`);
    into?.push(us);
  };
  try {
    for (let i = 0; i < 500; i++) { await one('direct', null); await one('alias', null); } // warm-up
    for (let done = 0; done < C1_PAIRS && Date.now() < deadline; done += perBlock) {
      const block = { direct: [] as number[], alias: [] as number[] };
      for (let i = 0; i < perBlock && done + i < C1_PAIRS; i++) {
        const order: Target[] = i % 2 === 0 ? ['direct', 'alias'] : ['alias', 'direct'];
        for (const t of order) await one(t, block[t]);
      }
      samples.direct.push(...block.direct);
      samples.alias.push(...block.alias);
      blockDiffs.push(median(block.alias) - median(block.direct));
    }
  } finally {
    client.close();
  }
  return { direct: latStats(samples.direct), alias: latStats(samples.alias), blockDiffs, cpu: null as unknown as CpuUse };
}

// ---------------------------------------------------------------------------
// Part 2: swaps under load

interface Swap { to: 'A' | 'B'; sentAt: number; doneAt: number; status: number }
interface SwapResult {
  calls: number;
  ok: number;
  failed: number;
  non200: Record<string, number>;
  transport: Record<string, number>;
  answeredBy: Record<string, number>;
  stale: number;
  swaps: number;
  patchMs: { p50: number; max: number };
  latencyMs: { p50: number; p99: number; max: number };
  seconds: number;
  idleLoad: number;
  aliasCodes: Record<string, number>;
  cpu: CpuUse;
}

const WHO = (who: string): string[] => [`who = ${JSON.stringify(who)}\nx = None\n`, 'result = {"who": who}\n'];

async function swapUnderLoad(): Promise<SwapResult> {
  log('part 2: starting berth up (process runtime)');
  const b = await startBerth(undefined, { BERTH_PYTHON: PYTHON }, { cli: berthCommand() });
  berths.add(b);
  log(`part 2: berth listening on ${b.url}`);
  await makeCheckpoint(b, 'who-a', WHO('A'));
  await makeCheckpoint(b, 'who-b', WHO('B'));
  const spec = { inputs: [{ name: 'x', type: 'any' }], outputs: [{ name: 'result', type: 'dict' }], scaling: { minInstances: INSTANCES, maxInstances: INSTANCES } };
  const [nodeA, nodeB] = await Promise.all([
    createNode(b, { ...spec, name: 'node-a', checkpointId: 'who-a' }),
    createNode(b, { ...spec, name: 'node-b', checkpointId: 'who-b' }),
  ]);
  const ids = { A: nodeA.id as string, B: nodeB.id as string };
  await ok(b, 'POST', '/v1/aliases', { name: SWAP_ALIAS, backends: [{ nodeId: ids.A, weight: 1 }] }, 201);
  const path = `/datasphere/v1/aliases/${SWAP_ALIAS}:execute`;
  const first = await b.request('POST', path, WHO_BODY);
  if (first.status !== 200 || first.body?.output?.result?.who !== 'A') throw new Error(`alias over A answered ${first.status} ${JSON.stringify(first.body)}`);
  log(`part 2: nodes A ${ids.A}, B ${ids.B} Healthy; alias ${SWAP_ALIAS} → A`);

  const pids = [nodeA, nodeB].flatMap((n) => (n.instances as Array<{ pid: number }>).map((i) => i.pid));
  const groups: Groups = { gateway: [b.proc.pid!], workers: pids };
  const idleLoad = await waitQuiet('part 2', [...groups.gateway, ...groups.workers]);

  const pool = new Pool(b.url, { connections: SWAP_CONCURRENCY, pipelining: 1 });
  const headers = { authorization: `Bearer ${b.token}`, 'content-type': 'application/json' };
  const calls: Array<{ start: number; end: number; who: string | null }> = [];
  const non200: Record<string, number> = {};
  const transport: Record<string, number> = {};
  const latencies: number[] = [];
  const swaps: Swap[] = [];
  const t0 = performance.now();
  const endAt = t0 + SWAP_SECONDS * 1000;
  const maxCalls = 5_000_000;
  const a = snapshot(groups);

  const worker = async (): Promise<void> => {
    for (let i = 0; i < maxCalls && performance.now() < endAt && calls.length < maxCalls; i++) {
      const start = performance.now();
      let who: string | null = null;
      try {
        const r = await pool.request({ path, method: 'POST', headers, body: WHO_BODY, signal: AbortSignal.timeout(10_000) });
        const text = await r.body.text();
        if (r.statusCode === 200) {
          who = String(JSON.parse(text)?.output?.result?.who ?? '?');
        } else {
          const code = (() => { try { return JSON.parse(text).code as string; } catch { return ''; } })();
          const k = `${r.statusCode}${code ? ' ' + code : ''}`;
          non200[k] = (non200[k] ?? 0) + 1;
        }
      } catch (err) {
        const k = (err as { code?: string }).code ?? (err as Error).name;
        transport[k] = (transport[k] ?? 0) + 1;
      }
      const end = performance.now();
      calls.push({ start, end, who });
      latencies.push(end - start);
    }
  };

  const swapper = async (): Promise<void> => {
    await sleep(1000); // a second of load on A first
    let to: 'A' | 'B' = 'B';
    for (let i = 0; i < 10_000 && performance.now() < endAt - 1000; i++) {
      const sentAt = performance.now();
      const r = await b.request('PATCH', `/v1/aliases/${SWAP_ALIAS}`, { backends: [{ nodeId: ids[to], weight: 1 }] });
      swaps.push({ to, sentAt, doneAt: performance.now(), status: r.status });
      if (r.status !== 200) throw new Error(`PATCH ${SWAP_ALIAS} → ${to}: ${r.status} ${JSON.stringify(r.body)}`);
      to = to === 'A' ? 'B' : 'A';
      await sleep(SWAP_INTERVAL_MS);
    }
  };

  log(`part 2: ${SWAP_CONCURRENCY} calls in flight for ${SWAP_SECONDS}s, swapping the alias every ${SWAP_INTERVAL_MS} ms`);
  try {
    await Promise.all([...Array.from({ length: SWAP_CONCURRENCY }, worker), swapper()]);
  } finally {
    await pool.close().catch(() => {});
  }
  const seconds = (performance.now() - t0) / 1000;
  const cpu = cpuUse(a, snapshot(groups), 0);

  // stale: sent after swap k had returned (and before swap k+1 was sent), answered by another node than k's
  let stale = 0;
  for (const c of calls) {
    if (c.who === null) continue;
    let k = -1;
    for (let i = swaps.length - 1; i >= 0; i--) if (swaps[i]!.doneAt <= c.start) { k = i; break; }
    if (k === -1) continue;
    if (k + 1 < swaps.length && swaps[k + 1]!.sentAt <= c.start) continue; // a swap was in flight
    if (c.who !== swaps[k]!.to) stale++;
  }
  const answeredBy: Record<string, number> = {};
  for (const c of calls) if (c.who !== null) answeredBy[c.who] = (answeredBy[c.who] ?? 0) + 1;
  const lat = [...latencies].sort((x, y) => x - y);
  const patch = swaps.map((s) => s.doneAt - s.sentAt).sort((x, y) => x - y);
  const okCalls = calls.filter((c) => c.who !== null).length;
  const aliasCodes = (await codes(b, 'alias'))[SWAP_ALIAS] ?? {};
  await stopBerth(b);
  return {
    calls: calls.length, ok: okCalls, failed: calls.length - okCalls, non200, transport, answeredBy, stale,
    swaps: swaps.length, patchMs: { p50: percentile(patch, 50), max: patch.at(-1) ?? NaN },
    latencyMs: { p50: percentile(lat, 50), p99: percentile(lat, 99), max: lat.at(-1) ?? NaN },
    seconds, idleLoad, aliasCodes, cpu,
  };
}

// ---------------------------------------------------------------------------
// Report

const ms = (us: number): string => (us / 1000).toFixed(2);
const ratio = (v: number): string => v.toFixed(3) + '×';
/** Student's t, two-sided 95%, by degrees of freedom (the index; --rounds ≤ 20). */
const T95 = [NaN, 12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086];

function reportCost(env: Record<string, string>, cost: CostResult): string {
  const L: string[] = [];
  L.push(`Machine: ${env.nproc} cores (nproc), ${env.cpu}, ${env.memory}; Node ${env.node}; ${env.python}; ${env.wrk}; Berth ${env.berth_head}`);
  if (CONTROL) L.push('**A/A control run (--control): the "alias" rows call the node directly too.**');
  L.push(`Part 1 load: wrk -t1 -c${CONNECTIONS} -d${DURATION}s per run, ${ROUNDS} rounds after a ${WARMUP}s warm-up of each target, ` +
    `order direct→alias in odd rounds and alias→direct in even ones; the randomizer cell, ${INSTANCES} instances; ` +
    `${cost.repeatsUsed} disturbed round(s) measured again; other processes used ${cost.idleLoad.toFixed(2)} cores before the start.`);
  L.push('');

  const agg = (t: Target): { rps: number; p50: number; p99: number; requests: number; errors: number; gwUs: number; rpsMin: number; rpsMax: number } => {
    const rs = cost.kept.filter((r) => r.target === t);
    const requests = rs.reduce((s, r) => s + r.wrk.requests, 0);
    const secs = rs.reduce((s, r) => s + r.wrk.duration_us / 1e6, 0);
    const gwCoreSecs = rs.reduce((s, r) => s + r.cpu.gateway * (r.wrk.duration_us / 1e6), 0);
    return {
      rps: requests / secs, requests, errors: rs.reduce((s, r) => s + wrkErrors(r.wrk), 0),
      p50: median(rs.map((r) => r.wrk.latency_us.p50)), p99: median(rs.map((r) => r.wrk.latency_us.p99)),
      gwUs: (gwCoreSecs / requests) * 1e6,
      rpsMin: Math.min(...rs.map((r) => r.wrk.rps)), rpsMax: Math.max(...rs.map((r) => r.wrk.rps)),
    };
  };
  const d = agg('direct');
  const a = agg('alias');
  L.push('| target | req/s | p50 ms | p99 ms | requests | non-2xx + socket errors | gateway CPU µs/call | req/s range over rounds |');
  L.push('|---|---:|---:|---:|---:|---:|---:|---|');
  L.push(`| direct: \`/datasphere/v1/nodes/{id}:execute\` | ${d.rps.toFixed(0)} | ${ms(d.p50)} | ${ms(d.p99)} | ${d.requests} | ${d.errors} | ${d.gwUs.toFixed(0)} | ${d.rpsMin.toFixed(0)}–${d.rpsMax.toFixed(0)} |`);
  L.push(`| ${CONTROL ? 'direct again (--control)' : 'alias: \`/datasphere/v1/aliases/{name}:execute\`'} | ${a.rps.toFixed(0)} | ${ms(a.p50)} | ${ms(a.p99)} | ${a.requests} | ${a.errors} | ${a.gwUs.toFixed(0)} | ${a.rpsMin.toFixed(0)}–${a.rpsMax.toFixed(0)} |`);
  L.push(`| **alias / direct** | **${ratio(a.rps / d.rps)}** | ${ratio(a.p50 / d.p50)} | ${ratio(a.p99 / d.p99)} | | | ${ratio(a.gwUs / d.gwUs)} | |`);
  L.push('');
  const avg = (k: keyof CpuUse): string => (cost.kept.reduce((x, r) => x + r.cpu[k], 0) / cost.kept.length).toFixed(2);
  L.push('(req/s: all requests of the kept runs over their total time; p50, p99: the median of the runs\' own percentiles; ' +
    'gateway CPU: the `berth up` process\'s CPU time over the requests.) ' +
    `Cores used during the kept runs, on average: gateway ${avg('gateway')} (one JavaScript thread), the ${INSTANCES} Python workers ${avg('workers')}, ` +
    `wrk ${avg('wrk')}, other processes ${avg('other')}, stolen by the hypervisor ${avg('steal')}.`);
  L.push('');
  L.push('| round | order | direct req/s | alias req/s | alias / direct | direct p50 / p99 ms | alias p50 / p99 ms | other processes / steal, cores (direct; alias) |');
  L.push('|---:|---|---:|---:|---:|---|---|---|');
  for (let round = 1; round <= ROUNDS; round++) {
    const rs = cost.kept.filter((r) => r.round === round);
    const dr = rs.find((r) => r.target === 'direct')!;
    const ar = rs.find((r) => r.target === 'alias')!;
    const flag = rs.some((r) => r.cpu.other > OTHER_MAX) ? ' (DISTURBED)' : '';
    L.push(`| ${round} | ${rs.map((r) => r.target).join(' → ')} | ${dr.wrk.rps.toFixed(0)} | ${ar.wrk.rps.toFixed(0)} | ${ratio(ar.wrk.rps / dr.wrk.rps)} | ` +
      `${ms(dr.wrk.latency_us.p50)} / ${ms(dr.wrk.latency_us.p99)} | ${ms(ar.wrk.latency_us.p50)} / ${ms(ar.wrk.latency_us.p99)} | ` +
      `${dr.cpu.other.toFixed(2)} / ${dr.cpu.steal.toFixed(2)}; ${ar.cpu.other.toFixed(2)} / ${ar.cpu.steal.toFixed(2)}${flag} |`);
  }
  L.push('');
  // the rounds as paired samples: how far apart the two targets are, beyond the noise between rounds
  const pairs = Array.from({ length: ROUNDS }, (_, i) => {
    const rs = cost.kept.filter((r) => r.round === i + 1);
    const dr = rs.find((r) => r.target === 'direct')!;
    const ar = rs.find((r) => r.target === 'alias')!;
    const gw = (r: Run): number => r.cpu.gateway / r.wrk.rps;
    return { rps: ar.wrk.rps / dr.wrk.rps, gw: gw(ar) / gw(dr) };
  });
  const interval = (xs: number[]): { mean: number; sd: number; lo: number; hi: number } => {
    const n = xs.length;
    const mean = xs.reduce((s, v) => s + v, 0) / n;
    const sd = n < 2 ? NaN : Math.sqrt(xs.reduce((s, v) => s + (v - mean) ** 2, 0) / (n - 1));
    const h = (T95[Math.min(n - 1, T95.length - 1)]! * sd) / Math.sqrt(n);
    return { mean, sd, lo: mean - h, hi: mean + h };
  };
  const show = (i: ReturnType<typeof interval>): string =>
    Number.isNaN(i.sd) ? `${ratio(i.mean)} (one round: no interval)` : `mean ${ratio(i.mean)}, sd ${i.sd.toFixed(3)}, 95% interval ${ratio(i.lo)}–${ratio(i.hi)}`;
  const rpsI = interval(pairs.map((p) => p.rps));
  L.push(`Per-round alias/direct ratios (n = ${ROUNDS}): throughput ${show(rpsI)}; gateway CPU per call ${show(interval(pairs.map((p) => p.gw)))}.`);
  L.push('');
  const cost5 = (1 - a.rps / d.rps) * 100;
  const settled = !Number.isNaN(rpsI.sd) && rpsI.lo >= 0.95 ? 'the 95% interval excludes a cost of 5% or more'
    : 'the 95% interval does not exclude a cost of 5% or more: the noise between rounds is too large to settle it';
  L.push(CONTROL ? `A/A control: the two identical targets differ by ${(-cost5).toFixed(1)}% overall; that is the noise floor of this run.`
    : `Goal (the alias costs under 5% of throughput): alias/direct = ${ratio(a.rps / d.rps)}, a cost of ${cost5.toFixed(1)}% → ` +
      `${cost5 < 5 ? 'met' : 'NOT met'} by the overall ratio; ${settled}.`);
  L.push(`Berth's own counters: node ${JSON.stringify(cost.nodeCodes)}, alias ${JSON.stringify(cost.aliasCodes)}.`);
  const c1 = cost.c1;
  if (c1) {
    const n = c1.blockDiffs.length;
    const mean = c1.blockDiffs.reduce((x, y) => x + y, 0) / n;
    const sd = n > 1 ? Math.sqrt(c1.blockDiffs.reduce((x, y) => x + (y - mean) ** 2, 0) / (n - 1)) : NaN;
    const h = (T95[Math.min(n - 1, T95.length - 1)]! * sd) / Math.sqrt(n);
    const us = (v: number): string => v.toFixed(1);
    L.push('');
    L.push(`| concurrency 1, ${c1.direct.calls} calls each, alternating call by call on one connection | p10 µs | p50 µs | p90 µs | p99 µs | mean µs |`);
    L.push('|---|---:|---:|---:|---:|---:|');
    L.push(`| direct | ${us(c1.direct.p10)} | ${us(c1.direct.p50)} | ${us(c1.direct.p90)} | ${us(c1.direct.p99)} | ${us(c1.direct.mean)} |`);
    L.push(`| ${CONTROL ? 'direct again (--control)' : 'alias'} | ${us(c1.alias.p10)} | ${us(c1.alias.p50)} | ${us(c1.alias.p90)} | ${us(c1.alias.p99)} | ${us(c1.alias.mean)} |`);
    L.push(`| **added by the alias** | ${us(c1.alias.p10 - c1.direct.p10)} | **${us(c1.alias.p50 - c1.direct.p50)}** | ${us(c1.alias.p90 - c1.direct.p90)} | ${us(c1.alias.p99 - c1.direct.p99)} | ${us(c1.alias.mean - c1.direct.mean)} |`);
    L.push('');
    const share = (v: number): string => ((v / d.gwUs) * 100).toFixed(1) + '%';
    L.push(`Per block of ${Math.ceil(C1_PAIRS / C1_BLOCKS)} pairs (n = ${n}), median(alias) − median(direct): mean ${us(mean)} µs, ` +
      `95% interval ${us(mean - h)} to ${us(mean + h)} µs. As a share of the gateway's CPU per call under load (${d.gwUs.toFixed(0)} µs, ` +
      `the gateway being the busiest process): ${share(mean)} (interval ${share(mean - h)} to ${share(mean + h)}) — the throughput ` +
      `the alias would cost if its added time is all gateway CPU. Other processes used ${c1.cpu.other.toFixed(2)} cores meanwhile.`);
  }
  return L.join('\n');
}

function reportSwap(env: Record<string, string>, swap: SwapResult): string {
  const L: string[] = [];
  L.push(`Machine: ${env.nproc} cores (nproc), ${env.cpu}, ${env.memory}; Node ${env.node}; ${env.python}; Berth ${env.berth_head}`);
  L.push(`Part 2 load: ${SWAP_CONCURRENCY} calls in flight (undici Pool, ${SWAP_CONCURRENCY} connections) for ${SWAP_SECONDS}s on ` +
    `\`/datasphere/v1/aliases/${SWAP_ALIAS}:execute\`; the alias switched A→B→A… with PATCH every ${SWAP_INTERVAL_MS} ms from 1 s in to 1 s before the end; ` +
    `two cell nodes of ${INSTANCES} instances each; other processes used ${swap.idleLoad.toFixed(2)} cores before the start, ${swap.cpu.other.toFixed(2)} during.`);
  L.push('');
  const failDetail = [...Object.entries(swap.non200), ...Object.entries(swap.transport)].map(([k, v]) => `${k}: ${v}`).join(', ');
  L.push('| swap under load | value |');
  L.push('|---|---:|');
  L.push(`| swaps (PATCH backends), all 200 | ${swap.swaps} |`);
  L.push(`| total calls | ${swap.calls} (${(swap.calls / swap.seconds).toFixed(0)}/s) |`);
  L.push(`| **failed calls** (non-200 + transport errors) | **${swap.failed}**${failDetail ? ` (${failDetail})` : ''} |`);
  L.push(`| answered by node A / node B | ${swap.answeredBy.A ?? 0} / ${swap.answeredBy.B ?? 0} |`);
  const others = Object.entries(swap.answeredBy).filter(([k]) => k !== 'A' && k !== 'B');
  if (others.length) L.push(`| answered by anything else | ${others.map(([k, v]) => `${k}: ${v}`).join(', ')} |`);
  L.push(`| stale answers (sent after a PATCH returned, answered by the node it replaced) | ${swap.stale} |`);
  L.push(`| call latency p50 / p99 / max, ms | ${swap.latencyMs.p50.toFixed(2)} / ${swap.latencyMs.p99.toFixed(2)} / ${swap.latencyMs.max.toFixed(2)} |`);
  L.push(`| PATCH latency p50 / max, ms | ${swap.patchMs.p50.toFixed(2)} / ${swap.patchMs.max.toFixed(2)} |`);
  L.push(`| Berth's alias_http_codes | ${JSON.stringify(swap.aliasCodes)} |`);
  L.push('');
  L.push(`Goal (zero failed calls over ≥ ${MIN_SWAPS} swaps): ${swap.failed === 0 && swap.stale === 0 && swap.swaps >= MIN_SWAPS ? 'met' : 'NOT met'}.`);
  return L.join('\n');
}

// ---------------------------------------------------------------------------

async function main(): Promise<void> {
  for (const f of [WRK, PYTHON, LUA]) if (!existsSync(f)) throw new Error(`${f} is missing (wrk: apt-get install wrk)`);
  const env = machine({ python: firstLine(PYTHON, ['--version']), wrk: firstLine(WRK, ['-v']).replace(/ Copyright.*/, '') });
  try {
    const cost = PARTS.has('1') ? await aliasCost() : null;
    const swap = PARTS.has('2') ? await swapUnderLoad() : null;
    const table = [cost && reportCost(env, cost), swap && reportSwap(env, swap)].filter(Boolean).join('\n\n');
    const outDir = join(ROOT, 'bench', 'results');
    mkdirSync(outDir, { recursive: true });
    const file = join(outDir, `alias-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
    writeFileSync(file, JSON.stringify({
      env, options: { DURATION, WARMUP, CONNECTIONS, ROUNDS, SWAP_SECONDS, SWAP_CONCURRENCY, SWAP_INTERVAL_MS, REPEATS, CONTROL, PARTS: [...PARTS] },
      cost, swap, table,
    }, null, 2) + '\n');
    console.log('\n' + table + '\n');
    log(`raw numbers: ${file}`);
    const problems: string[] = [];
    if (swap && swap.failed > 0) problems.push(`${swap.failed} failed calls during the swaps`);
    if (swap && swap.stale > 0) problems.push(`${swap.stale} stale answers during the swaps`);
    if (swap && swap.swaps < MIN_SWAPS) problems.push(`only ${swap.swaps} swaps (want ≥ ${MIN_SWAPS}): lengthen --swap-seconds or shorten --swap-interval-ms`);
    if (problems.length) throw new Error(problems.join('; '));
  } finally {
    await stopAll();
  }
}

main().catch(async (err) => {
  console.error(`\nBENCHMARK FAILED: ${(err as Error).stack ?? err}`);
  await stopAll();
  process.exit(1);
});
