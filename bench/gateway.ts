// Benchmark for "Image nodes on Docker, and a gateway that carries HTTP/1.1, HTTP/2 and gRPC":
// Berth's header-routed gateway against the same container called directly and through nginx,
// on this machine, one target at a time, with the same load generator for every target.
//
//   HTTP/1.1  one `http-echo` container (a Berth image node, min = max = 1 instance,
//             sessionsPerInstance 64 or --sessions, health check http /healthz), GET /healthz with wrk:
//               direct        its published port 127.0.0.1:P (the node's instances[0].endpoint)
//               berth         `berth up` with x-node-id / x-folder-id / Authorization
//               nginx         Debian's nginx with as many worker processes as Berth has gateway
//                             workers (--gateway-workers; 1 and 2 by default, one nginx each),
//                             proxy_pass to 127.0.0.1:P with upstream keepalive. Berth gets
//                             `--gateway-workers N` (one Berth per N, each with its own two nodes)
//                             only when `berth up --help` lists the flag; until then one Berth,
//                             one gateway process, and the report says so.
//               node-floor    bench/gateway-node-proxy.mjs: a minimal reverse proxy in one Node
//                             process (undici pool; node:http2 for gRPC), no auth, limits or metrics:
//                             what Node itself costs here (for reference)
//               raw-floor     bench/gateway-raw-proxy.mjs (HTTP/1.1 only): the leanest Node proxy,
//                             Node's own HTTP parser on raw sockets both ways, no node:http, no
//                             undici, no streams: a lower bound for any Node gateway here; in as
//                             many processes as Berth has gateway workers (node:cluster past one)
//               container-ip  the container's own address, port 8080 (no docker-proxy; for reference)
//   gRPC      one `grpc-echo` container, unary /berth.test.Echo/Echo with h2load (h2c, prior
//             knowledge), the same five ways (nginx: grpc_pass with upstream keepalive).
//
// Every request carries the same headers, the routing ones included (direct and nginx ignore
// them), so every target reads the same bytes. Each target: a warm-up, the measured run at
// --connections (HTTP) or --grpc-clients × --grpc-streams (gRPC), then a run at 1 connection /
// 1 stream, whose p50 gives the latency Berth adds over direct. wrk runs for a duration (-d);
// h2load runs a fixed number of requests (-n, the same for every target), not a duration:
// at the end of an -D run h2load resets the streams still in flight, and a stream reset before
// Berth has answered crashed `berth up` when this was written (ERR_HTTP2_INVALID_STREAM from
// ServerHttp2Stream.respond in the proxy's fail path; see docs/benchmarks.md).
//
//   node --import tsx bench/gateway.ts [--duration 10] [--warmup 2] [--connections 16]
//        [--c1-duration 5] [--grpc-clients 4] [--grpc-streams 4] [--grpc-requests 40000]
//        [--grpc-c1-requests 4000] [--grpc-warmup-requests 4000] [--grpc-burst-requests 3000] [--path /healthz]
//        [--http-targets direct,berth,nginx,node-floor,raw-floor,container-ip] [--grpc-targets direct,berth,nginx,node-floor,container-ip]
//        [--gateway-workers 1,2] [--sessions 64] [--rounds 1] [--quiet-wait 120] [--keep] [--berth-node-args='--cpu-prof --cpu-prof-dir=/tmp/prof']
//        [--baseline /path/to/another/checkout] [--bursts 20]   (then 1 s runs of the first Berth, the baseline, nginx with as
//        many workers and the raw floor, taken in turn: an A/B the machine's drifting speed cannot tilt; for gRPC, runs of
//        --grpc-burst-requests of the first Berth, the baseline, nginx with as many workers and the Node floor; 0: none)
//
// CPU per call is reported for every target: the front (the proxy: Berth's processes, nginx's
// master + workers, the Node floor) and the whole server side (front + echo container +
// docker-proxy), with the ratios of Berth's to nginx's and to the Node floor's, in one run.
// --rounds R measures every target R times, round after round (all targets once, then again),
// because this machine's speed drifts by more than the differences measured, minute to minute:
// each ratio is taken within a round, and the report gives the median of the R ratios with
// their range; the goals are judged on the medians. A target's own figures are from its median
// round (by throughput).
//
// Prints a markdown table at the end; writes the raw numbers to bench/results/ (ignored by git).
// Fails (exit 1) on any non-2xx answer, socket error, or gRPC status other than 0.
// Stops every process and removes every container it started, on errors and signals too.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect as h2connect } from 'node:http2';
import { connect as netConnect } from 'node:net';
import { tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import Docker from 'dockerode';
import { buildTestImages, testImage, ECHO_PROTO } from '../test/images/index.js';
import {
  CLK_TCK, ROOT, WRK, alive, baselineCheckout, berthCommand, childrenOf, cpuSpeeds, firstLine, gitHead, showSpeeds, SPEEDS_NOTE, freePort, http, loadGenerators, loadRun as timedRun, log, machine, managed, medianRounds,
  onSignals, percentile, posInt, procTicks, readLog, runTool, showSpread, signalGroup, sleep, spread, start, stop as stopProcess, treeOf, waitQuiet as waitQuietFor,
  type CpuGroups, type CpuUse, type Managed, type Spread,
} from './lib.js';

const LUA = join(ROOT, 'bench', 'gateway.lua');
const NODE_PROXY = join(ROOT, 'bench', 'gateway-node-proxy.mjs');
const RAW_PROXY = join(ROOT, 'bench', 'gateway-raw-proxy.mjs');
const H2LOAD = '/usr/bin/h2load';
const NGINX = '/usr/sbin/nginx';
const PYTHON = '/usr/bin/python3'; // `berth up` checks for it even when every node is an image node
/** nginx keeps this many idle connections to the upstream (as many as Berth's default --sessions). */
const NGINX_KEEPALIVE = 64;
const GRPC_PATH = '/berth.test.Echo/Echo';
const GRPC_TEXT = 'hello from bench/gateway.ts';

const { values: args } = parseArgs({
  options: {
    duration: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '2' },
    connections: { type: 'string', default: '16' },
    'c1-duration': { type: 'string', default: '5' },
    'grpc-clients': { type: 'string', default: '4' },
    'grpc-streams': { type: 'string', default: '4' },
    'grpc-requests': { type: 'string', default: '40000' },
    'grpc-c1-requests': { type: 'string', default: '4000' },
    'grpc-burst-requests': { type: 'string', default: '3000' },
    'grpc-warmup-requests': { type: 'string', default: '4000' },
    path: { type: 'string', default: '/healthz' },
    'http-targets': { type: 'string', default: 'direct,berth,nginx,node-floor,raw-floor,container-ip' },
    'grpc-targets': { type: 'string', default: 'direct,berth,nginx,node-floor,container-ip' },
    'quiet-wait': { type: 'string', default: '120' },
    keep: { type: 'boolean', default: false },
    'berth-node-args': { type: 'string', default: '' },
    'gateway-workers': { type: 'string', default: '1,2' },
    // Berth's sessionsPerInstance for both nodes; fewer than --gateway-workers makes the nodes homed at one worker (cluster/call-relay.ts)
    sessions: { type: 'string', default: '64' },
    rounds: { type: 'string', default: '1' },
    // another checkout of Berth (a git worktree of an earlier commit): also measured, as the target
    // "Berth baseline", in the same rounds (HTTP/1.1 and gRPC; as many gateway workers as the first Berth)
    baseline: { type: 'string', default: '' },
    // then this many 1 s runs of each, the first Berth, the baseline, nginx with as many workers and the raw
    // Node floor, in turn: every side of each comparison sees the machine's same minutes
    bursts: { type: 'string', default: '20' },
  },
});
const SESSIONS = posInt(args.sessions!, 'sessions', 1, 1024);
const DURATION = posInt(args.duration!, 'duration', 1, 600);
const WARMUP = posInt(args.warmup!, 'warmup', 0, 600);
const CONNECTIONS = posInt(args.connections!, 'connections', 1, 1024);
const C1_DURATION = posInt(args['c1-duration']!, 'c1-duration', 0, 600);
const GRPC_CLIENTS = posInt(args['grpc-clients']!, 'grpc-clients', 1, 256);
const GRPC_STREAMS = posInt(args['grpc-streams']!, 'grpc-streams', 1, 256);
const GRPC_REQUESTS = posInt(args['grpc-requests']!, 'grpc-requests', 100, 10_000_000);
const GRPC_C1_REQUESTS = posInt(args['grpc-c1-requests']!, 'grpc-c1-requests', 0, 10_000_000);
/** Requests per gRPC run in the interleaved runs (about a second for Berth here). */
const GRPC_BURST_REQUESTS = posInt(args['grpc-burst-requests']!, 'grpc-burst-requests', 1, 10_000_000);
const GRPC_WARMUP_REQUESTS = posInt(args['grpc-warmup-requests']!, 'grpc-warmup-requests', 0, 10_000_000);
const ROUNDS = posInt(args.rounds!, 'rounds', 1, 20);
/** Upper bound on one h2load run (it is killed past this, and the run fails). */
const H2LOAD_MAX_S = 300;
const QUIET_WAIT_S = posInt(args['quiet-wait']!, 'quiet-wait', 0, 3600);
const PATH = args.path!;
if (!PATH.startsWith('/')) throw new Error('--path must start with "/"');
const TARGET_NAMES = ['direct', 'berth', 'nginx', 'node-floor', 'raw-floor', 'container-ip'] as const;
type TargetName = typeof TARGET_NAMES[number];
const HTTP_TARGETS = targetList(args['http-targets']!, 'http-targets');
const GRPC_TARGETS = targetList(args['grpc-targets']!, 'grpc-targets');
if (GRPC_TARGETS.includes('raw-floor')) throw new Error('--grpc-targets: raw-floor is HTTP/1.1 only');
const BERTH_NODE_ARGS = args['berth-node-args']!.split(' ').filter(Boolean);
const BASELINE = baselineCheckout(args.baseline);
const BURSTS = posInt(args.bursts!, 'bursts', 0, 1000);
const GATEWAY_WORKERS = [...new Set(args['gateway-workers']!.split(',').map((t) => posInt(t.trim(), 'gateway-workers', 1, 64)))];
/** Background load (cores) under which the machine counts as quiet. */
const QUIET_CORES = 0.2;
/** A measurement during which other processes used more cores than this is repeated... */
const OTHER_MAX = 0.25;
/** ...at most this many times in all. */
const MAX_ATTEMPTS = 3;

