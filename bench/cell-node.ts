// Benchmark for "Cell nodes end to end": the randomizer served several ways on this machine,
// with the same number P of Python processes each (--processes: P = 1 and P = 2 by default,
// each a part of its own), driven by the same load generator (wrk, one thread, fixed
// connections, same duration), one target at a time:
//   berth              a Berth cell node (`berth up` as a child process, min = max = P instances;
//                      with --gateway-workers N when `berth up --help` lists that flag)
//   uvicorn            `uvicorn --workers P --loop uvloop --http httptools` + FastAPI
//                      (bench/apps/fastapi_app.py; P = 1: uvicorn's single-process mode)
//   uvicorn-reuseport  P uvicorn workers (uvloop + httptools), each with its own SO_REUSEPORT
//                      listener (bench/apps/uvicorn_reuseport.py), so the kernel gives every
//                      worker connections; P = 2 only (with P = 1 it is the same as uvicorn)
//   gunicorn           gunicorn, P sync workers + Flask (bench/apps/flask_app.py; not by default)
//   uvicorn-nodelay    uvicorn through bench/apps/uvicorn_nodelay.py, which only fixes uvicorn's
//                      lost TCP_NODELAY with --workers and asyncio (not by default)
// Every multi-process target's workers are checked: the CPU time each used during the run is
// printed, and a worker that did (almost) nothing is reported as UNBALANCED in the table.
// Reported per target: req/s, calls/s per Python process (what counts when memory, one copy
// of the model per process, limits the replicas), p50, and CPU µs per call of the front
// (Berth's gateway processes; the supervisor elsewhere) and of the Python workers, with
// ratios against Berth, all from one run. --rounds R measures every target R times, round after
// round; each ratio is then the median of the rounds' own, with their range, and the goals are
// judged on the medians (bench/lib.ts spread; a target's own figures: its median round).
// Also: Berth's added latency over its worker (a framed-protocol client straight to a worker of
// the same checkpoint, on the same transport as Berth's, vs. a raw HTTP/1.1 client to the gateway,
// both at concurrency 1, interleaved in blocks), and the time from POST /v1/nodes to status Healthy.
// The direct worker is one the bench starts itself: Berth's instances take only their own secret.
//
//   node --import tsx bench/cell-node.ts          (= npm run bench:cell; about 5-6 minutes)
//     [--duration 10] [--warmup 2] [--connections 16] [--c1-duration 5] [--direct-calls 2000]
//     [--processes 1,2] [--gateway-workers 1,2]   (Python processes per target; Berth gateway workers)
//     [--rounds 1]     (every target this many times, round after round)
//     [--targets berth,uvicorn,uvicorn-reuseport]   (run order; must include berth; also gunicorn, uvicorn-nodelay,
//                      raw-floor: bench/cell-raw-proxy.mjs, the leanest Node front for a cell worker, in the interleaved runs only)
//     [--attempts 3]   (a target disturbed by other processes on the machine is measured again)
//     [--quiet-wait 120]   (seconds to wait, at most, for other processes to leave the machine quiet)
//     [--keep]         (keep the temporary directory: Berth's home, every server's log)
//     [--worker-transport unix|tcp]   (how Berth reaches its cell workers; default $BERTH_WORKER_TRANSPORT or unix)
//     [--berth-node-args='--cpu-prof --cpu-prof-dir=/tmp/prof']   (extra Node flags for berth up)
//     [--bursts 20]    (then Berth, the baseline, uvicorn and the raw floor up at once, in 1 s runs taken in turn, this many each; 0: none)
//     [--baseline /path/to/another/checkout]   (that build too, in the interleaved runs)
//
// Prints markdown tables at the end; writes the raw numbers to bench/results/ (ignored by git).
// Fails (exit 1) if any target answers anything but 200 or wrk sees socket errors, and stops
// every process it started on every exit path.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import {
  CLK_TCK, ROOT, WRK, alive, baselineCheckout, berthCommand, assertClean, childrenOf, cpuModel, cpuSpeeds, showSpeeds, SPEEDS_NOTE, cpuSnapshot, cpuUse, freePort, gitHead, http as httpRequest, loadGenerators,
  loadRun as timedRun, log, managed, medianRounds, memGiB, onSignals, percentile, posInt, readLog, showSpread, signalGroup, sleep, spread, start as startProcess,
  stop as stopProcess, treeOf, waitQuiet as waitQuietFor, wrk as wrkRun, type CpuGroups, type CpuUse, type Managed, type Spread, type WrkResult,
} from './lib.js';

const APPS = join(ROOT, 'bench', 'apps');
const LUA = join(ROOT, 'bench', 'post.lua');
const RAW_PROXY = join(ROOT, 'bench', 'cell-raw-proxy.mjs');
const PYTHON = '/usr/bin/python3';
/** Python processes per target in the current part (--processes lists them). */
let PROCESSES = 2;
const BODY = JSON.stringify({ folder_id: 'default', input: { input_data: { left_bound: 1, right_bound: 10 } } });
const EXEC_PATH = '/datasphere/v1/nodes/NODE:execute'; // baselines: same shape, NODE is ignored

const { values: args } = parseArgs({
  options: {
    duration: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '2' },
    connections: { type: 'string', default: '16' },
    'c1-duration': { type: 'string', default: '5' },
    'direct-calls': { type: 'string', default: '2000' },
    keep: { type: 'boolean', default: false },
    targets: { type: 'string', default: 'berth,uvicorn,uvicorn-reuseport' },
    processes: { type: 'string', default: '1,2' },
    'gateway-workers': { type: 'string', default: '1,2' },
    'berth-node-args': { type: 'string', default: '' },
    attempts: { type: 'string', default: '3' },
    'quiet-wait': { type: 'string', default: '120' },
    rounds: { type: 'string', default: '1' },
    'worker-transport': { type: 'string', default: process.env.BERTH_WORKER_TRANSPORT ?? 'unix' },
    // then, per part, this many 1 s runs of each of Berth (the first --gateway-workers), the baseline, the
    // first uvicorn target and the raw floor, all up at once, in turn: every side sees the machine's same minutes
    bursts: { type: 'string', default: '20' },
    // another checkout of Berth (a git worktree of an earlier commit), measured in the interleaved runs
    baseline: { type: 'string', default: '' },
  },
});
const WORKER_TRANSPORT = args['worker-transport']!;
if (WORKER_TRANSPORT !== 'unix' && WORKER_TRANSPORT !== 'tcp') throw new Error(`--worker-transport: unix or tcp, got ${WORKER_TRANSPORT}`);
const DURATION = posInt(args.duration!, 'duration', 1, 600);
const WARMUP = posInt(args.warmup!, 'warmup', 0, 600);
const CONNECTIONS = posInt(args.connections!, 'connections', 1, 1024);
const C1_DURATION = posInt(args['c1-duration']!, 'c1-duration', 0, 600);
const DIRECT_CALLS = posInt(args['direct-calls']!, 'direct-calls', 100, 1_000_000);
const ALL_TARGETS = ['berth', 'gunicorn', 'uvicorn', 'uvicorn-reuseport', 'uvicorn-nodelay', 'raw-floor'];
const TARGETS = args.targets!.split(',').map((t) => t.trim()).filter(Boolean);
for (const t of TARGETS) if (!ALL_TARGETS.includes(t)) throw new Error(`--targets: unknown target ${t}; known: ${ALL_TARGETS.join(',')}`);
if (!TARGETS.includes('berth')) throw new Error('--targets must include berth (the others are compared with it)');
const intList = (v: string, name: string, max: number): number[] => [...new Set(v.split(',').map((t) => posInt(t.trim(), name, 1, max)))];
const PROCESS_MODES = intList(args.processes!, 'processes', 16);
const GATEWAY_WORKERS = intList(args['gateway-workers']!, 'gateway-workers', 64);
const ROUNDS = posInt(args.rounds!, 'rounds', 1, 20);
const BURSTS = posInt(args.bursts!, 'bursts', 0, 1000);
const BASELINE = baselineCheckout(args.baseline);
/** Python modules the baselines need (Debian packages in the message). */
const PY_PREREQS: Record<string, string> = { fastapi: 'python3-fastapi', uvicorn: 'python3-uvicorn', uvloop: 'python3-uvloop', httptools: 'python3-httptools' };
/** Background load (cores) under which the machine counts as quiet, and how long to wait for it. */
const QUIET_CORES = 0.2;
const QUIET_WAIT_S = posInt(args['quiet-wait']!, 'quiet-wait', 0, 3600);
/** A measurement during which other processes used more cores than this is repeated... */
const OTHER_MAX = 0.25;
/** ...at most this many times in all. */
const MAX_ATTEMPTS = posInt(args.attempts!, 'attempts', 1, 20);
/** Extra Node flags for `berth up`, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof" to profile the gateway. */
const BERTH_NODE_ARGS = args['berth-node-args']!.split(' ').filter(Boolean);

