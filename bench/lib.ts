// Helpers shared by the benchmark scripts (bench/cell-node.ts, bench/gateway.ts, bench/alias.ts):
// logging, processes in their own groups, ports, HTTP, CPU accounting from /proc, the quiet-machine
// wait and wrk. Each script is its own process, so the module state here (the processes started,
// the load generators running) belongs to one benchmark run.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, createWriteStream, existsSync, openSync, readFileSync, readdirSync, type WriteStream } from 'node:fs';
import { createServer } from 'node:net';
import { cpus } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';

export const ROOT = resolve(import.meta.dirname, '..');
export const WRK = '/usr/bin/wrk';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function log(msg: string): void {
  console.error(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}`);
}

/** Checkouts compiled in this run. */
const built = new Set<string>();
/**
 * The command that runs `berth` as users run it: bin/berth, the CLI compiled into dist/ (compiled
 * from this checkout first, once per run; `root`: another checkout, for a baseline build). Not through tsx: its loader and the name helper it
 * wraps every closure in cost CPU on the call path that an installed Berth does not pay.
 * `nodeArgs`: flags for Node itself (--cpu-prof).
 */
export function berthCommand(nodeArgs: string[] = [], root = ROOT): string[] {
  if (!built.has(root)) {
    log(`compiling Berth in ${root} (tsc -p tsconfig.json): the benchmark runs the built CLI, as users do`);
    const r = spawnSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], { cwd: root, stdio: 'inherit' });
    if (r.status !== 0) throw new Error(`tsc -p tsconfig.json failed in ${root}: the benchmark runs the built CLI`);
    built.add(root);
  }
  return [process.execPath, ...shebangFlags(root), ...nodeArgs, join(root, 'bin', 'berth')];
}

/** The Node flags bin/berth's first line gives Node (`#!/usr/bin/env -S node <flags>`): `berth` as a command runs with them. */
function shebangFlags(root: string): string[] {
  const first = readFileSync(join(root, 'bin', 'berth'), 'utf8').split('\n', 1)[0]!;
  return /^#!\/usr\/bin\/env -S node\b(.*)$/.exec(first)?.[1]!.trim().split(/\s+/).filter(Boolean) ?? [];
}

/** --baseline: another checkout of Berth (a git worktree of an earlier commit) to measure beside this one; null when not given. */
export function baselineCheckout(arg: string | undefined): string | null {
  if (!arg) return null;
  const root = resolve(arg);
  if (!existsSync(join(root, 'bin', 'berth'))) throw new Error(`--baseline ${root}: not a Berth checkout (no bin/berth)`);
  if (!existsSync(join(root, 'node_modules'))) throw new Error(`--baseline ${root}: no node_modules there (ln -s ${join(ROOT, 'node_modules')} ${join(root, 'node_modules')})`);
  return root;
}

export function posInt(v: string, name: string, min: number, max: number): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be an integer in [${min}, ${max}], got ${v}`);
  return n;
}

export function percentile(sorted: number[] | Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

/**
 * --rounds: the machine's speed drifts by more than the differences measured, minute to minute,
 * so a comparison is made within each round and reported as the median of the rounds' values,
 * with their range.
 */
export interface Spread { mid: number; lo: number; hi: number }

export function spread(values: number[]): Spread {
  const v = [...values].sort((a, b) => a - b);
  return { mid: v.length % 2 ? v[(v.length - 1) / 2]! : (v[v.length / 2 - 1]! + v[v.length / 2]!) / 2, lo: v[0]!, hi: v[v.length - 1]! };
}

/** `mid`, and the range when there was more than one round. */
export function showSpread(s: Spread | null, as: (n: number) => string, rounds: number): string {
  return s === null ? '–' : rounds > 1 ? `${as(s.mid)} (${as(s.lo)}–${as(s.hi)})` : as(s.mid);
}

/** Each target's own figures from its median round by throughput (every round measured the targets in the same order). */
export function medianRounds<T>(rounds: T[][], rps: (t: T) => number): T[] {
  return rounds[0]!.map((_, i) => {
    const mine = rounds.map((r) => r[i]!).sort((a, b) => rps(a) - rps(b));
    return mine[Math.floor((mine.length - 1) / 2)]!;
  });
}

export function readLog(file: string): string {
  try { return readFileSync(file, 'utf8').slice(-4000); } catch { return ''; }
}

// ---------------------------------------------------------------------------
// Processes we start: every one in its own process group.

export interface Managed { name: string; proc: ChildProcess; exited: Promise<void>; log: WriteStream | null }
/** Every process started with start(), in order. */
export const managed: Managed[] = [];
/** Load generator runs in progress (bash + the tool, in their own process group). */
export const loadGenerators = new Set<ChildProcess>();

export function alive(m: Managed): boolean { return m.proc.exitCode === null && m.proc.signalCode === null; }

/**
 * Starts a server in its own process group, in ROOT. Its output goes straight to `logFile`;
 * with `pipe`, through this process instead, to read it.
 */
export function start(name: string, cmd: string, argv: string[], logFile: string, env: Record<string, string> = {}, pipe = false): Managed {
  const fd = pipe ? null : openSync(logFile, 'a');
  const proc = spawn(cmd, argv, {
    cwd: ROOT, env: { ...process.env, ...env },
    stdio: fd === null ? ['ignore', 'pipe', 'pipe'] : ['ignore', fd, fd], detached: true,
  });
  if (fd !== null) closeSync(fd);
  let log: WriteStream | null = null;
  if (pipe) {
    log = createWriteStream(logFile, { flags: 'a' });
    proc.stdout!.pipe(log, { end: false });
    proc.stderr!.pipe(log, { end: false });
  }
  const exited = new Promise<void>((r) => { proc.once('exit', () => r()); proc.once('error', () => r()); });
  const m = { name, proc, exited, log };
  managed.push(m);
  return m;
}

export function signalGroup(pid: number | undefined, sig: NodeJS.Signals): void {
  if (!pid) return;
  try { process.kill(-pid, sig); } catch { /* gone */ }
}

/** SIGTERM to the process group, SIGKILL after `graceMs`, then SIGKILL to anything left in the group. */
export async function stop(m: Managed, graceMs: number): Promise<void> {
  if (alive(m)) {
    signalGroup(m.proc.pid, 'SIGTERM');
    const t = setTimeout(() => signalGroup(m.proc.pid, 'SIGKILL'), graceMs);
    await m.exited;
    clearTimeout(t);
  }
  signalGroup(m.proc.pid, 'SIGKILL'); // anything left in its group
}

/** On SIGINT / SIGTERM: say so, stop everything, clean up, exit 130. */
export function onSignals(stopAll: () => Promise<void>, cleanup: () => void = () => {}): void {
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      console.error(`\n${sig}: stopping everything this benchmark started`);
      void stopAll().finally(() => {
        cleanup();
        process.exit(130);
      });
    });
  }
}

// ---------------------------------------------------------------------------
// Small helpers

export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => res(port));
    });
  });
}

/** A request with fetch; a string body is sent as is, anything else as JSON. */
export async function http(method: string, url: string, body?: unknown, headers: Record<string, string> = {}, timeoutMs = 10_000): Promise<{ status: number; json: any; text: string }> {
  const res = await fetch(url, {
    method,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await res.text();
  let json: any = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, json, text };
}

// ---------------------------------------------------------------------------
// The machine and the software, for the record

export function gitHead(root = ROOT): string {
  // git itself first: in a worktree .git is a file, not a directory
  const r = spawnSync('git', ['rev-parse', '--short=12', 'HEAD'], { cwd: root, encoding: 'utf8', timeout: 10_000 });
  if (r.status === 0 && r.stdout.trim()) return r.stdout.trim();
  try {
    const h = readFileSync(join(root, '.git/HEAD'), 'utf8').trim();
    return h.startsWith('ref: ') ? readFileSync(join(root, '.git', h.slice(5)), 'utf8').trim().slice(0, 12) : h.slice(0, 12);
  } catch { return 'unknown'; } // packed refs or no git
}

/** The first non-empty line a tool prints (its version, usually), or "unknown". */
export function firstLine(cmd: string, argv: string[]): string {
  const r = spawnSync(cmd, argv, { encoding: 'utf8', timeout: 10_000 });
  return `${r.stdout ?? ''}${r.stderr ?? ''}`.split('\n').find((l) => l.trim())?.trim() ?? 'unknown';
}

/** The machine and the software, for the record: what every benchmark reports, plus `extra`. */
export function machine(extra: Record<string, string> = {}): Record<string, string> {
  return {
    nproc: spawnSync('nproc', { encoding: 'utf8' }).stdout.trim(), cpu: cpuModel(), memory: `${memGiB()} GiB`,
    node: process.version, ...extra, berth_head: gitHead(),
  };
}

export function cpuModel(): string {
  return /model name\s*:\s*(.+)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown';
}

/** MemTotal in GiB, one decimal. */
export function memGiB(): string {
  const memKb = Number(/MemTotal:\s*(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
  return (memKb / 1024 / 1024).toFixed(1);
}

// ---------------------------------------------------------------------------
// CPU accounting from /proc: which process used how much CPU during a run.

export const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

function procStat(pid: number): string[] | null {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2).split(' ');
  } catch { return null; }
}

/** utime + stime (all threads), in ticks; null if the process is gone. */
export function procTicks(pid: number): number | null {
  const f = procStat(pid);
  return f ? Number(f[11]) + Number(f[12]) : null;
}

/**
 * read() + write() system calls (readv/writev included; all threads) so far; 0 if the process is
 * gone. Not send/recv: for Node (libuv reads and writes its sockets with read/writev) it is every
 * socket and file operation, for Python's sockets only its file writes (stdout).
 */
function procReadWrites(pid: number): number {
  try {
    const io = readFileSync(`/proc/${pid}/io`, 'utf8');
    return Number(/syscr: (\d+)/.exec(io)?.[1] ?? 0) + Number(/syscw: (\d+)/.exec(io)?.[1] ?? 0);
  } catch { return 0; }
}

export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    if (Number(procStat(Number(d))?.[1]) === pid) out.push(Number(d));
  }
  return out;
}

/** A process and all its descendants (a container: tini as PID 1, the service under it; berth up and its workers). */
export function treeOf(pid: number): number[] {
  const out = [pid];
  for (let i = 0; i < out.length && i < 1000; i++) out.push(...childrenOf(out[i]!));
  return out;
}

export function machineBusyTicks(): { busy: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = line.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = line[3]! + line[4]!;
  return { busy: total - idle, total };
}

export interface CpuGroups { [group: string]: number[] }
/**
 * Cores used on average during the run, per group; `rw:<group>`: the group's read + write system
 * calls per second (a count, not a time: it does not move with the machine's speed, so a change in
 * what a call costs shows in it even when the CPU figures are noisy).
 */
export interface CpuUse { [group: string]: number }
export type CpuSnapshot = { per: Record<string, number>; rw: Record<string, number>; machine: { busy: number; total: number }; t: number };

export function cpuSnapshot(groups: CpuGroups): CpuSnapshot {
  const per: Record<string, number> = {};
  const rw: Record<string, number> = {};
  for (const [g, pids] of Object.entries(groups)) {
    per[g] = pids.reduce((a, p) => a + (procTicks(p) ?? 0), 0);
    rw[g] = pids.reduce((a, p) => a + procReadWrites(p), 0);
  }
  // each worker on its own too ("w:" keys: not summed again), to see how evenly the load is spread
  for (const [i, p] of (groups.workers ?? []).entries()) per[`w:${i}`] = procTicks(p) ?? 0;
  return { per, rw, machine: machineBusyTicks(), t: performance.now() };
}

/**
 * Cores used on average: per group, by the load generator (under `loadKey`), by this script,
 * by the whole machine, and the rest ("other").
 */
export function cpuUse(a: CpuSnapshot, b: CpuSnapshot, loadCpuS: number, benchCpuS: number, loadKey = 'wrk'): CpuUse {
  const secs = (b.t - a.t) / 1000;
  const out: CpuUse = {};
  let ours = 0;
  for (const g of Object.keys(a.per)) {
    out[g] = (b.per[g]! - a.per[g]!) / CLK_TCK / secs;
    if (!g.startsWith('w:')) ours += out[g]!;
  }
  for (const g of Object.keys(a.rw)) out[`rw:${g}`] = (b.rw[g]! - a.rw[g]!) / secs;
  out[loadKey] = loadCpuS / secs;
  out.bench = benchCpuS / secs;
  ours += out[loadKey]! + out.bench;
  out.machine = ((b.machine.busy - a.machine.busy) / Math.max(1, b.machine.total - a.machine.total)) * cpus().length;
  out.other = Math.max(0, out.machine - ours);
  return out;
}

/** Average cores busy on the whole machine over `ms`. */
export async function machineLoad(ms: number): Promise<number> {
  const a = machineBusyTicks();
  await sleep(ms);
  const b = machineBusyTicks();
  return ((b.busy - a.busy) / Math.max(1, b.total - a.total)) * cpus().length;
}

export interface QuietOptions {
  /** background load (cores) under which the machine counts as quiet */
  cores: number;
  /** how long to wait for it, at most */
  waitS: number;
  /** cores used by others over `ms` (default: the whole machine's load) */
  sample?: (ms: number) => Promise<number>;
  /** the first "busy" line, after the label */
  busy?: (load: string, waitS: number) => string;
  /** the line when it is still busy at the deadline, after the label */
  warn?: (load: string) => string;
}

/**
 * The machine may be shared (other sessions' tests): wait, bounded, until it is quiet
 * before a target starts, and record what was seen.
 */
export async function waitQuiet(label: string, o: QuietOptions): Promise<number> {
  const sample = o.sample ?? machineLoad;
  const busy = o.busy ?? ((load, s) => `machine busy (${load} cores used by others); waiting up to ${s}s for it to quieten`);
  const warn = o.warn ?? ((load) => `WARNING: starting with ${load} cores used by other processes`);
  const deadline = Date.now() + o.waitS * 1000;
  let load = await sample(1000);
  for (let i = 0; i < 3600 && load > o.cores && Date.now() < deadline; i++) {
    if (i === 0) log(`${label}: ${busy(load.toFixed(2), o.waitS)}`);
    load = await sample(1000);
  }
  if (load > o.cores) log(`${label}: ${warn(load.toFixed(2))}`);
  return load;
}

/**
 * How fast each CPU runs a gateway's kind of JavaScript right now: bench/machine-speed.mjs's
 * probe pinned to each CPU in turn (about half a second each), ns per iteration. The 2-vCPU
 * machines of issue 8 run it at one of two speeds 1.6–1.7× apart, per CPU, changing over
 * minutes (docs/benchmarks.md, "Two speeds"); a run's figures are read beside the speeds it
 * started at. Empty when taskset is missing.
 */
export function cpuSpeeds(label: string, iterations = 300_000): number[] {
  const probe = join(ROOT, 'bench', 'machine-speed.mjs');
  const out: number[] = [];
  for (let c = 0; c < cpus().length; c++) {
    const p = spawnSync('taskset', ['-c', String(c), process.execPath, probe, '--probe', '--iterations', String(iterations)], { encoding: 'utf8', timeout: 60_000 });
    if (p.status !== 0) return [];
    out.push(Number(p.stdout.trim().split(' ')[0]));
  }
  log(`${label}: CPU speed probe ${showSpeeds(out)} ns per iteration`);
  return out;
}

/** The speeds as a table cell: "1290 / 2140". */
export const showSpeeds = (s: number[]): string => (s.length ? s.join(' / ') : '–');

/** What the reports' "CPU speeds" column means. */
export const SPEEDS_NOTE = '"CPU speeds": ns per iteration of bench/machine-speed.mjs\'s probe on each CPU just before the run (this machine has two speeds, 1.6–1.7× apart: docs/benchmarks.md, "Two speeds"):';

// ---------------------------------------------------------------------------
// Load generators. They run through bash only to read their own CPU time afterwards
// (`times`: the children's user and system time).

/** Runs a load generator; it is killed (and the run fails) `seconds` + 30 s after it started. */
export function runTool(argv: string[], seconds: number, env?: Record<string, string>): Promise<{ code: number | null; out: string; err: string; cpu_s: number }> {
  const child = spawn('/bin/bash', ['-c', '"$0" "$@"; rc=$?; times >&2; exit $rc', ...argv], {
    ...(env ? { env: { ...process.env, ...env } } : {}),
    stdio: ['ignore', 'pipe', 'pipe'], detached: true, // own group: bash and the tool stop together
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { err += d; });
  loadGenerators.add(child);
  const killer = setTimeout(() => signalGroup(child.pid, 'SIGKILL'), (seconds + 30) * 1000);
  return new Promise((res) => child.once('close', (code) => {
    clearTimeout(killer);
    loadGenerators.delete(child);
    const t = [...err.matchAll(/^(\d+)m([\d.]+)s (\d+)m([\d.]+)s$/gm)].at(-1);
    const cpu_s = t ? Number(t[1]) * 60 + Number(t[2]) + Number(t[3]) * 60 + Number(t[4]) : NaN;
    res({ code, out, err, cpu_s });
  }));
}

/** What the Lua scripts' done() prints (bench/report.lua), plus req/s and wrk's CPU time. */
export interface WrkResult {
  requests: number; duration_us: number; bytes: number;
  errors: { connect: number; read: number; write: number; status: number; timeout: number };
  latency_us: { min: number; mean: number; stdev: number; max: number; p50: number; p90: number; p99: number; p999: number };
  rps: number;
  /** wrk's own CPU time (user + system), seconds */
  cpu_s: number;
  /** wrk's output */
  raw?: string;
}

/** wrk, one thread, with a Lua script whose done() prints a BENCH_RESULT line; `env` for the script. */
export async function wrk(lua: string, url: string, connections: number, seconds: number, env: Record<string, string>): Promise<WrkResult> {
  const argv = ['-t1', `-c${connections}`, `-d${seconds}s`, '--timeout', '5s', '--latency', '-s', lua, url];
  const run = await runTool([WRK, ...argv], seconds, env);
  const line = run.out.split('\n').find((l) => l.startsWith('BENCH_RESULT '));
  if (run.code !== 0 || !line) throw new Error(`wrk failed (exit ${run.code}):\n${run.out}\n${run.err}`);
  const r = JSON.parse(line.slice('BENCH_RESULT '.length)) as WrkResult;
  r.rps = r.requests / (r.duration_us / 1e6);
  r.raw = run.out;
  r.cpu_s = run.cpu_s;
  return r;
}

export function wrkErrors(r: WrkResult): number {
  const e = r.errors;
  return e.connect + e.read + e.write + e.status + e.timeout;
}

export function assertClean(name: string, r: WrkResult): void {
  if (r.requests === 0 || wrkErrors(r) > 0) {
    throw new Error(`${name}: ${r.requests} requests with errors ${JSON.stringify(r.errors)} (status = non-2xx/3xx answers)${r.raw === undefined ? '' : `\n${r.raw}`}`);
  }
}

/** One load run with the CPU each party used during it; `check` throws on errors. */
export async function loadRun<R extends { cpu_s: number }>(groups: CpuGroups, run: () => Promise<R>, check: (r: R) => void, loadKey = 'wrk'): Promise<{ r: R; cpu: CpuUse }> {
  const a = cpuSnapshot(groups);
  const benchCpu = process.cpuUsage();
  const r = await run();
  const used = process.cpuUsage(benchCpu);
  const b = cpuSnapshot(groups);
  check(r);
  return { r, cpu: cpuUse(a, b, r.cpu_s, (used.user + used.system) / 1e6, loadKey) };
}