function targetList(v: string, name: string): TargetName[] {
  const list = v.split(',').map((t) => t.trim()).filter(Boolean);
  for (const t of list) if (!(TARGET_NAMES as readonly string[]).includes(t)) throw new Error(`--${name}: unknown target ${t}; known: ${TARGET_NAMES.join(',')}`);
  if (list.length && !list.includes('berth')) throw new Error(`--${name} must include berth (the others are compared with it)`);
  return list as TargetName[];
}

// ---------------------------------------------------------------------------
// Processes and containers we start: every process in its own group, all stopped on any exit
// path; Berth's containers carry the label berth.home=<home> and are removed at the end.

let workDir: string | null = null;
/** Every Berth home of this run (one per --gateway-workers value when berth up has the flag). */
const berthHomes: string[] = [];
/** Every `berth up` of this run, with its log. */
const berthProcs: Array<{ m: Managed; log: string }> = [];
/** wrk runs against Berth: each may leave up to -c calls abandoned when it stops */
let berthWrkRuns = 0;
const docker = new Docker();

/** `berth up` must survive every run: a crash is a result to report, not a slow target. */
function berthAlive(during: string): void {
  for (const { m, log: file } of berthProcs) {
    if (!alive(m)) throw new Error(`berth up exited (code ${m.proc.exitCode}, signal ${m.proc.signalCode}) during ${during}; its log ends:\n${readLog(file)}`);
  }
}

async function stop(m: Managed, graceMs = 30_000): Promise<void> {
  await stopProcess(m, graceMs);
  m.log?.end();
}

/** Containers of this run's Berth home, removed through the API (async) or the CLI (sync, on exit). */
async function removeContainers(): Promise<void> {
  for (const home of berthHomes) {
    const list = await docker.listContainers({ all: true, filters: { label: [`berth.home=${home}`] } }).catch(() => []);
    for (const c of list) await docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined);
  }
}

function removeContainersSync(): void {
  for (const home of berthHomes) {
    const ids = spawnSync('docker', ['ps', '-aq', '--filter', `label=berth.home=${home}`], { encoding: 'utf8', timeout: 10_000 }).stdout?.trim();
    if (ids) spawnSync('docker', ['rm', '-f', ...ids.split(/\s+/)], { timeout: 30_000 });
  }
}

async function stopAll(): Promise<void> {
  for (const c of loadGenerators) signalGroup(c.pid, 'SIGKILL');
  // nginx first, Berth last (it stops its own containers on SIGTERM)
  for (const m of [...managed].reverse()) await stop(m);
  await removeContainers();
}

process.on('exit', () => {
  for (const c of loadGenerators) signalGroup(c.pid, 'SIGKILL');
  for (const m of managed) if (alive(m)) signalGroup(m.proc.pid, 'SIGKILL');
  removeContainersSync();
});
onSignals(stopAll, () => { if (workDir) rmSync(workDir, { recursive: true, force: true }); });

// ---------------------------------------------------------------------------
// Small helpers

function waitListening(port: number, host: string, m: Managed | null, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return (async () => {
    for (let i = 0; i < 10_000 && Date.now() < deadline; i++) {
      if (m && !alive(m)) throw new Error(`${m.name} exited before it listened (see its log)`);
      const ok = await new Promise<boolean>((r) => {
        const s = netConnect(port, host);
        s.once('connect', () => { s.destroy(); r(true); });
        s.once('error', () => r(false));
      });
      if (ok) return;
      await sleep(50);
    }
    throw new Error(`nothing listened on ${host}:${port} within ${timeoutMs / 1000}s`);
  })();
}

// ---------------------------------------------------------------------------
// Processes to account CPU to (the accounting itself: bench/lib.ts).

/** Docker's userland proxy process for a published 127.0.0.1 port (it relays every byte). */
function dockerProxyPids(hostPort: number): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const argv = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      if (argv[0]?.endsWith('docker-proxy') && argv[argv.indexOf('-host-port') + 1] === String(hostPort)) out.push(Number(d));
    } catch { /* gone */ }
  }
  return out;
}

/** The machine may be shared: wait, bounded, until it is quiet, and record what was seen. */
const waitQuiet = (label: string): Promise<number> => waitQuietFor(label, {
  cores: QUIET_CORES, waitS: QUIET_WAIT_S,
  busy: (load, waitS) => `machine busy (${load} cores in use); waiting up to ${waitS}s for it to quieten`,
});

// ---------------------------------------------------------------------------
// Load generators. Both run through bash only to read their own CPU time afterwards (`times`).

interface LoadResult {
  tool: 'wrk' | 'h2load';
  requests: number;
  seconds: number;
  rps: number;
  /** non-2xx answers and socket/stream errors */
  errors: number;
  errorDetail: string;
  bytes: number;
  latency_us: { mean: number; p50: number; p90: number; p99: number; max: number };
  /** the load generator's own CPU time (user + system), seconds */
  cpu_s: number;
  raw: string;
}

function headerArgs(headers: Record<string, string>): string[] {
  return Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]);
}

async function wrk(url: string, connections: number, seconds: number, headers: Record<string, string>): Promise<LoadResult> {
  const r = await runTool([WRK, '-t1', `-c${connections}`, `-d${seconds}s`, '--timeout', '5s', '--latency', '-s', LUA, ...headerArgs(headers), url], seconds);
  const line = r.out.split('\n').find((l) => l.startsWith('BENCH_RESULT '));
  if (r.code !== 0 || !line) throw new Error(`wrk failed (exit ${r.code}):\n${r.out}\n${r.err}`);
  const j = JSON.parse(line.slice('BENCH_RESULT '.length));
  const e = j.errors;
  return {
    tool: 'wrk', requests: j.requests, seconds: j.duration_us / 1e6, rps: j.requests / (j.duration_us / 1e6),
    errors: e.connect + e.read + e.write + e.status + e.timeout, errorDetail: JSON.stringify(e), bytes: j.bytes,
    latency_us: { mean: j.latency_us.mean, p50: j.latency_us.p50, p90: j.latency_us.p90, p99: j.latency_us.p99, max: j.latency_us.max },
    cpu_s: r.cpu_s, raw: r.out,
  };
}