// ---------------------------------------------------------------------------
// Processes we start: every one in its own process group, all stopped on any exit path.

/** Berth's worker pids: Berth stops them itself; checked again at the end, by pid. */
const workerPids = new Set<number>();
/** This run's temporary directory (Berth's home, server logs): removed unless the run failed or --keep. */
let workDir: string | null = null;

/**
 * Starts a server in its own process group. Its output goes straight to `logFile` (the cell
 * prints every call), block-buffered: Python's default for a file, one write per 8 KB, the
 * baselines' cheapest (Berth's workers write theirs at most every 10 ms under load); with
 * `pipe`, through this process instead, to read it (Berth's own stdout only: a few lifecycle lines).
 */
function start(name: string, cmd: string, argv: string[], logFile: string, env: Record<string, string> = {}, pipe = false): Managed {
  return startProcess(name, cmd, argv, logFile, { PYTHONUNBUFFERED: '', ...env }, pipe); // '' is unset for Python
}

async function stop(m: Managed, graceMs = 15_000): Promise<void> {
  await stopProcess(m, graceMs);
  killStrayWorkers();
  m.log?.end();
}

function killStrayWorkers(): void {
  for (const pid of workerPids) {
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (cmdline.includes('berth_worker')) process.kill(pid, 'SIGKILL');
    } catch { /* gone */ }
    workerPids.delete(pid);
  }
}

async function stopAll(): Promise<void> {
  for (const c of loadGenerators) signalGroup(c.pid, 'SIGKILL');
  await Promise.all(managed.map((m) => stop(m)));
}

process.on('exit', () => {
  for (const c of loadGenerators) signalGroup(c.pid, 'SIGKILL');
  for (const m of managed) if (alive(m)) signalGroup(m.proc.pid, 'SIGKILL');
  killStrayWorkers();
});
onSignals(stopAll, () => { if (workDir) rmSync(workDir, { recursive: true, force: true }); });

// ---------------------------------------------------------------------------
// Small helpers

/** A request with an optional admin token; a string body is sent as is. */
function http(method: string, url: string, body?: unknown, token?: string, timeoutMs = 10_000): Promise<{ status: number; json: any; text: string }> {
  return httpRequest(method, url, body, token ? { authorization: `Bearer ${token}` } : {}, timeoutMs);
}

/** A correct answer: 200 and {"output":{"output_data":{"generated_value": 1..10}}}. */
function checkAnswer(name: string, status: number, json: any, text: string): void {
  const v = json?.output?.output_data?.generated_value;
  if (status !== 200 || !Number.isInteger(v) || v < 1 || v > 10) {
    throw new Error(`${name} answered ${status} ${text.slice(0, 300)}; expected 200 {"output":{"output_data":{"generated_value":1..10}}}`);
  }
}

async function waitReady(name: string, url: string, m: Managed, token?: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (let i = 0; i < 10_000 && Date.now() < deadline; i++) {
    if (!alive(m)) throw new Error(`${name} exited before it answered (see its log)`);
    try {
      const r = await http('POST', url, BODY, token, 2000);
      checkAnswer(name, r.status, r.json, r.text);
      return;
    } catch (err) { last = (err as Error).message; }
    await sleep(100);
  }
  throw new Error(`${name} did not answer correctly within ${timeoutMs / 1000}s: ${last}`);
}

// ---------------------------------------------------------------------------
// The quiet-machine wait, wrk

/** Waits (up to QUIET_WAIT_S) until other processes leave the machine quiet. */
const waitQuiet = (label: string): Promise<number> => waitQuietFor(label, { cores: QUIET_CORES, waitS: QUIET_WAIT_S });

function wrk(url: string, connections: number, seconds: number, auth: string | null): Promise<WrkResult> {
  return wrkRun(LUA, url, connections, seconds, { BENCH_BODY: BODY, BENCH_AUTH: auth ?? '' });
}

// ---------------------------------------------------------------------------
// Raw clients for the added-latency measurement: one socket each, one call at a time,
// no framework on the client side, so the difference is Berth's and not the client's.

class RawClient {
  private buf: Buffer = Buffer.alloc(0);
  private pending: { resolve: (b: Buffer) => void; reject: (e: Error) => void; timer: NodeJS.Timeout } | null = null;

  private constructor(private readonly sock: Socket, private readonly parse: (buf: Buffer) => { frame: Buffer; used: number } | null) {
    sock.setNoDelay(true);
    sock.on('data', (d) => this.onData(d));
    sock.on('error', (e) => this.fail(e));
    sock.on('close', () => this.fail(new Error('connection closed')));
  }

  static open(target: { path: string } | { port: number }, parse: RawClient['parse']): Promise<RawClient> {
    return new Promise((res, rej) => {
      const sock = 'path' in target ? connect(target.path) : connect(target.port, '127.0.0.1');
      const t = setTimeout(() => { sock.destroy(); rej(new Error('connect timeout')); }, 5000);
      sock.once('connect', () => { clearTimeout(t); sock.removeAllListeners('error'); res(new RawClient(sock, parse)); });
      sock.once('error', (e) => { clearTimeout(t); rej(e); });
    });
  }

  call(request: Buffer, timeoutMs = 5000): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.fail(new Error('call timeout')), timeoutMs);
      this.pending = { resolve, reject, timer };
      this.sock.write(request);
    });
  }

  close(): void { this.sock.destroy(); }

  private onData(d: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    const r = this.parse(this.buf);
    if (!r) return;
    this.buf = this.buf.subarray(r.used);
    const p = this.pending;
    this.pending = null;
    if (p) { clearTimeout(p.timer); p.resolve(r.frame); }
  }

  private fail(e: Error): void {
    const p = this.pending;
    this.pending = null;
    if (p) { clearTimeout(p.timer); p.reject(e); }
  }
}