/**
 * h2load prints min/max/mean/sd only, so the percentiles come from its per-request log
 * (start µs, status, duration µs). A fixed number of requests (-n): every stream is answered.
 */
async function h2load(url: string, clients: number, streams: number, requests: number, headers: Record<string, string>, bodyFile: string, logFile: string): Promise<LoadResult> {
  rmSync(logFile, { force: true });
  const argv = [H2LOAD, '-t1', `-c${clients}`, `-m${streams}`, `-n${requests}`, '-d', bodyFile, ...headerArgs(headers), `--log-file=${logFile}`, url];
  const r = await runTool(argv, H2LOAD_MAX_S);
  const fin = /finished in ([\d.]+)(m?s), ([\d.]+) req\/s, ([\d.]+)([KMG]?B)\/s/.exec(r.out);
  const req = /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/.exec(r.out);
  const codes = /status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/.exec(r.out);
  const traffic = /traffic: [\d.]+[KMG]?B \((\d+)\) total/.exec(r.out);
  if (r.code !== 0 || !fin || !req || !codes) throw new Error(`h2load failed (exit ${r.code}):\n${r.out}\n${r.err}`);
  const done = Number(req[3]);
  // the log: one line per finished request; keep those that started after the warm-up
  const lines = existsSync(logFile) ? readFileSync(logFile, 'utf8').split('\n') : [];
  const rows: Array<[number, number, number]> = [];
  for (const l of lines) {
    const f = l.split('\t');
    if (f.length >= 3) rows.push([Number(f[0]), Number(f[1]), Number(f[2])]);
  }
  if (rows.length === 0) throw new Error(`h2load wrote no per-request log:\n${r.out}`);
  // a stream that got no answer (reset, or cut off) is logged with status 0
  const measured = rows.filter((x) => x[1] !== 0);
  const cutOff = rows.length - measured.length;
  const badStatus = measured.filter((x) => x[1] < 200 || x[1] > 299).length;
  const lat = Float64Array.from(measured.map((x) => x[2])).sort();
  const measuredSeconds = done / Number(fin[3]);
  return {
    tool: 'h2load', requests: measured.length, seconds: measuredSeconds, rps: measured.length / measuredSeconds,
    errors: Number(req[5]) + Number(req[6]) + Number(req[7]) + Number(codes[2]) + Number(codes[3]) + Number(codes[4]) + badStatus + cutOff + (requests - measured.length),
    errorDetail: `${req[0]}; ${codes[0]}; logged: ${measured.length} answered, ${badStatus} non-2xx, ${cutOff} unanswered`,
    bytes: traffic ? Number(traffic[1]) : 0,
    latency_us: { mean: lat.reduce((a, b) => a + b, 0) / lat.length, p50: percentile(lat, 50), p90: percentile(lat, 90), p99: percentile(lat, 99), max: lat[lat.length - 1]! },
    cpu_s: r.cpu_s, raw: r.out,
  };
}

function assertClean(name: string, r: LoadResult): void {
  if (r.requests === 0 || r.errors > 0) throw new Error(`${name}: ${r.requests} requests with ${r.errors} errors (${r.errorDetail})\n${r.raw}`);
}

// ---------------------------------------------------------------------------
// Measuring one target

interface Target {
  name: TargetName | 'baseline';
  /** short name in the tables: "nginx 2w", "Berth 2gw" */
  short: string;
  /** proxy processes serving (nginx workers, Berth gateway workers); 0 for no proxy */
  workers: number;
  label: string;
  url: string;
  /** CPU groups; `front` is the proxy in front of the container (Berth, nginx, or nothing) */
  groups: CpuGroups;
}

interface Measured {
  name: TargetName | 'baseline';
  short: string;
  workers: number;
  label: string;
  main: LoadResult;
  c1: LoadResult | null;
  cpu: CpuUse;
  c1Cpu: CpuUse | null;
  idleLoad: number;
  /** ns per probe iteration on each CPU just before the run (lib.ts cpuSpeeds) */
  speeds: number[];
  attempts: number;
  disturbed: boolean;
}

type Runner = (url: string, kind: 'warmup' | 'main' | 'c1') => Promise<LoadResult>;
interface Phases { warmup: boolean; c1: boolean; describe: (kind: 'warmup' | 'main' | 'c1') => string }

function loadRun(name: string, t: Target, run: () => Promise<LoadResult>): Promise<{ r: LoadResult; cpu: CpuUse }> {
  return timedRun(t.groups, run, (r) => assertClean(name, r), 'load');
}

async function measure(proto: string, t: Target, runner: Runner, phases: Phases): Promise<Measured> {
  const name = `${proto} ${t.short}`;
  let result: Measured | null = null;
  for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
    const idleLoad = await waitQuiet(name);
    const speeds = cpuSpeeds(name);
    if (phases.warmup) {
      log(`${name}: warm-up, ${phases.describe('warmup')}`);
      assertClean(`${name} (warm-up)`, await runner(t.url, 'warmup'));
      berthAlive(`${name} (warm-up)`);
    }
    log(`${name}: measuring, ${phases.describe('main')}`);
    const main = await loadRun(name, t, () => runner(t.url, 'main'));
    log(`${name}: ${main.r.rps.toFixed(0)} req/s, p50 ${ms(main.r.latency_us.p50)} ms, p99 ${ms(main.r.latency_us.p99)} ms; ` +
      `CPU cores ${Object.entries(main.cpu).filter(([k]) => !k.includes(':')).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ')}`);
    berthAlive(name);
    let c1: { r: LoadResult; cpu: CpuUse } | null = null;
    if (phases.c1) {
      log(`${name}: measuring at 1 connection / 1 stream, ${phases.describe('c1')}`);
      c1 = await loadRun(`${name} (1 connection)`, t, () => runner(t.url, 'c1'));
      log(`${name}: 1 connection: ${c1.r.rps.toFixed(0)} req/s, p50 ${ms(c1.r.latency_us.p50)} ms, p99 ${ms(c1.r.latency_us.p99)} ms`);
      berthAlive(`${name} (1 connection)`);
    }
    const other = Math.max(main.cpu.other!, c1?.cpu.other ?? 0);
    result = { name: t.name, short: t.short, workers: t.workers, label: t.label, main: main.r, c1: c1?.r ?? null, cpu: main.cpu, c1Cpu: c1?.cpu ?? null, idleLoad, speeds, attempts: attempt, disturbed: other > OTHER_MAX };
    if (!result.disturbed) break;
    log(`${name}: other processes used ${other.toFixed(2)} cores during the measurement` +
      (attempt < MAX_ATTEMPTS ? `; measuring again (attempt ${attempt + 1} of ${MAX_ATTEMPTS})` : '; keeping it, flagged'));
  }
  return result!;
}

// ---------------------------------------------------------------------------
// Berth, its two image nodes, and nginx

interface Instance { nodeId: string; instanceId: string; hostPort: number; containerIp: string; containerPids: number[]; proxyPids: number[] }

async function createImageNode(base: string, token: string, spec: Record<string, unknown>): Promise<Instance> {
  const created = await http('POST', `${base}/v1/nodes`, spec, { authorization: `Bearer ${token}` });
  if (created.status !== 201) throw new Error(`node create: ${created.status} ${created.text}`);
  const nodeId = created.json.id as string;
  const deadline = Date.now() + 120_000;
  let node: any = null;
  for (let i = 0; i < 2_000 && Date.now() < deadline; i++) {
    const r = await http('GET', `${base}/v1/nodes/${nodeId}`, undefined, { authorization: `Bearer ${token}` });
    if (r.status !== 200) throw new Error(`node get: ${r.status} ${r.text}`);
    if (r.json.status === 'Healthy') { node = r.json; break; }
    await sleep(100);
  }
  if (!node) throw new Error(`node ${spec.name} did not become Healthy within 120s`);
  const inst = node.instances[0];
  const m = /^tcp:127\.0\.0\.1:(\d+)$/.exec(inst?.endpoint ?? '');
  if (node.instances.length !== 1 || !m) throw new Error(`expected one instance at tcp:127.0.0.1:PORT, got ${JSON.stringify(node.instances)}`);
  const hostPort = Number(m[1]);
  const info = await docker.getContainer(`berth-${inst.id}`).inspect();
  const containerIp = (info.NetworkSettings as { IPAddress?: string } | undefined)?.IPAddress || Object.values(info.NetworkSettings?.Networks ?? {})[0]?.IPAddress || '';
  const proxyPids = dockerProxyPids(hostPort);
  const containerPids = treeOf(info.State.Pid);
  log(`node ${spec.name} (${nodeId}) Healthy: instance ${inst.id} at 127.0.0.1:${hostPort} (container ${containerIp}, pids ${containerPids.join(',')}; docker-proxy pid ${proxyPids.join(',') || 'none'})`);
  return { nodeId, instanceId: inst.id, hostPort, containerIp, containerPids, proxyPids };
}