/** Worker protocol: u32 BE length | u8 type | payload. Returns type byte + payload. */
function parseFrame(buf: Buffer): { frame: Buffer; used: number } | null {
  if (buf.length < 5) return null;
  const len = buf.readUInt32BE(0);
  if (buf.length < 5 + len) return null;
  return { frame: buf.subarray(4, 5 + len), used: 5 + len };
}

/** HTTP/1.1 response with Content-Length (Berth always sends one). Returns "status body". */
function parseHttp(buf: Buffer): { frame: Buffer; used: number } | null {
  const end = buf.indexOf('\r\n\r\n');
  if (end === -1) return null;
  const head = buf.toString('latin1', 0, end);
  const m = /\r\ncontent-length:\s*(\d+)/i.exec(head);
  if (!m) throw new Error(`response without content-length: ${head}`);
  const len = Number(m[1]);
  if (buf.length < end + 4 + len) return null;
  const status = head.slice(9, 12);
  return { frame: Buffer.concat([Buffer.from(status + ' '), buf.subarray(end + 4, end + 4 + len)]), used: end + 4 + len };
}

interface LatencyStats { calls: number; p50_us: number; p90_us: number; p99_us: number; mean_us: number; min_us: number }

function stats(samples: number[]): LatencyStats {
  const s = [...samples].sort((a, b) => a - b);
  return {
    calls: s.length,
    p50_us: percentile(s, 50), p90_us: percentile(s, 90), p99_us: percentile(s, 99),
    mean_us: s.reduce((a, b) => a + b, 0) / s.length, min_us: s[0]!,
  };
}

/**
 * A worker of the randomizer checkpoint started by the bench (unsandboxed, as Berth's own
 * worker code), on the transport Berth uses, with a secret the bench knows; connected and
 * past the handshake.
 */
async function directWorker(work: string, home: string, base: string, token: string, name = 'direct'): Promise<{ client: RawClient; m: Managed; socketPath: string; secret: string }> {
  const cp = await http('GET', `${base}/v1/checkpoints/randomizer-checkpoint`, undefined, token);
  if (cp.status !== 200) throw new Error(`checkpoint get: ${cp.status} ${cp.text}`);
  const secret = randomBytes(32).toString('hex');
  const socketPath = join(work, `${name}.sock`);
  const portFile = join(work, `${name}.port`);
  rmSync(portFile, { force: true });
  const config = {
    ...(WORKER_TRANSPORT === 'tcp' ? { listen: { tcp: { host: '127.0.0.1', port: 0 } }, portFile } : { socket: socketPath }),
    secret, checkpoint: join(home, 'checkpoints', `${cp.json.id}.dill`), code: cp.json.code, requires: cp.json.requires,
    inputs: [{ name: 'input_data', type: 'dict' }], outputs: [{ name: 'output_data', type: 'dict' }],
  };
  const m = start(`${name} worker`, PYTHON, ['-u', '-c', `import sys; sys.path.insert(0, ${JSON.stringify(join(ROOT, 'python'))}); import berth_worker; berth_worker.main()`],
    join(work, `${name}-worker.log`), { BERTH_WORKER_CONFIG: JSON.stringify(config) });
  const hello = Buffer.alloc(5 + secret.length);
  hello.writeUInt32BE(secret.length, 0);
  hello[4] = 0x03; // HELLO
  hello.write(secret, 5);
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      const target = WORKER_TRANSPORT === 'tcp' ? { port: Number(readFileSync(portFile, 'utf8')) } : { path: socketPath };
      const client = await RawClient.open(target, parseFrame);
      const welcome = await client.call(hello);
      if (welcome[0] !== 0x85) throw new Error(`handshake answered 0x${welcome[0]!.toString(16)}`);
      // wait until it has restored the checkpoint (PONG state ready)
      const ping = Buffer.from([0, 0, 0, 0, 0x02]);
      for (;;) {
        const pong = await client.call(ping);
        if (JSON.parse(pong.subarray(1).toString()).state === 'ready') return { client, m, socketPath, secret };
        if (Date.now() > deadline) throw new Error('the direct worker did not get ready');
        await sleep(20);
      }
    } catch (err) {
      if (Date.now() > deadline) { await stop(m); throw err; }
      await sleep(20);
    }
  }
}

async function addedLatency(work: string, home: string, base: string, port: number, nodeId: string, token: string): Promise<{ direct: LatencyStats; gateway: LatencyStats }> {
  const payload = Buffer.from(BODY);
  const header = Buffer.alloc(5);
  header.writeUInt32BE(payload.length, 0);
  header[4] = 0x01; // EXECUTE
  const frameReq = Buffer.concat([header, payload]);
  const httpReq = Buffer.from(
    `POST /datasphere/v1/nodes/${nodeId}:execute HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n` +
    `Authorization: Bearer ${token}\r\nContent-Type: application/json\r\nContent-Length: ${payload.length}\r\n\r\n` + BODY);

  const { client: direct, m: directProc } = await directWorker(work, home, base, token);
  const gateway = await RawClient.open({ port }, parseHttp);
  const checkDirect = (f: Buffer): void => {
    if (f[0] !== 0x81) throw new Error(`worker answered frame type 0x${f[0]!.toString(16)}: ${f.subarray(1).toString()}`);
  };
  const checkGateway = (f: Buffer): void => {
    if (!f.subarray(0, 4).equals(Buffer.from('200 '))) throw new Error(`gateway answered ${f.toString().slice(0, 300)}`);
  };
  const d: number[] = [];
  const g: number[] = [];
  const deadline = Date.now() + 120_000;
  try {
    for (let i = 0; i < 300; i++) { checkDirect(await direct.call(frameReq)); checkGateway(await gateway.call(httpReq)); } // warm-up
    // blocks of 250 calls, alternating, so drift (timers, GC, the other instance) hits both alike
    const block = 250;
    for (let done = 0; done < DIRECT_CALLS && Date.now() < deadline; done += block) {
      for (let i = 0; i < block; i++) {
        const t = performance.now();
        checkDirect(await direct.call(frameReq));
        d.push((performance.now() - t) * 1000);
      }
      for (let i = 0; i < block; i++) {
        const t = performance.now();
        checkGateway(await gateway.call(httpReq));
        g.push((performance.now() - t) * 1000);
      }
    }
  } finally {
    direct.close();
    gateway.close();
    await stop(directProc);
  }
  return { direct: stats(d), gateway: stats(g) };
}

// ---------------------------------------------------------------------------
// The targets

interface TargetResult {
  name: string;
  server: string;
  load: WrkResult;
  c1: WrkResult | null;
  cpu: CpuUse;
  c1Cpu: CpuUse | null;
  /** cores other processes used just before this target started */
  idleLoad: number;
  /** ns per probe iteration on each CPU just before the run (lib.ts cpuSpeeds) */
  speeds: number[];
  attempts: number;
  /** other processes took more than OTHER_MAX cores even on the last attempt */
  disturbed: boolean;
  /** Python processes serving */
  processes: number;
  /** a worker that got (almost) no work during the loaded run, named; null when all did */
  unbalanced: string | null;
}

/** One wrk run with the CPU each party used during it. */
function loadRun(name: string, url: string, connections: number, seconds: number, auth: string | null, groups: CpuGroups): Promise<{ r: WrkResult; cpu: CpuUse }> {
  return timedRun(groups, () => wrk(url, connections, seconds, auth), (r) => assertClean(name, r));
}

/**
 * Warm-up, the measured run at CONNECTIONS, then one at a single connection. If other
 * processes on the machine took more than OTHER_MAX cores meanwhile, the whole
 * measurement is repeated (at most MAX_ATTEMPTS times; the last one is kept, flagged).
 */
async function measure(name: string, server: string, url: string, groups: CpuGroups, auth: string | null): Promise<TargetResult> {
  let result: TargetResult | null = null;
  for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
    const idleLoad = await waitQuiet(name);
    const speeds = cpuSpeeds(name);
    log(`${name}: warm-up ${WARMUP}s, ${CONNECTIONS} connections`);
    if (WARMUP > 0) assertClean(`${name} (warm-up)`, await wrk(url, CONNECTIONS, WARMUP, auth));
    log(`${name}: measuring ${DURATION}s, ${CONNECTIONS} connections`);
    const main = await loadRun(name, url, CONNECTIONS, DURATION, auth, groups);
    log(`${name}: ${main.r.rps.toFixed(0)} req/s, p50 ${(main.r.latency_us.p50 / 1000).toFixed(2)} ms, p99 ${(main.r.latency_us.p99 / 1000).toFixed(2)} ms; ` +
      `CPU cores ${Object.entries(main.cpu).filter(([k]) => !k.includes(':')).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ')}`);
    let c1: { r: WrkResult; cpu: CpuUse } | null = null;
    if (C1_DURATION > 0) {
      log(`${name}: measuring ${C1_DURATION}s, 1 connection`);
      c1 = await loadRun(`${name} (1 connection)`, url, 1, C1_DURATION, auth, groups);
    }
    const other = Math.max(main.cpu.other!, c1?.cpu.other ?? 0);
    const unbalanced = checkWorkers(name, main.cpu, groups.workers ?? []);
    result = { name, server, load: main.r, c1: c1?.r ?? null, cpu: main.cpu, c1Cpu: c1?.cpu ?? null, idleLoad, speeds, attempts: attempt, disturbed: other > OTHER_MAX, processes: PROCESSES, unbalanced };
    if (!result.disturbed) break;
    log(`${name}: other processes used ${other.toFixed(2)} cores during the measurement` +
      (attempt < MAX_ATTEMPTS ? `; measuring again (attempt ${attempt + 1} of ${MAX_ATTEMPTS})` : '; keeping it, flagged'));
  }
  return result!;
}

/**
 * Each worker's CPU during the loaded run, printed; a worker under a tenth of the busiest
 * one's got (almost) no connections, which makes the comparison unfair: say so.
 */
function checkWorkers(name: string, cpu: CpuUse, pids: number[]): string | null {
  const each = pids.map((pid, i) => ({ pid, cores: cpu[`w:${i}`] ?? 0 }));
  log(`${name}: CPU per Python worker during the run (cores): ${each.map((w) => `pid ${w.pid} ${w.cores.toFixed(2)}`).join(', ')}`);
  if (each.length < 2) return null;
  const top = Math.max(...each.map((w) => w.cores));
  const idle = each.filter((w) => w.cores < top / 10);
  if (idle.length === 0) return null;
  const msg = `worker${idle.length > 1 ? 's' : ''} ${idle.map((w) => `pid ${w.pid} (${w.cores.toFixed(2)} cores)`).join(', ')} got (almost) no connections`;
  log(`${name}: WARNING: ${msg}`);
  return msg;
}

interface BerthExtras {
  checkpointSeconds: number;
  healthySeconds: number;
  healthySecondsServer: number | null;
  /** cores other processes used just before the node was created */
  createIdleLoad: number;
  added: { direct: LatencyStats; gateway: LatencyStats };
  addedIdleLoad: number;
  addedCpu: CpuUse;
  httpCodes: Record<string, number>;
}

/** A running Berth with the randomizer node at PROCESSES instances, answering. */
interface BerthUp {
  m: Managed; base: string; port: number; token: string; home: string; nodeId: string; url: string;
  instances: Array<{ endpoint: string; pid: number }>;
  /** berth up's process tree but its Python workers' (gateway workers too, once there are any) */
  gateway: number[];
  /** the Python workers */
  pids: number[];
  checkpointSeconds: number; healthySeconds: number; healthySecondsServer: number | null; createIdleLoad: number;
}

/** Starts `berth up` (this checkout's build, or `root`'s) and the randomizer node on it; returns once a call is answered. */
async function launchBerth(work: string, gatewayWorkers: number, tag: string, root?: string): Promise<BerthUp> {
  const home = join(work, `berth-home-${tag}`);
  const [nodeBin, ...cli] = berthCommand(BERTH_NODE_ARGS, root);
  const m = start('berth', nodeBin!, [...cli, 'up', '--port', '0', '--home', home, '--worker-transport', WORKER_TRANSPORT, '--gateway-workers', String(gatewayWorkers)],
    join(work, `berth-${tag}.log`), { BERTH_PYTHON: PYTHON }, true);
  let out = '';
  m.proc.stdout!.on('data', (d) => { out += d; });
  const base = await new Promise<string>((res, rej) => {
    const t = setTimeout(() => rej(new Error(`berth up did not print its address within 60s:\n${out}`)), 60_000);
    const check = (): void => {
      const mm = /Berth listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(out);
      if (mm) { clearTimeout(t); res(mm[1]!); }
    };
    m.proc.stdout!.on('data', check);
    m.proc.once('exit', (code) => { clearTimeout(t); rej(new Error(`berth up exited with ${code}:\n${out}\n${readLog(join(work, `berth-${tag}.log`))}`)); });
  });
  const port = Number(new URL(base).port);
  const token = readFileSync(join(home, 'admin-token'), 'utf8').trim();
  log(`berth: listening on ${base}`);

  let t = performance.now();
  const cp = await http('POST', `${base}/v1/checkpoints`, { script: readFileSync(join(ROOT, 'examples/randomizer.py'), 'utf8'), name: 'randomizer-checkpoint' }, token, 120_000);
  if (cp.status !== 201) throw new Error(`checkpoint create: ${cp.status} ${cp.text}`);
  const checkpointSeconds = (performance.now() - t) / 1000;

  const createIdleLoad = await waitQuiet('berth node create');
  t = performance.now();
  const created = await http('POST', `${base}/v1/nodes`, {
    name: 'randomizer-node', checkpointId: 'randomizer-checkpoint',
    inputs: [{ name: 'input_data', type: 'dict' }], outputs: [{ name: 'output_data', type: 'dict' }],
    scaling: { minInstances: PROCESSES, maxInstances: PROCESSES },
  }, token);
  if (created.status !== 201) throw new Error(`node create: ${created.status} ${created.text}`);
  const nodeId = created.json.id as string;
  let node: any = null;
  const deadline = Date.now() + 120_000;
  for (let i = 0; i < 20_000 && Date.now() < deadline; i++) {
    const r = await http('GET', `${base}/v1/nodes/${nodeId}`, undefined, token);
    if (r.status !== 200) throw new Error(`node get: ${r.status} ${r.text}`);
    for (const inst of r.json.instances ?? []) if (inst.pid) workerPids.add(inst.pid);
    if (r.json.status === 'Healthy') { node = r.json; break; }
    await sleep(20);
  }
  const healthySeconds = (performance.now() - t) / 1000;
  if (!node) throw new Error(`node ${nodeId} did not become Healthy within 120s`);
  const healthyAt = (node.transitions as Array<{ status: string; at: string }>).find((x) => x.status === 'Healthy')?.at;
  const healthySecondsServer = healthyAt ? (Date.parse(healthyAt) - Date.parse(node.createdAt)) / 1000 : null;
  log(`berth: node ${nodeId} Healthy ${healthySeconds.toFixed(3)}s after create (server-side ${healthySecondsServer}s)`);
  const instances = (node.instances as Array<{ status: string; endpoint: string; pid: number }>).filter((i) => i.status === 'Healthy');
  if (instances.length !== PROCESSES) throw new Error(`expected ${PROCESSES} Healthy instances, got ${JSON.stringify(node.instances)}`);
  const pids = instances.map((i) => i.pid);

  const url = `${base}/datasphere/v1/nodes/${nodeId}:execute`;
  await waitReady('berth', url, m, token);
  const workerTrees = new Set(pids.flatMap((p) => treeOf(p)));
  const gateway = treeOf(m.proc.pid!).filter((p) => !workerTrees.has(p));
  return { m, base, port, token, home, nodeId, url, instances, gateway, pids, checkpointSeconds, healthySeconds, healthySecondsServer, createIdleLoad };
}