/**
 * Targets in short runs taken in turn (--bursts of each), the first one Berth: the machine's
 * speed drifts over minutes (docs/benchmarks.md, "Two speeds"), so runs seconds apart compare
 * what runs far apart cannot. Front CPU per call from each one's process tree, summed over its runs.
 * `burst` is one short run (HTTP: wrk for 1 s; gRPC: h2load, a fixed number of requests).
 */
async function interleave(protocol: 'HTTP/1.1' | 'gRPC', how: string, targets: Target[], burst: (t: Target) => Promise<LoadResult>): Promise<string> {
  log(`${protocol}: ${BURSTS} short runs each of ${targets.map((t) => t.short).join(', ')}, in turn`);
  const ticks = (pids: number[]): number => pids.reduce((n, p) => n + (procTicks(p) ?? 0), 0);
  const sums = targets.map(() => ({ calls: 0, seconds: 0, ticks: 0 }));
  for (let i = 0; i < BURSTS; i++) {
    for (const [k, t] of targets.entries()) {
      const t0 = ticks(t.groups.front!);
      const r = await burst(t);
      const t1 = ticks(t.groups.front!);
      assertClean(t.short, r);
      sums[k]!.calls += r.requests;
      sums[k]!.seconds += r.seconds;
      sums[k]!.ticks += t1 - t0;
    }
  }
  const each = sums.map((x) => ({ rps: x.calls / x.seconds, us: (x.ticks / CLK_TCK) * 1e6 / x.calls }));
  const lines = [
    `${protocol} interleaved (${BURSTS} runs each, the targets in turn; ${how}):`,
    '',
    `| target | req/s | front CPU µs per call | ${targets[0]!.short} / it: throughput | ${targets[0]!.short} / it: CPU per call |`,
    '|---|---:|---:|---:|---:|',
  ];
  for (const [k, t] of targets.entries()) {
    const e = each[k]!;
    lines.push(`| ${t.short} | ${Math.round(e.rps)} | ${e.us.toFixed(0)} | ${k === 0 ? '–' : (each[0]!.rps / e.rps).toFixed(2) + '×'} | ${k === 0 ? '–' : (each[0]!.us / e.us).toFixed(2) + '×'} |`);
  }
  const nginx = targets.findIndex((t) => t.name === 'nginx');
  const floor = targets.findIndex((t) => t.name === 'raw-floor' || t.name === 'node-floor');
  if (nginx > 0 && floor > 0) lines.push('', `The ${targets[floor]!.short} / ${targets[nginx]!.short}: throughput ${(each[floor]!.rps / each[nginx]!.rps).toFixed(2)}×.`);
  return lines.join('\n');
}

async function startBerth(work: string, gatewayWorkers: number, root?: string): Promise<{ m: Managed; base: string; token: string }> {
  const tag = `-g${gatewayWorkers}${root ? '-baseline' : ''}`;
  const home = join(work, `berth-home${tag}`);
  const logFile = join(work, `berth${tag}.log`);
  berthHomes.push(home);
  const [nodeBin, ...cli] = berthCommand(BERTH_NODE_ARGS, root);
  const m = start('berth', nodeBin!, [...cli, 'up', '--port', '0', '--home', home, '--runtime', 'docker', '--gateway-workers', String(gatewayWorkers)],
    logFile, { BERTH_PYTHON: PYTHON, BERTH_HOME: home }, true);
  let out = '';
  m.proc.stdout!.on('data', (d) => { out += d; });
  const base = await new Promise<string>((res, rej) => {
    const t = setTimeout(() => rej(new Error(`berth up did not print its address within 60s:\n${out}`)), 60_000);
    const check = (): void => {
      const mm = /Berth listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(out);
      if (mm) { clearTimeout(t); res(mm[1]!); }
    };
    m.proc.stdout!.on('data', check);
    m.proc.once('exit', (code) => { clearTimeout(t); rej(new Error(`berth up exited with ${code}:\n${out}\n${readLog(logFile)}`)); });
  });
  const token = readFileSync(join(home, 'admin-token'), 'utf8').trim();
  berthProcs.push({ m, log: logFile });
  log(`berth: listening on ${base}`);
  return { m, base, token };
}

function nginxConf(dir: string, httpPort: number, grpcPort: number, httpUpstream: number, grpcUpstream: number, workers: number): string {
  const tmp = join(dir, 'tmp');
  return `# generated by bench/gateway.ts: as many workers as Berth has gateway workers
worker_processes ${workers};
pid ${join(dir, 'nginx.pid')};
error_log ${join(dir, 'error.log')} warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_timeout 65s;
  keepalive_requests 1000000;
  client_body_temp_path ${tmp}/body;
  proxy_temp_path ${tmp}/proxy;
  fastcgi_temp_path ${tmp}/fastcgi;
  uwsgi_temp_path ${tmp}/uwsgi;
  scgi_temp_path ${tmp}/scgi;
  upstream echo_http {
    server 127.0.0.1:${httpUpstream};
    keepalive ${NGINX_KEEPALIVE};
    keepalive_requests 1000000;
  }
  upstream echo_grpc {
    server 127.0.0.1:${grpcUpstream};
    keepalive ${NGINX_KEEPALIVE};
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:${httpPort};
    location / {
      proxy_pass http://echo_http;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
  server {
    listen 127.0.0.1:${grpcPort} http2;
    location / {
      grpc_pass grpc://echo_grpc;
    }
  }
}
`;
}

async function startNginx(work: string, httpUpstream: number, grpcUpstream: number, workers: number): Promise<{ m: Managed; httpPort: number; grpcPort: number; pids: number[]; workers: number }> {
  const dir = join(work, `nginx-${workers}`);
  mkdirSync(join(dir, 'tmp'), { recursive: true });
  const httpPort = await freePort();
  const grpcPort = await freePort();
  const conf = join(dir, 'nginx.conf');
  writeFileSync(conf, nginxConf(dir, httpPort, grpcPort, httpUpstream, grpcUpstream, workers));
  const m = start(`nginx-${workers}`, NGINX, ['-c', conf, '-p', dir, '-g', 'daemon off;'], join(work, `nginx-${workers}.log`));
  await waitListening(httpPort, '127.0.0.1', m);
  await waitListening(grpcPort, '127.0.0.1', m);
  let pids: number[] = [];
  for (let i = 0; i < 100 && pids.length < workers; i++) { pids = childrenOf(m.proc.pid!); if (pids.length < workers) await sleep(50); }
  if (pids.length !== workers) throw new Error(`nginx started ${pids.length} workers, expected ${workers}`);
  log(`nginx (${workers} worker${workers > 1 ? 's' : ''}): 127.0.0.1:${httpPort} (HTTP/1.1) and :${grpcPort} (h2c, gRPC); master ${m.proc.pid}, workers ${pids.join(',')}`);
  return { m, httpPort, grpcPort, pids: [m.proc.pid!, ...pids], workers };
}

async function startNodeFloor(work: string, httpUpstream: number, grpcUpstream: number): Promise<{ m: Managed; httpPort: number; grpcPort: number }> {
  const httpPort = await freePort();
  const grpcPort = await freePort();
  const m = start('node-floor', process.execPath, [NODE_PROXY, String(httpPort), String(httpUpstream), String(grpcPort), String(grpcUpstream)], join(work, 'node-floor.log'));
  await waitListening(httpPort, '127.0.0.1', m);
  await waitListening(grpcPort, '127.0.0.1', m);
  log(`node floor: 127.0.0.1:${httpPort} (HTTP/1.1) and :${grpcPort} (h2c); pid ${m.proc.pid}`);
  return { m, httpPort, grpcPort };
}