async function benchBerth(work: string, gatewayWorkers: number, round: number): Promise<{ result: TargetResult; extras: BerthExtras }> {
  const name = `berth (${gatewayWorkers} gateway worker${gatewayWorkers > 1 ? 's' : ''})`;
  // a fresh Berth (home, log) each round
  const { m, base, port, token, home, nodeId, url, instances, gateway, pids, checkpointSeconds, healthySeconds, healthySecondsServer, createIdleLoad } =
    await launchBerth(work, gatewayWorkers, `p${PROCESSES}-g${gatewayWorkers}-r${round}`);
  const result = await measure(name, `berth up (the built CLI, Node ${process.version}, --gateway-workers ${gatewayWorkers}) + ${PROCESSES} Python worker${PROCESSES > 1 ? 's' : ''}`, url,
    { gateway, workers: pids }, `Bearer ${token}`);

  log(`berth: added latency, ${DIRECT_CALLS} calls each, direct to ${instances[0]!.endpoint} vs gateway, concurrency 1`);
  let added!: { direct: LatencyStats; gateway: LatencyStats };
  let addedIdleLoad = 0;
  let addedCpu!: CpuUse;
  for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
    addedIdleLoad = await waitQuiet('berth added latency');
    const groups = { gateway, workers: pids };
    const a = cpuSnapshot(groups);
    const benchCpu = process.cpuUsage();
    added = await addedLatency(work, home, base, port, nodeId, token);
    const used = process.cpuUsage(benchCpu);
    addedCpu = cpuUse(a, cpuSnapshot(groups), 0, (used.user + used.system) / 1e6);
    log(`berth: direct p50 ${added.direct.p50_us.toFixed(0)} µs, gateway p50 ${added.gateway.p50_us.toFixed(0)} µs; ` +
      `other processes ${addedCpu.other!.toFixed(2)} cores`);
    if (addedCpu.other! <= OTHER_MAX) break;
    if (attempt < MAX_ATTEMPTS) log(`berth: added latency disturbed by other processes; measuring again (attempt ${attempt + 1} of ${MAX_ATTEMPTS})`);
  }

  // Berth's own count of answers by status code, as a cross-check of wrk's
  const metrics = await http('GET', `${base}/metrics`, undefined, token);
  const httpCodes: Record<string, number> = {};
  for (const line of metrics.text.split('\n')) {
    const mm = /^node_http_codes\{node_id="([^"]+)",code="(\d+)"\} (\d+)/.exec(line);
    if (mm && mm[1] === nodeId) httpCodes[mm[2]!] = Number(mm[3]);
  }
  const non200 = Object.entries(httpCodes).filter(([c]) => c !== '200');
  if (non200.length) throw new Error(`berth answered non-200 codes: ${JSON.stringify(httpCodes)}`);

  await stop(m);
  return { result, extras: { checkpointSeconds, healthySeconds, healthySecondsServer, createIdleLoad, added, addedIdleLoad, addedCpu, httpCodes } };
}

async function benchGunicorn(work: string): Promise<TargetResult> {
  const port = await freePort();
  const m = start('gunicorn', PYTHON, ['-m', 'gunicorn', '-w', String(PROCESSES), '-k', 'sync', '-b', `127.0.0.1:${port}`,
    '--chdir', APPS, 'flask_app:app'], join(work, `gunicorn-p${PROCESSES}.log`));
  const url = `http://127.0.0.1:${port}${EXEC_PATH}`;
  await waitReady('gunicorn', url, m);
  const master = m.proc.pid!;
  const workers = childrenOf(master);
  if (workers.length !== PROCESSES) throw new Error(`gunicorn has ${workers.length} workers, expected ${PROCESSES}`);
  const r = await measure('gunicorn+flask', `gunicorn ${PROCESSES} sync workers + Flask`, url, { gateway: [master], workers }, null);
  await stop(m);
  return r;
}

type UvicornVariant = 'uvicorn' | 'uvicorn-nodelay' | 'uvicorn-reuseport';

/** A running uvicorn target, answering: its supervisor (none with one process) and its workers. */
interface UvicornUp { m: Managed; name: string; how: string; url: string; groups: CpuGroups }

async function launchUvicorn(work: string, variant: UvicornVariant): Promise<UvicornUp> {
  const port = await freePort();
  // uvicorn: `python3 -m uvicorn --workers P --loop uvloop --http httptools` (all workers accept from one
  // shared socket); nodelay: the same CLI through bench/apps/uvicorn_nodelay.py (fixes the listener's lost
  // TCP_NODELAY, see there); reuseport: bench/apps/uvicorn_reuseport.py, one SO_REUSEPORT listener per worker
  const loop = ['--loop', 'uvloop', '--http', 'httptools'];
  const argv = variant === 'uvicorn-reuseport'
    ? [join(APPS, 'uvicorn_reuseport.py'), '--workers', String(PROCESSES), '--host', '127.0.0.1', '--port', String(port), '--app-dir', APPS, 'fastapi_app:app']
    : [...(variant === 'uvicorn-nodelay' ? [join(APPS, 'uvicorn_nodelay.py')] : ['-m', 'uvicorn']), '--workers', String(PROCESSES), ...loop,
      '--host', '127.0.0.1', '--port', String(port), '--no-access-log', '--app-dir', APPS, 'fastapi_app:app'];
  const name = `${variant}+fastapi [uvloop+httptools]`;
  const m = start(name, PYTHON, argv, join(work, `${variant}-p${PROCESSES}.log`));
  const url = `http://127.0.0.1:${port}${EXEC_PATH}`;
  await waitReady(name, url, m);
  const parent = m.proc.pid!;
  // the supervisor's children: the workers (and multiprocessing's resource tracker, if any);
  // uvicorn with one worker serves from its own process, without a supervisor
  const children = childrenOf(parent).filter((p) => !readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('resource_tracker'));
  const single = variant !== 'uvicorn-reuseport' && PROCESSES === 1;
  const workers = single ? [parent] : children;
  if (workers.length !== PROCESSES) throw new Error(`${name} has ${workers.length} workers, expected ${PROCESSES}`);
  const how = variant === 'uvicorn-reuseport' ? `${PROCESSES} uvicorn workers, one SO_REUSEPORT listener each` : `uvicorn --workers ${PROCESSES}`;
  return { m, name, how: `${how} --loop uvloop --http httptools + FastAPI${variant === 'uvicorn-nodelay' ? ', TCP_NODELAY fixed' : ''}`, url, groups: { gateway: single ? [] : [parent], workers } };
}

async function benchUvicorn(work: string, variant: UvicornVariant): Promise<TargetResult> {
  const u = await launchUvicorn(work, variant);
  const r = await measure(u.name, u.how, u.url, u.groups, null);
  await stop(u.m);
  return r;
}

// ---------------------------------------------------------------------------
// Interleaved: targets up side by side, 1 s runs taken in turn

/** One target's sums over its interleaved runs. */
interface Interleaved { name: string; calls: number; seconds: number; frontUs: number; workersUs: number; frontRw: number; p50s: number[]; processes: number }

/**
 * Berth (the first gateway-worker count), the baseline build, uvicorn and the raw floor (those of them
 * asked for), all up at once,
 * in 1 s wrk runs taken in turn, --bursts of each: the machine's speed drifts over minutes
 * (docs/benchmarks.md, "Two speeds"), so runs seconds apart compare what runs far apart cannot.
 * CPU per call from each one's processes, summed over its runs; p50: the median of its runs'.
 */
async function interleaved(work: string): Promise<string> {
  const targets: Array<{ name: string; url: string; auth: string | null; groups: CpuGroups; m: Managed }> = [];
  let floorWorker: Managed | null = null;
  try {
    const g = GATEWAY_WORKERS[0]!;
    const b = await launchBerth(work, g, `p${PROCESSES}-g${g}-interleaved`);
    targets.push({ name: `berth (${g} gateway worker${g > 1 ? 's' : ''})`, url: b.url, auth: `Bearer ${b.token}`, groups: { gateway: b.gateway, workers: b.pids }, m: b.m });
    if (BASELINE) {
      const base = await launchBerth(work, g, `p${PROCESSES}-g${g}-baseline`, BASELINE);
      targets.push({ name: `Berth baseline (${BASELINE} at ${gitHead(BASELINE)})`, url: base.url, auth: `Bearer ${base.token}`, groups: { gateway: base.gateway, workers: base.pids }, m: base.m });
    }
    if (TARGETS.includes('raw-floor')) {
      if (PROCESSES !== 1 || WORKER_TRANSPORT !== 'unix') log('raw-floor: one Python process over a Unix socket only; skipped in this part');
      else {
        // a worker of the same checkpoint, started by the bench (direct to it: the floor holds its secret)
        const w = await directWorker(work, b.home, b.base, b.token, 'floor');
        w.client.close();
        const port = await freePort();
        const m = start('raw-floor', process.execPath, [RAW_PROXY, String(port), w.socketPath, w.secret], join(work, 'raw-floor.log'));
        const url = `http://127.0.0.1:${port}${EXEC_PATH}`;
        await waitReady('raw-floor', url, m);
        targets.push({ name: 'raw Node floor (llhttp, frames to the worker, groups of 4)', url, auth: null, groups: { gateway: [m.proc.pid!], workers: [w.m.proc.pid!] }, m });
        floorWorker = w.m;
      }
    }
    const uv = TARGETS.find((t): t is UvicornVariant => t.startsWith('uvicorn') && !(t === 'uvicorn-reuseport' && PROCESSES === 1));
    if (uv) {
      const u = await launchUvicorn(work, uv);
      targets.push({ name: u.name, url: u.url, auth: null, groups: u.groups, m: u.m });
    }
    await waitQuiet('interleaved runs');
    log(`interleaved: ${BURSTS} runs of 1 s each of ${targets.map((t) => t.name).join(', ')}, in turn`);
    const sums = targets.map((t): Interleaved => ({ name: t.name, calls: 0, seconds: 0, frontUs: 0, workersUs: 0, frontRw: 0, p50s: [], processes: PROCESSES }));
    for (const t of targets) assertClean(`${t.name} (warm-up)`, await wrk(t.url, CONNECTIONS, 1, t.auth));
    for (let i = 0; i < BURSTS; i++) {
      for (const [k, t] of targets.entries()) {
        const a = cpuSnapshot(t.groups);
        const r = await wrk(t.url, CONNECTIONS, 1, t.auth);
        const b = cpuSnapshot(t.groups);
        assertClean(t.name, r);
        const s = sums[k]!;
        s.calls += r.requests;
        s.seconds += r.duration_us / 1e6;
        s.frontUs += ((b.per.gateway! - a.per.gateway!) / CLK_TCK) * 1e6;
        s.workersUs += ((b.per.workers! - a.per.workers!) / CLK_TCK) * 1e6;
        s.frontRw += b.rw.gateway! - a.rw.gateway!;
        s.p50s.push(r.latency_us.p50);
      }
    }
    return reportInterleaved(sums);
  } finally {
    for (const t of targets) await stop(t.m);
    if (floorWorker) await stop(floorWorker);
  }
}

function reportInterleaved(sums: Interleaved[]): string {
  const rps = (s: Interleaved): number => s.calls / s.seconds;
  const p50 = (s: Interleaved): number => percentile([...s.p50s].sort((a, b) => a - b), 50);
  const [berth] = sums;
  const lines = [
    `##### Interleaved, ${PROCESSES} Python process${PROCESSES > 1 ? 'es' : ''} per target: ${BURSTS} runs of 1 s each (wrk -t1 -c${CONNECTIONS}), the targets in turn`,
    '',
    '| target | req/s | req/s per Python process | p50 ms (median of the runs) | front µs/call | workers µs/call | front reads + writes per call | vs Berth: throughput per process | vs Berth: p50 |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const s of sums) {
    lines.push(`| ${s.name} | ${rps(s).toFixed(0)} | ${(rps(s) / s.processes).toFixed(0)} | ${ms(p50(s))} | ${us(s.frontUs / s.calls)} | ${us(s.workersUs / s.calls)} | ${s.frontRw ? (s.frontRw / s.calls).toFixed(2) : '–'} | ` +
      `${s === berth ? '–' : x(rps(berth!) / rps(s))} | ${s === berth ? '–' : x(p50(berth!) / p50(s))} |`);
  }
  const uv = sums.find((s) => s.name.startsWith('uvicorn'));
  const goals = [`gateway CPU per cell call ≤ 100 µs: ${us(berth!.frontUs / berth!.calls)} µs — ${berth!.frontUs / berth!.calls <= 100 ? 'met' : 'NOT met'}`];
  if (uv && PROCESSES === 1) {
    const ratio = rps(berth!) / rps(uv);
    const faster = p50(berth!) / p50(uv);
    goals.unshift(`≥ 1.5× ${uv.name} with one Python process each at a lower p50: ${x(ratio)}, p50 ${x(faster)} of its — ${ratio >= 1.5 && faster < 1 ? 'met' : 'NOT met'}`);
  }
  lines.push('', `Goals (issue 8), interleaved: ${goals.join('; ')}.`);
  const floor = sums.find((t) => t.name.startsWith('raw Node floor'));
  if (floor && uv) lines.push('', `The raw Node floor: ${x(rps(floor) / rps(uv))} ${uv.name}'s throughput per process, p50 ${x(p50(floor) / p50(uv))} of its; Berth at ${x(rps(berth!) / rps(floor))} the floor's throughput, ${x((berth!.frontUs / berth!.calls) / (floor.frontUs / floor.calls))} its front CPU per call.`);
  return lines.join('\n');
}

// ---------------------------------------------------------------------------
// The machine and the software, for the record