/** The raw floor in as many processes as a Berth has gateway workers (node:cluster past one). */
async function startRawFloor(work: string, httpUpstream: number, processes: number): Promise<{ m: Managed; httpPort: number; processes: number }> {
  const httpPort = await freePort();
  const logFile = join(work, `raw-floor-${processes}.log`);
  const m = start(`raw-floor-${processes}`, process.execPath, [RAW_PROXY, String(httpPort), String(httpUpstream), String(processes)], logFile);
  const deadline = Date.now() + 20_000;
  while (!readLog(logFile).includes('ready')) { // with node:cluster, once every process listens
    if (!alive(m) || Date.now() > deadline) throw new Error(`raw Node floor did not start: ${readLog(logFile)}`);
    await sleep(50);
  }
  log(`raw Node floor (${processes} process${processes > 1 ? 'es' : ''}): 127.0.0.1:${httpPort} (HTTP/1.1); pid ${m.proc.pid}`);
  return { m, httpPort, processes };
}

// ---------------------------------------------------------------------------
// Correctness before the load: each HTTP target answers 200 "ok"; each gRPC target answers
// :status 200, the request message echoed, and the trailer grpc-status 0.

async function checkHttp(name: string, url: string, headers: Record<string, string>): Promise<void> {
  const r = await http('GET', url, undefined, headers);
  if (r.status !== 200) throw new Error(`${name}: GET ${url} answered ${r.status} ${r.text.slice(0, 300)}`);
  if (PATH === '/healthz' && r.text !== 'ok\n') throw new Error(`${name}: GET ${url} answered ${JSON.stringify(r.text.slice(0, 300))}, not the echo's "ok"`);
}

function grpcFrame(text: string): Buffer {
  const s = Buffer.from(text, 'utf8');
  if (s.length > 127) throw new Error('keep the gRPC text under 128 bytes (one-byte varint length)');
  const msg = Buffer.concat([Buffer.from([0x0a, s.length]), s]); // EchoMessage { string text = 1; }
  const head = Buffer.alloc(5);
  head.writeUInt32BE(msg.length, 1);
  return Buffer.concat([head, msg]);
}

async function checkGrpc(name: string, url: string, headers: Record<string, string>, frame: Buffer): Promise<void> {
  const u = new URL(url);
  const session = h2connect(u.origin);
  session.on('error', () => undefined);
  try {
    const result = await new Promise<{ status: number; type: string; body: Buffer; grpcStatus: string | undefined; grpcMessage: string | undefined }>((res, rej) => {
      const timer = setTimeout(() => rej(new Error('no answer within 10s')), 10_000);
      const s = session.request({ ':method': 'POST', ':path': u.pathname, 'content-type': 'application/grpc', te: 'trailers', ...headers });
      const chunks: Buffer[] = [];
      let head: Record<string, unknown> = {};
      let trailers: Record<string, unknown> = {};
      s.on('response', (h) => { head = h; });
      s.on('trailers', (t) => { trailers = t; });
      s.on('data', (c: Buffer) => chunks.push(c));
      s.on('error', (e) => { clearTimeout(timer); rej(e); });
      s.on('close', () => {
        clearTimeout(timer);
        const st = (trailers['grpc-status'] ?? head['grpc-status']) as string | undefined;
        const gm = (trailers['grpc-message'] ?? head['grpc-message']) as string | undefined;
        res({ status: Number(head[':status']), type: String(head['content-type']), body: Buffer.concat(chunks), grpcStatus: st, grpcMessage: gm });
      });
      s.end(frame);
    });
    if (result.status !== 200 || !result.type.startsWith('application/grpc') || result.grpcStatus !== '0' || !result.body.equals(frame)) {
      throw new Error(`${name}: ${url} answered :status ${result.status}, content-type ${result.type}, grpc-status ${result.grpcStatus} ` +
        `(${result.grpcMessage ?? ''}), body ${result.body.toString('hex')} (sent ${frame.toString('hex')})`);
    }
  } finally {
    session.destroy();
  }
}

/** One call with a real gRPC client (grpc-js, the generated stub) through Berth. */
async function checkGrpcJs(base: string, nodeId: string, token: string): Promise<void> {
  const def = protoLoader.loadSync(ECHO_PROTO, { keepCase: true });
  const Echo = (grpc.loadPackageDefinition(def) as any).berth.test.Echo;
  const client = new Echo(base.replace('http://', ''), grpc.credentials.createInsecure());
  try {
    const md = new grpc.Metadata();
    md.set('x-node-id', nodeId);
    md.set('x-folder-id', 'default');
    md.set('authorization', `Bearer ${token}`);
    const reply = await new Promise<any>((res, rej) => {
      client.Echo({ text: GRPC_TEXT }, md, { deadline: Date.now() + 10_000 }, (err: grpc.ServiceError | null, r: any) => (err ? rej(err) : res(r)));
    });
    if (reply?.text !== GRPC_TEXT) throw new Error(`grpc-js through Berth: got ${JSON.stringify(reply)}`);
  } finally {
    client.close();
  }
}

/** Berth's own counters of answers per node: HTTP status codes and gRPC status codes. */
async function berthCodes(base: string, token: string, nodeId: string): Promise<{ http: Record<string, number>; grpc: Record<string, number> }> {
  const metrics = await http('GET', `${base}/metrics`, undefined, { authorization: `Bearer ${token}` });
  const out = { http: {} as Record<string, number>, grpc: {} as Record<string, number> };
  for (const line of metrics.text.split('\n')) {
    const mm = /^node_(http|grpc)_codes\{node_id="([^"]+)",code="(\d+)"\} (\d+)/.exec(line);
    if (mm && mm[2] === nodeId) out[mm[1] as 'http' | 'grpc'][mm[3]!] = Number(mm[4]);
  }
  return out;
}

// ---------------------------------------------------------------------------
// The machine and the software, for the record

function gatewayMachine(): Record<string, string> {
  return machine({
    total_mem_os: `${(totalmem() / 2 ** 30).toFixed(1)} GiB`, wrk: firstLine(WRK, ['-v']), h2load: firstLine(H2LOAD, ['--version']), nginx: firstLine(NGINX, ['-v']),
    docker: firstLine('docker', ['version', '--format', 'Docker {{.Server.Version}}']), kernel: firstLine('uname', ['-r']),
  });
}

// ---------------------------------------------------------------------------
// Report

const ms = (us: number): string => (us / 1000).toFixed(2);
const x = (v: number): string => v.toFixed(2) + '×';
const us = (v: number): string => v.toFixed(0);
/** CPU µs per call: the proxy in front, and the whole server side (front + echo container + docker-proxy). */
function perCall(r: Measured): { front: number; server: number } {
  const c = r.cpu;
  const front = c.front ?? 0;
  return { front: (front / r.main.rps) * 1e6, server: ((front + (c.echo ?? 0) + (c['docker-proxy'] ?? 0)) / r.main.rps) * 1e6 };
}