function machine(): Record<string, string> {
  const nproc = spawnSync('nproc', { encoding: 'utf8' }).stdout.trim();
  const py = spawnSync(PYTHON, ['-c', [
    'import sys, importlib',
    'out = ["python " + sys.version.split()[0]]',
    'for m in ["flask", "werkzeug", "gunicorn", "fastapi", "starlette", "pydantic", "uvicorn", "h11", "httptools", "uvloop", "dill"]:',
    '    try:',
    '        mod = importlib.import_module(m); out.append(m + " " + str(getattr(mod, "__version__", getattr(mod, "VERSION", "?"))))',
    '    except Exception: out.append(m + " (not installed)")',
    'print(", ".join(out))',
  ].join('\n')], { encoding: 'utf8' }).stdout.trim();
  const wrkVersion = spawnSync(WRK, ['-v'], { encoding: 'utf8' }).stdout.split('\n')[0]!.trim();
  return {
    nproc, cpu: cpuModel(), memory: `${memGiB()} GiB (MemTotal)`, total_mem_os: `${(totalmem() / 2 ** 30).toFixed(1)} GiB`,
    node: process.version, python: py, wrk: wrkVersion, berth_head: gitHead(),
  };
}

// ---------------------------------------------------------------------------
// Report

const ms = (us: number): string => (us / 1000).toFixed(2);
const x = (v: number): string => (v >= 1 ? v.toFixed(2) : v.toPrecision(2)) + '×';

const us = (v: number): string => v.toFixed(0);

/** CPU µs per call: the front (Berth's gateway processes, a supervisor), the Python workers, both. */
function perCall(r: TargetResult): { front: number; workers: number; total: number } {
  const f = ((r.cpu.gateway ?? 0) / r.load.rps) * 1e6;
  const w = ((r.cpu.workers ?? 0) / r.load.rps) * 1e6;
  return { front: f, workers: w, total: f + w };
}

/** One round: every target once, Berth's first. */
interface Round { results: TargetResult[]; berths: Array<{ result: TargetResult; extras: BerthExtras }> }

/** One part's tables: every target with the same number of Python processes, over the rounds. */
function report(rounds: Round[]): string {
  const results = medianRounds(rounds.map((r) => r.results), (r) => r.load.rps);
  const berths = results.filter((r) => r.name.startsWith('berth')).map((b) => rounds.flatMap((r) => r.berths).find((x) => x.result === b)!);
  const P = results[0]!.processes;
  const lines: string[] = [];
  lines.push(`#### ${P} Python process${P > 1 ? 'es' : ''} per target` +
    (ROUNDS > 1 ? ` (${ROUNDS} rounds: each target's figures from its median round by throughput; each comparison the median of the rounds' own, their range in brackets)` : ''));
  lines.push('');
  lines.push(`| target | req/s | req/s per Python process | p50 ms | p99 ms | requests | non-2xx + socket errors | 1 conn: req/s | 1 conn: p50 ms | 1 conn: p99 ms |`);
  lines.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of results) {
    const e = r.load.errors;
    const errs = e.connect + e.read + e.write + e.status + e.timeout;
    lines.push(`| ${r.name} | ${r.load.rps.toFixed(0)} | ${(r.load.rps / r.processes).toFixed(0)} | ${ms(r.load.latency_us.p50)} | ${ms(r.load.latency_us.p99)} | ${r.load.requests} | ${errs} | ` +
      `${r.c1 ? r.c1.rps.toFixed(0) : '–'} | ${r.c1 ? ms(r.c1.latency_us.p50) : '–'} | ${r.c1 ? ms(r.c1.latency_us.p99) : '–'} |`);
  }
  lines.push('');
  lines.push(`CPU during the ${CONNECTIONS}-connection run: cores (2 = the whole machine) and µs per call; "front" = Berth's gateway (berth up's processes but the Python workers), gunicorn's arbiter, uvicorn's supervisor (none for one uvicorn process):`);
  lines.push('');
  lines.push(SPEEDS_NOTE);
  lines.push('');
  lines.push('| target | front cores | Python workers cores (each) | front µs/call | workers µs/call | server µs/call | front reads + writes per call | wrk | other processes: before / during / 1-conn run | CPU speeds | attempts | workers all busy? |');
  lines.push('|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---|');
  for (const r of results) {
    const c = r.cpu;
    const each = Object.keys(c).filter((k) => k.startsWith('w:')).map((k) => c[k]!.toFixed(2)).join(' + ');
    const pc = perCall(r);
    const rw = c['rw:gateway'] ? (c['rw:gateway'] / r.load.rps).toFixed(2) : '–';
    lines.push(`| ${r.name} | ${c.gateway!.toFixed(2)} | ${c.workers!.toFixed(2)} (${each}) | ${us(pc.front)} | ${us(pc.workers)} | ${us(pc.total)} | ${rw} | ` +
      `${c.wrk!.toFixed(2)} | ${r.idleLoad.toFixed(2)} / ${c.other!.toFixed(2)} / ${r.c1Cpu ? r.c1Cpu.other!.toFixed(2) : '–'} | ${showSpeeds(r.speeds)} | ` +
      `${r.attempts}${r.disturbed ? ' (DISTURBED)' : ''} | ${r.unbalanced ? `UNBALANCED: ${r.unbalanced}` : r.processes > 1 ? 'yes' : '–'} |`);
  }
  // a comparison of Berth (index bi) with another target (oi), round by round
  const each = (bi: number, oi: number, f: (b: TargetResult, o: TargetResult) => number | null): Spread | null => {
    const v = rounds.map((r) => f(r.results[bi]!, r.results[oi]!));
    return v.every((n): n is number => n !== null && Number.isFinite(n)) ? spread(v) : null;
  };
  const fmt = (v: Spread | null, as: (n: number) => string = x): string => showSpread(v, as, ROUNDS);
  const perProcess = (b: TargetResult, o: TargetResult): number => (b.load.rps / b.processes) / (o.load.rps / o.processes);
  const p50 = (b: TargetResult, o: TargetResult): number => b.load.latency_us.p50 / o.load.latency_us.p50;
  results.forEach((b, bi) => {
    if (!b.name.startsWith('berth')) return;
    lines.push('');
    lines.push(`| ${b.name} vs | throughput per Python process (Berth / other) | p50 (Berth / other, < 1 = Berth faster) | 1-conn p50 | server CPU per call (Berth / other) |`);
    lines.push('|---|---:|---:|---:|---:|');
    results.forEach((r, oi) => {
      if (r.name.startsWith('berth')) return;
      lines.push(`| ${r.name} | ${fmt(each(bi, oi, perProcess))} | ${fmt(each(bi, oi, p50))} | ` +
        `${fmt(each(bi, oi, (bb, o) => (bb.c1 && o.c1 ? bb.c1.latency_us.p50 / o.c1.latency_us.p50 : null)))} | ${fmt(each(bi, oi, (bb, o) => perCall(bb).total / perCall(o).total))} |`);
    });
    // the goal's anchor: the uvicorn target that served most (its median round), its workers all busy
    const uv = results.map((r, i) => ({ r, i })).filter(({ r }) => r.name.startsWith('uvicorn') && !r.unbalanced);
    const best = uv.sort((a, c) => c.r.load.rps - a.r.load.rps)[0];
    const goals: string[] = [];
    if (best && P === 1) {
      const ratio = each(bi, best.i, perProcess)!;
      const faster = each(bi, best.i, p50)!;
      goals.push(`≥ 1.5× ${best.r.name} with one Python process each at a lower p50: ${fmt(ratio)}, p50 ${fmt(faster)} of its — ` +
        `${ratio.mid >= 1.5 && faster.mid < 1 ? 'met' : 'NOT met'}`);
    }
    const front = spread(rounds.map((r) => perCall(r.results[bi]!).front));
    goals.push(`gateway CPU per cell call ≤ 100 µs: ${fmt(front, us)} µs — ${front.mid <= 100 ? 'met' : 'NOT met'}`);
    lines.push('');
    lines.push(`Goals (issue 8) for ${b.name}: ${goals.join('; ')}.`);
  });
  for (const { result: b, extras } of berths) {
    const a = extras.added;
    lines.push('');
    lines.push(`| ${b.name}: concurrency 1, ${a.direct.calls} calls each | p50 µs | p90 µs | p99 µs | mean µs |`);
    lines.push('|---|---:|---:|---:|---:|');
    lines.push(`| worker direct (framed protocol, ${WORKER_TRANSPORT === 'tcp' ? 'TCP 127.0.0.1' : 'Unix socket'}, with the handshake) | ${a.direct.p50_us.toFixed(0)} | ${a.direct.p90_us.toFixed(0)} | ${a.direct.p99_us.toFixed(0)} | ${a.direct.mean_us.toFixed(0)} |`);
    lines.push(`| Berth gateway (HTTP, auth, balancing) | ${a.gateway.p50_us.toFixed(0)} | ${a.gateway.p90_us.toFixed(0)} | ${a.gateway.p99_us.toFixed(0)} | ${a.gateway.mean_us.toFixed(0)} |`);
    lines.push(`| **added by Berth** | **${(a.gateway.p50_us - a.direct.p50_us).toFixed(0)}** | ${(a.gateway.p90_us - a.direct.p90_us).toFixed(0)} | ${(a.gateway.p99_us - a.direct.p99_us).toFixed(0)} | ${(a.gateway.mean_us - a.direct.mean_us).toFixed(0)} |`);
    lines.push('');
    lines.push(`(Raw sockets in this process, one call at a time, alternating blocks of 250 calls; the direct one talks to one instance, ` +
      `the gateway balances over all ${P}. Other processes used ${extras.addedCpu.other!.toFixed(2)} cores meanwhile.) ` +
      `Create → Healthy (${P} instance${P > 1 ? 's' : ''}): ${extras.healthySeconds.toFixed(2)} s by the client polling every 20 ms ` +
      `(${extras.healthySecondsServer === null ? '?' : extras.healthySecondsServer.toFixed(2)} s by the node's own timestamps); ` +
      `checkpoint create ${extras.checkpointSeconds.toFixed(2)} s. Berth's status-code counter: ${JSON.stringify(extras.httpCodes)}.`);
  }
  return lines.join('\n');
}

function header(env: Record<string, string>): string {
  return [
    `Machine: ${env.nproc} cores (nproc), ${env.cpu}, ${env.memory}; Node ${env.node}; ${env.wrk}; Berth ${env.berth_head}`,
    `Python: ${env.python}`,
    `Load: wrk -t1 -c${CONNECTIONS} -d${DURATION}s after a ${WARMUP}s warm-up, then -c1 -d${C1_DURATION}s; same POST for every target; ` +
      `run order ${TARGETS.join(', ')}; ${PROCESS_MODES.join(' and ')} Python process(es) per target${ROUNDS > 1 ? `, ${ROUNDS} rounds each` : ''}. ` +
      `Berth (the built CLI, bin/berth) with --gateway-workers ${GATEWAY_WORKERS.join(' and ')}.` +
      ` Cell workers over ${WORKER_TRANSPORT === 'tcp' ? 'TCP (127.0.0.1)' : 'Unix sockets'}, each connection authenticated by the instance secret.`,
  ].join('\n');
}

// ---------------------------------------------------------------------------

async function main(): Promise<void> {
  for (const f of [WRK, PYTHON, LUA]) if (!existsSync(f)) throw new Error(`${f} is missing (wrk: apt-get install wrk)`);
  const probe = spawnSync(PYTHON, ['-c', `import importlib.util as u; print(" ".join(m for m in ${JSON.stringify(Object.keys(PY_PREREQS))} if not u.find_spec(m)))`], { encoding: 'utf8' });
  const missing = (probe.stdout ?? '').trim().split(/\s+/).filter(Boolean);
  if (missing.length && TARGETS.some((t) => t.startsWith('uvicorn'))) {
    throw new Error(`the uvicorn baselines need ${missing.join(', ')} for ${PYTHON}: apt-get install -y ${missing.map((m) => PY_PREREQS[m]).join(' ')}`);
  }
  const env = machine();
  const work = mkdtempSync(join(tmpdir(), 'berth-bench-'));
  workDir = work;
  log(`work directory ${work}`);
  let ok = false;
  try {
    const parts: Array<{ processes: number; rounds: Round[]; inTurn: string | null }> = [];
    for (const P of PROCESS_MODES) {
      PROCESSES = P;
      const rounds: Round[] = [];
      for (let round = 1; round <= ROUNDS; round++) {
        log(`---- ${P} Python process${P > 1 ? 'es' : ''} per target${ROUNDS > 1 ? `, round ${round} of ${ROUNDS}` : ''}`);
        // in the order given by --targets; the table always lists Berth first
        const results: TargetResult[] = [];
        const berths: Round['berths'] = [];
        for (const t of TARGETS) {
          if (t === 'berth') {
            for (const g of GATEWAY_WORKERS) berths.push(await benchBerth(work, g, round));
          } else if (t === 'gunicorn') results.push(await benchGunicorn(work));
          else if (t === 'raw-floor') { if (round === 1) log('raw-floor: measured in the interleaved runs only (--bursts)'); }
          else if (t === 'uvicorn-reuseport' && P === 1) { if (round === 1) log('uvicorn-reuseport: skipped with one process (the same as uvicorn)'); }
          else results.push(await benchUvicorn(work, t as UvicornVariant));
        }
        results.unshift(...berths.map((b) => b.result));
        rounds.push({ results, berths });
      }
      const inTurn = BURSTS > 0 ? await interleaved(work) : null;
      if (inTurn) log(`\n${inTurn}`);
      parts.push({ processes: P, rounds, inTurn });
    }
    const table = [header(env), ...parts.flatMap((p) => [report(p.rounds), ...(p.inTurn ? [p.inTurn] : [])])].join('\n\n');
    const outDir = join(ROOT, 'bench', 'results');
    mkdirSync(outDir, { recursive: true });
    const file = join(outDir, `cell-node-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
    writeFileSync(file, JSON.stringify({
      env, options: { DURATION, WARMUP, CONNECTIONS, C1_DURATION, DIRECT_CALLS, TARGETS, PROCESS_MODES, GATEWAY_WORKERS, ROUNDS },
      parts: parts.map((p) => ({
        processes: p.processes,
        rounds: p.rounds.map((rd) => ({
          results: rd.results.map((r) => ({ ...r, load: { ...r.load, raw: undefined }, c1: r.c1 ? { ...r.c1, raw: undefined } : null, cpuPerCallUs: perCall(r) })),
          berth: rd.berths.map((b) => b.extras),
        })),
        interleaved: p.inTurn,
      })),
      table,
    }, null, 2) + '\n');
    console.log('\n' + table + '\n');
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