function table(title: string, rounds: Measured[][], loadDesc: string, c1Desc: string): string[] {
  const results = medianRounds(rounds, (r) => r.main.rps);
  const lines: string[] = [];
  lines.push(`**${title}** — ${loadDesc}; then ${c1Desc}.${ROUNDS > 1 ? ` ${ROUNDS} rounds: each target's figures from its median round by throughput; each comparison the median of the ${ROUNDS} rounds' own (their range in brackets).` : ''}`);
  lines.push('');
  lines.push('| target | req/s | p50 ms | p99 ms | requests | errors | 1 conn: req/s | 1 conn: p50 ms | 1 conn: p99 ms |');
  lines.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of results) {
    lines.push(`| ${r.label} | ${r.main.rps.toFixed(0)} | ${ms(r.main.latency_us.p50)} | ${ms(r.main.latency_us.p99)} | ${r.main.requests} | ${r.main.errors} | ` +
      `${r.c1 ? r.c1.rps.toFixed(0) : '–'} | ${r.c1 ? ms(r.c1.latency_us.p50) : '–'} | ${r.c1 ? ms(r.c1.latency_us.p99) : '–'} |`);
  }
  lines.push('');
  lines.push('CPU during the loaded run, in cores (2 = the whole machine) and µs per call; "front" = the proxy in front of the container (Berth\'s processes, nginx master + workers, a Node floor\'s process); "server" = front + echo container + docker-proxy:');
  lines.push('');
  lines.push('"front reads + writes per call": its read/readv/write/writev system calls (a count, steady however fast the machine runs that moment; every socket operation of a Node process, not nginx\'s recv):');
  lines.push('');
  lines.push(SPEEDS_NOTE);
  lines.push('');
  lines.push('| target | front | front µs/call | server µs/call | front reads + writes per call | echo container | docker-proxy | load generator | other: before / during / 1-conn run | CPU speeds | attempts |');
  lines.push('|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|');
  for (const r of results) {
    const c = r.cpu;
    const front = c.front ?? 0;
    const pc = perCall(r);
    const rw = c['rw:front'] ? (c['rw:front'] / r.main.rps).toFixed(2) : '–';
    lines.push(`| ${r.label} | ${front.toFixed(2)} | ${front > 0 ? us(pc.front) : '–'} | ${us(pc.server)} | ${rw} | ` +
      `${c.echo!.toFixed(2)} | ${(c['docker-proxy'] ?? 0).toFixed(2)} | ${c.load!.toFixed(2)} | ` +
      `${r.idleLoad.toFixed(2)} / ${c.other!.toFixed(2)} / ${r.c1Cpu ? r.c1Cpu.other!.toFixed(2) : '–'} | ${showSpeeds(r.speeds)} | ${r.attempts}${r.disturbed ? ' (DISTURBED)' : ''} |`);
  }
  // a comparison of Berth (results[bi]) with another target (results[oi]), round by round
  const each = (bi: number, oi: number, f: (b: Measured, o: Measured) => number | null): Spread | null => {
    const v = rounds.map((r) => f(r[bi]!, r[oi]!));
    return v.every((n): n is number => n !== null && Number.isFinite(n)) ? spread(v) : null;
  };
  const fmt = (s: Spread | null, as: (n: number) => string): string => showSpread(s, as, ROUNDS);
  const rps = (b: Measured, o: Measured): number => b.main.rps / o.main.rps;
  const cpu = (b: Measured, o: Measured): number | null => (perCall(o).front > 0 ? perCall(b).front / perCall(o).front : null);
  const addedC1 = (b: Measured, o: Measured): number | null => (b.c1 && o.c1 ? b.c1.latency_us.p50 - o.c1.latency_us.p50 : null);
  const d = results.findIndex((r) => r.name === 'direct');
  const floor = results.findIndex((r) => r.name === 'node-floor');
  results.forEach((b, bi) => {
    if (b.name !== 'berth') return;
    lines.push('');
    lines.push(`| ${b.short} vs | throughput (Berth / other) | front CPU per call (Berth / other) | p50 added, loaded (ms) | p50 added, 1 conn (ms) | p99 added, 1 conn (ms) |`);
    lines.push('|---|---:|---:|---:|---:|---:|');
    results.forEach((r, oi) => {
      if (r.name === 'berth') return;
      lines.push(`| ${r.short} | ${fmt(each(bi, oi, rps), x)} | ${fmt(each(bi, oi, cpu), x)} | ${fmt(each(bi, oi, (bb, o) => bb.main.latency_us.p50 - o.main.latency_us.p50), ms)} | ` +
        `${fmt(each(bi, oi, addedC1), ms)} | ${fmt(each(bi, oi, (bb, o) => (bb.c1 && o.c1 ? bb.c1.latency_us.p99 - o.c1.latency_us.p99 : null)), ms)} |`);
    });
    const goals: string[] = [];
    // nginx with as many workers as this Berth has gateway workers
    const n = results.findIndex((r) => r.name === 'nginx' && r.workers === b.workers);
    const throughput = n >= 0 ? each(bi, n, rps) : null;
    if (throughput) goals.push(`throughput ≥ 0.8 × ${results[n]!.short}: ${fmt(throughput, x)} — ${throughput.mid >= 0.8 ? 'met' : 'NOT met'}`);
    const frontCpu = floor >= 0 && title.startsWith('HTTP') ? each(bi, floor, cpu) : null;
    if (frontCpu) goals.push(`front CPU per call ≤ 1.3 × the Node floor's: ${fmt(frontCpu, x)} — ${frontCpu.mid <= 1.3 ? 'met' : 'NOT met'}`);
    const added = d >= 0 ? each(bi, d, addedC1) : null;
    if (added) {
      const limit = title.startsWith('HTTP') ? 0.3 : 0.5;
      goals.push(`added p50 over direct < ${limit} ms (1 connection): ${fmt(added, ms)} ms — ${added.mid / 1000 < limit ? 'met' : 'NOT met'}`);
    }
    if (goals.length) { lines.push(''); lines.push(`Goals (issue 8) for ${b.short}: ${goals.join('; ')}.`); }
    // how far the leanest Node proxy itself gets against the same nginx: the ceiling for any Node gateway here
    const raw = results.findIndex((r) => r.name === 'raw-floor' && r.workers === b.workers);
    if (raw >= 0 && n >= 0) { lines.push(''); lines.push(`The raw Node floor / ${results[n]!.short}, throughput: ${fmt(each(raw, n, rps), x)}.`); }
  });
  return lines;
}

function report(env: Record<string, string>, httpResults: Measured[][], grpcResults: Measured[][], codes: { http: Record<string, number>; grpc: Record<string, number> }, grpcBytes: number): string {
  const lines: string[] = [];
  lines.push(`Machine: ${env.nproc} cores (nproc), ${env.cpu}, ${env.memory}; Linux ${env.kernel}; Node ${env.node}; ${env.docker}; ` +
    `${env.nginx}; ${env.wrk.replace(/ Copyright.*/, '')}; ${env.h2load}. Berth ${env.berth_head}. nginx with ${GATEWAY_WORKERS.join(' and ')} worker processes; ` +
    `Berth (the built CLI, bin/berth) with --gateway-workers ${GATEWAY_WORKERS.join(' and ')}.`);
  lines.push('');
  if (httpResults[0]?.length) {
    lines.push(...table('HTTP/1.1', httpResults,
      `wrk -t1 -c${CONNECTIONS} -d${DURATION}s (after a ${WARMUP}s warm-up run), GET ${PATH}, the same three headers (x-node-id, x-folder-id, Authorization) to every target`,
      `wrk -t1 -c1 -d${C1_DURATION}s`));
    lines.push('');
  }
  if (grpcResults[0]?.length) {
    lines.push(...table('gRPC unary', grpcResults,
      `h2load -t1 -c${GRPC_CLIENTS} -m${GRPC_STREAMS} -n${GRPC_REQUESTS} (after a -n${GRPC_WARMUP_REQUESTS} warm-up run), POST ${GRPC_PATH} (one ${grpcBytes}-byte length-prefixed EchoMessage), ` +
      `content-type application/grpc, te trailers and the routing headers to every target; percentiles from h2load's per-request log`,
      `-c1 -m1 -n${GRPC_C1_REQUESTS}`));
    lines.push('');
  }
  lines.push(`Berth's own counters for the two nodes: HTTP status codes ${JSON.stringify(codes.http)}, gRPC status codes ${JSON.stringify(codes.grpc)} ` +
    `(a 499 here is a call wrk abandoned when a run ended).`);
  return lines.join('\n');
}

// ---------------------------------------------------------------------------

async function main(): Promise<void> {
  for (const f of [WRK, H2LOAD, NGINX, LUA, PYTHON]) {
    if (!existsSync(f)) throw new Error(`${f} is missing (Debian: apt-get install -y wrk nghttp2-client nginx python3-dill)`);
  }
  await docker.ping().catch((err) => { throw new Error(`Docker daemon not reachable (${(err as Error).message}): start dockerd`); });
  const env = gatewayMachine();
  const work = mkdtempSync(join(tmpdir(), 'berth-bench-gw-'));
  workDir = work;
  log(`work directory ${work}`);
  let ok = false;
  try {
    log('building the test images (skipped when up to date)');
    await buildTestImages(['http-echo', 'grpc-echo'], { log });

    // one Berth per gateway-worker count, each with its own two nodes;
    // direct, nginx and the Node floor use the first Berth's containers
    const scaling = { minInstances: 1, maxInstances: 1, sessionsPerInstance: SESSIONS };
    const berths: Array<{ gw: number; berth: { m: Managed; base: string; token: string }; httpNode: Instance; grpcNode: Instance }> = [];
    // the two echo nodes a Berth serves (each Berth its own)
    const echoNodes = async (b: { base: string; token: string }): Promise<{ httpNode: Instance; grpcNode: Instance }> => ({
      httpNode: await createImageNode(b.base, b.token, {
        kind: 'image', image: testImage('http-echo'), name: 'bench-http-echo', scaling,
        endpoint: { port: 8080, protocol: 'http', timeout: 30 },
        healthcheck: { protocol: 'http', path: '/healthz', port: 8080, interval: 1 },
      }),
      grpcNode: await createImageNode(b.base, b.token, {
        kind: 'image', image: testImage('grpc-echo'), name: 'bench-grpc-echo', scaling,
        endpoint: { port: 50051, protocol: 'grpc', timeout: 30 },
        healthcheck: { protocol: 'grpc', port: 50051, service: 'berth.test.Echo', interval: 1 },
      }),
    });
    for (const gw of GATEWAY_WORKERS) {
      const berth = await startBerth(work, gw);
      berths.push({ gw, berth, ...await echoNodes(berth) });
    }
    const baseline = BASELINE && (HTTP_TARGETS.includes('berth') || GRPC_TARGETS.includes('berth')) ? await (async () => {
      const berth = await startBerth(work, GATEWAY_WORKERS[0]!, BASELINE);
      return { gw: GATEWAY_WORKERS[0]!, berth, ...await echoNodes(berth), commit: gitHead(BASELINE) };
    })() : null;
    const baselineLabel = `Berth baseline (${BASELINE} at ${baseline?.commit}; --gateway-workers ${GATEWAY_WORKERS[0]})`;
    const { httpNode, grpcNode } = berths[0]!;
    const berthTarget = (b: typeof berths[number]): { short: string; workers: number; label: string } =>
      ({ short: `Berth ${b.gw}gw`, workers: b.gw, label: `Berth gateway (header-routed; --gateway-workers ${b.gw})` });
    // the proxy's processes: berth up's whole tree (its gateway workers too)
    const berthFront = (b: typeof berths[number]): number[] => treeOf(b.berth.m.proc.pid!);
    const nginxes = (HTTP_TARGETS.includes('nginx') || GRPC_TARGETS.includes('nginx'))
      ? await Promise.all(GATEWAY_WORKERS.map((w) => startNginx(work, httpNode.hostPort, grpcNode.hostPort, w))) : [];
    const floor = (HTTP_TARGETS.includes('node-floor') || GRPC_TARGETS.includes('node-floor')) ? await startNodeFloor(work, httpNode.hostPort, grpcNode.hostPort) : null;
    const rawFloors = HTTP_TARGETS.includes('raw-floor') ? await Promise.all(GATEWAY_WORKERS.map((w) => startRawFloor(work, httpNode.hostPort, w))) : [];

    // ---- HTTP/1.1
    // every target gets the same headers (each Berth its own node id and token; the others ignore them)
    const httpHeadersFor = (b: typeof berths[number]): Record<string, string> => ({ 'x-node-id': b.httpNode.nodeId, 'x-folder-id': 'default', Authorization: `Bearer ${b.berth.token}` });
    const httpHeaders = httpHeadersFor(berths[0]!);
    const headersByUrl = new Map<string, Record<string, string>>();
    const httpTargets: Target[] = [];
    const groupsFor = (inst: Instance, front: number[]): CpuGroups => ({ front, echo: inst.containerPids, 'docker-proxy': inst.proxyPids });
    const nw = (w: number): string => `${w} worker${w > 1 ? 's' : ''}`;
    for (const t of HTTP_TARGETS) {
      if (t === 'direct') httpTargets.push({ name: t, short: 'direct', workers: 0, label: `direct (127.0.0.1:${httpNode.hostPort}, published port)`, url: `http://127.0.0.1:${httpNode.hostPort}${PATH}`, groups: groupsFor(httpNode, []) });
      if (t === 'berth') {
        for (const b of berths) {
          const url = `${b.berth.base}${PATH}`;
          headersByUrl.set(url, httpHeadersFor(b));
          httpTargets.push({ name: t, ...berthTarget(b), url, groups: groupsFor(b.httpNode, berthFront(b)) });
        }
        if (baseline) {
          const url = `${baseline.berth.base}${PATH}`;
          headersByUrl.set(url, httpHeadersFor(baseline));
          httpTargets.push({ name: 'baseline', short: 'Berth baseline', workers: baseline.gw, label: baselineLabel,
            url, groups: groupsFor(baseline.httpNode, berthFront(baseline)) });
        }
      }
      if (t === 'nginx') for (const n of nginxes) httpTargets.push({ name: t, short: `nginx ${n.workers}w`, workers: n.workers, label: `nginx (${nw(n.workers)}, upstream keepalive)`, url: `http://127.0.0.1:${n.httpPort}${PATH}`, groups: groupsFor(httpNode, n.pids) });
      if (t === 'node-floor') httpTargets.push({ name: t, short: 'Node floor', workers: 1, label: 'Node floor (minimal Node proxy, undici pool)', url: `http://127.0.0.1:${floor!.httpPort}${PATH}`, groups: groupsFor(httpNode, [floor!.m.proc.pid!]) });
      if (t === 'raw-floor') for (const r of rawFloors) httpTargets.push({ name: t, short: r.processes > 1 ? `raw Node floor ${r.processes}p` : 'raw Node floor', workers: r.processes, label: `raw Node floor (llhttp on raw sockets both ways${r.processes > 1 ? `, ${r.processes} processes` : ''})`, url: `http://127.0.0.1:${r.httpPort}${PATH}`, groups: groupsFor(httpNode, treeOf(r.m.proc.pid!)) });
      if (t === 'container-ip' && httpNode.containerIp) httpTargets.push({ name: t, short: 'container IP', workers: 0, label: `container IP (${httpNode.containerIp}:8080, no docker-proxy)`, url: `http://${httpNode.containerIp}:8080${PATH}`, groups: groupsFor(httpNode, []) });
    }
    for (const t of httpTargets) await checkHttp(t.short, t.url, headersByUrl.get(t.url) ?? httpHeaders);
    const wrkRunner: Runner = (url, kind) => {
      if (berths.some((b) => url.startsWith(b.berth.base))) berthWrkRuns++;
      return wrk(url, kind === 'c1' ? 1 : CONNECTIONS, kind === 'warmup' ? WARMUP : kind === 'c1' ? C1_DURATION : DURATION, headersByUrl.get(url) ?? httpHeaders);
    };
    const httpResults: Measured[][] = []; // per round
    const wrkPhases: Phases = {
      warmup: WARMUP > 0, c1: C1_DURATION > 0,
      describe: (k) => k === 'warmup' ? `${WARMUP}s` : k === 'main' ? `${DURATION}s, ${CONNECTIONS} connections` : `${C1_DURATION}s`,
    };
    for (let round = 1; round <= ROUNDS; round++) {
      if (ROUNDS > 1) log(`HTTP: round ${round} of ${ROUNDS}`);
      const results: Measured[] = [];
      for (const t of httpTargets) results.push(await measure('HTTP', t, wrkRunner, wrkPhases));
      httpResults.push(results);
    }

    // the first Berth, the baseline, nginx with as many workers and the raw Node floor, in 1 s runs taken in turn
    const interleaved: string[] = [];
    const first = httpTargets.find((t) => t.name === 'berth');
    const others = first ? httpTargets.filter((t) => t.name === 'baseline' || ((t.name === 'nginx' || t.name === 'raw-floor') && t.workers === first.workers)) : [];
    if (BURSTS > 0 && first && others.length > 0) {
      interleaved.push(await interleave('HTTP/1.1', `wrk -c${CONNECTIONS}, 1 s`, [first, ...others], (t) => {
        if (t.name === 'berth') berthWrkRuns++; // its abandoned calls are counted too (the 499 check)
        return wrk(t.url, CONNECTIONS, 1, headersByUrl.get(t.url) ?? httpHeaders);
      }));
      log(interleaved[interleaved.length - 1]!);
    }

    // ---- gRPC
    const frame = grpcFrame(GRPC_TEXT);
    const bodyFile = join(work, 'echo-request.bin');
    writeFileSync(bodyFile, frame);
    const grpcHeadersFor = (b: typeof berths[number]): Record<string, string> => ({ 'content-type': 'application/grpc', te: 'trailers', 'x-node-id': b.grpcNode.nodeId, 'x-folder-id': 'default', authorization: `Bearer ${b.berth.token}` });
    const grpcHeaders = grpcHeadersFor(berths[0]!);
    const grpcTargets: Target[] = [];
    for (const t of GRPC_TARGETS) {
      if (t === 'direct') grpcTargets.push({ name: t, short: 'direct', workers: 0, label: `direct (127.0.0.1:${grpcNode.hostPort}, published port)`, url: `http://127.0.0.1:${grpcNode.hostPort}${GRPC_PATH}`, groups: groupsFor(grpcNode, []) });
      if (t === 'berth') {
        for (const b of berths) {
          const url = `${b.berth.base}${GRPC_PATH}`;
          headersByUrl.set(url, grpcHeadersFor(b));
          grpcTargets.push({ name: t, ...berthTarget(b), url, groups: groupsFor(b.grpcNode, berthFront(b)) });
        }
        if (baseline) {
          const url = `${baseline.berth.base}${GRPC_PATH}`;
          headersByUrl.set(url, grpcHeadersFor(baseline));
          grpcTargets.push({ name: 'baseline', short: 'Berth baseline', workers: baseline.gw, label: baselineLabel,
            url, groups: groupsFor(baseline.grpcNode, berthFront(baseline)) });
        }
      }
      if (t === 'nginx') for (const n of nginxes) grpcTargets.push({ name: t, short: `nginx ${n.workers}w`, workers: n.workers, label: `nginx (${nw(n.workers)}, grpc_pass, upstream keepalive)`, url: `http://127.0.0.1:${n.grpcPort}${GRPC_PATH}`, groups: groupsFor(grpcNode, n.pids) });
      if (t === 'node-floor') grpcTargets.push({ name: t, short: 'Node floor', workers: 1, label: 'Node floor (minimal Node proxy, node:http2)', url: `http://127.0.0.1:${floor!.grpcPort}${GRPC_PATH}`, groups: groupsFor(grpcNode, [floor!.m.proc.pid!]) });
      if (t === 'container-ip' && grpcNode.containerIp) grpcTargets.push({ name: t, short: 'container IP', workers: 0, label: `container IP (${grpcNode.containerIp}:50051, no docker-proxy)`, url: `http://${grpcNode.containerIp}:50051${GRPC_PATH}`, groups: groupsFor(grpcNode, []) });
    }
    for (const t of grpcTargets) await checkGrpc(t.short, t.url, headersByUrl.get(t.url) ?? grpcHeaders, frame);
    if (GRPC_TARGETS.includes('berth')) for (const b of berths) await checkGrpcJs(b.berth.base, b.grpcNode.nodeId, b.berth.token);
    log(`gRPC: every target answered grpc-status 0 with the message echoed (manual HTTP/2 request${GRPC_TARGETS.includes('berth') ? '; and grpc-js through Berth' : ''})`);
    const h2log = join(work, 'h2load.log');
    const h2Runner: Runner = (url, kind) => kind === 'c1'
      ? h2load(url, 1, 1, GRPC_C1_REQUESTS, headersByUrl.get(url) ?? grpcHeaders, bodyFile, h2log)
      : h2load(url, GRPC_CLIENTS, GRPC_STREAMS, kind === 'warmup' ? GRPC_WARMUP_REQUESTS : GRPC_REQUESTS, headersByUrl.get(url) ?? grpcHeaders, bodyFile, h2log);
    const grpcResults: Measured[][] = []; // per round
    const h2Phases: Phases = {
      warmup: GRPC_WARMUP_REQUESTS > 0, c1: GRPC_C1_REQUESTS > 0,
      describe: (k) => k === 'warmup' ? `${GRPC_WARMUP_REQUESTS} requests` : k === 'main' ? `${GRPC_REQUESTS} requests, ${GRPC_CLIENTS} clients × ${GRPC_STREAMS} streams` : `${GRPC_C1_REQUESTS} requests`,
    };
    for (let round = 1; round <= ROUNDS; round++) {
      if (ROUNDS > 1) log(`gRPC: round ${round} of ${ROUNDS}`);
      const results: Measured[] = [];
      for (const t of grpcTargets) results.push(await measure('gRPC', t, h2Runner, h2Phases));
      grpcResults.push(results);
    }
    // the same in turn for gRPC: the first Berth, the baseline, nginx with as many workers, the Node floor
    const firstGrpc = grpcTargets.find((t) => t.name === 'berth');
    const othersGrpc = firstGrpc ? grpcTargets.filter((t) => t.name === 'baseline' || t.name === 'node-floor' || (t.name === 'nginx' && t.workers === firstGrpc.workers)) : [];
    if (BURSTS > 0 && firstGrpc && othersGrpc.length > 0) {
      const n = GRPC_BURST_REQUESTS;
      interleaved.push(await interleave('gRPC', `h2load ${GRPC_CLIENTS} clients × ${GRPC_STREAMS} streams, ${n} requests`, [firstGrpc, ...othersGrpc],
        (t) => h2load(t.url, GRPC_CLIENTS, GRPC_STREAMS, n, headersByUrl.get(t.url) ?? grpcHeaders, bodyFile, h2log)));
      log(interleaved[interleaved.length - 1]!);
    }

    // Berth's own count of answers: every HTTP call 200, every gRPC call status 0
    const hc = { http: {} as Record<string, number> };
    const gc = { grpc: {} as Record<string, number> };
    for (const b of berths) {
      const h = await berthCodes(b.berth.base, b.berth.token, b.httpNode.nodeId);
      const g = await berthCodes(b.berth.base, b.berth.token, b.grpcNode.nodeId);
      for (const [c, n] of Object.entries(h.http)) hc.http[c] = (hc.http[c] ?? 0) + n;
      for (const [c, n] of Object.entries(g.grpc)) gc.grpc[c] = (gc.grpc[c] ?? 0) + n;
    }
    const codes = { http: { ...hc.http }, grpc: { ...gc.grpc } };
    // wrk stops with up to -c requests in flight; Berth counts each call its caller abandoned as a 499 (nginx's code)
    // (see docs/benchmarks.md), so that many 499s are expected, and nothing else
    const abandonedMax = berthWrkRuns * CONNECTIONS;
    const badHttp = Object.entries(hc.http).filter(([c, n]) => c !== '200' && !(c === '499' && n <= abandonedMax));
    const badGrpc = Object.keys(gc.grpc).filter((c) => c !== '0');
    if (badHttp.length || badGrpc.length) throw new Error(`Berth counted failures: HTTP ${JSON.stringify(hc.http)} (at most ${abandonedMax} 499s for abandoned calls expected), gRPC ${JSON.stringify(gc.grpc)}`);

    const text = [report(env, httpResults, grpcResults, codes, frame.length), ...interleaved].join('\n\n');
    const outDir = join(ROOT, 'bench', 'results');
    mkdirSync(outDir, { recursive: true });
    const file = join(outDir, `gateway-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
    const strip = (r: Measured): unknown => ({ ...r, main: { ...r.main, raw: undefined }, c1: r.c1 ? { ...r.c1, raw: undefined } : null });
    writeFileSync(file, JSON.stringify({
      env, options: { DURATION, WARMUP, CONNECTIONS, C1_DURATION, GRPC_CLIENTS, GRPC_STREAMS, GRPC_REQUESTS, GRPC_C1_REQUESTS, GRPC_WARMUP_REQUESTS, PATH, HTTP_TARGETS, GRPC_TARGETS, SESSIONS, GATEWAY_WORKERS, ROUNDS },
      http: httpResults.map((r) => r.map(strip)), grpc: grpcResults.map((r) => r.map(strip)), codes, table: text,
    }, null, 2) + '\n');
    console.log('\n' + text + '\n');
    log(`raw numbers: ${file}`);
    ok = true;
  } finally {
    await stopAll();
    if (args.keep || !ok) log(`logs kept in ${work}`);
    else rmSync(work, { recursive: true, force: true });
  }
}

main().catch(async (err) => {
  console.error(`\nBENCHMARK FAILED: ${(err as Error).stack ?? err}`);
  await stopAll();
  process.exit(1);
});
