// Benchmark for issue 9, "Nodes that change without failing a call": failed calls and latency
// while a node is updated under load, against the same load with nothing changing, in one run.
//
// One `berth up` (process runtime), cell nodes whose checkpoints answer {"version": N}, each with
// minInstances = maxInstances = 2 and health checks every 0.2 s. A client in this process
// (undici Pool, --concurrency calls in flight, 127.0.0.1 only) calls without pause for
// --seconds per phase; per round the phases run in this order:
//   steady        POST /datasphere/v1/nodes/{id}:execute, nothing changes
//   rollouts      the same calls while PATCH /v1/nodes/{id} {"checkpointId"} switches the node
//                 between two checkpoints, the next PATCH as soon as a rollout completes
//                 (each one a new revision: two new Python workers started beside the old two,
//                 the old ones drained and stopped)
//   alias-steady  POST /datasphere/v1/aliases/{name}:execute over node A, nothing changes
//   alias-swaps   the same calls while PATCH /v1/aliases/{name} moves the alias A→B→A… every
//                 --swap-interval-ms (the other way of updating: two nodes kept running)
// Reported per phase: calls, failed calls (non-200 answers and transport errors), p50, p99, max,
// and p99 over its steady phase (rollouts / steady, alias-swaps / alias-steady); for rollouts,
// how many completed and how long each took; the cores other processes used meanwhile.
// Goal from the issue: zero failed calls, p99 during rollouts within 2× of steady state.
//
//   node --import tsx bench/rollout.ts   (= npm run bench:rollout; about 2.5 minutes by default)
//     [--seconds 15] [--rounds 2] [--concurrency 8] [--swap-interval-ms 1000] [--keep]
//
// Prints a markdown table; writes the raw numbers to bench/results/ (ignored by git). Fails
// (exit 1) on any failed call or failed rollout. Stops every process it started on every exit path.
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { Pool } from 'undici';
import { startBerth, removeHome, makeCheckpoint, createNode, type Berth } from '../test/helpers.js';
import { ROOT, berthCommand, firstLine, log, machine, machineBusyTicks, onSignals, percentile, posInt as int, procTicks, CLK_TCK, sleep, treeOf, waitQuiet } from './lib.js';

const PYTHON = '/usr/bin/python3';
const INSTANCES = 2;
const ALIAS = 'bench.rollout';
const BODY = JSON.stringify({ folder_id: 'default', input: { x: 1 } });

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '15' },
    rounds: { type: 'string', default: '2' },
    concurrency: { type: 'string', default: '8' },
    'swap-interval-ms': { type: 'string', default: '1000' },
    keep: { type: 'boolean', default: false },
  },
});
const SECONDS = int(args.seconds!, 'seconds', 5, 600);
const ROUNDS = int(args.rounds!, 'rounds', 1, 10);
const CONCURRENCY = int(args.concurrency!, 'concurrency', 1, 256);
const SWAP_INTERVAL_MS = int(args['swap-interval-ms']!, 'swap-interval-ms', 100, 60_000);

let berth: Berth | null = null;

async function stopAll(): Promise<void> {
  const b = berth;
  berth = null;
  if (!b) return;
  await b.stop();
  if (args.keep) log(`Berth home kept: ${b.home}`);
  else removeHome(b.home);
}
process.on('exit', () => { if (berth && berth.proc.exitCode === null) berth.proc.kill('SIGKILL'); });
onSignals(stopAll);

const VERSION = (v: string): string[] => [`version = ${JSON.stringify(v)}\nx = None\n`, 'result = {"version": version}\n'];
const NODE = {
  kind: 'cell', inputs: [{ name: 'x', type: 'any' }], outputs: [{ name: 'result', type: 'dict' }],
  scaling: { minInstances: INSTANCES, maxInstances: INSTANCES },
  healthcheck: { interval: 0.2, timeout: 1, failsThreshold: 2, passesThreshold: 1 },
};

async function ok(b: Berth, method: string, path: string, body: unknown, want = 200): Promise<any> {
  const r = await b.request(method, path, body);
  if (r.status !== want) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

type PhaseName = 'steady' | 'rollouts' | 'alias-steady' | 'alias-swaps';
interface Phase {
  name: PhaseName; round: number; seconds: number;
  calls: number; failed: number; failures: Record<string, number>;
  latencies: number[];
  /** answers by version, to see both revisions served */
  versions: Record<string, number>;
  changes: number;
  /** rollouts: ms from PATCH to Complete */
  changeMs: number[];
  otherCores: number;
}

/**
 * Calls `path` from CONCURRENCY loops for SECONDS while `change` (if any) runs beside them;
 * `change` gets the phase's end time and returns how many changes it made.
 */
async function phase(b: Berth, name: PhaseName, round: number, path: string, change?: (endAt: number, p: Phase) => Promise<void>): Promise<Phase> {
  const pool = new Pool(b.url, { connections: CONCURRENCY, pipelining: 1 });
  const headers = { authorization: `Bearer ${b.token}`, 'content-type': 'application/json' };
  const p: Phase = { name, round, seconds: 0, calls: 0, failed: 0, failures: {}, latencies: [], versions: {}, changes: 0, changeMs: [], otherCores: 0 };
  // CPU of our processes: berth up and every worker it runs (rollouts start and stop some, so
  // its process tree is sampled every 200 ms: first and last ticks seen per process), and this script
  const first = new Map<number, number>();
  const last = new Map<number, number>();
  let initial = true;
  const sample = (): void => {
    for (const pid of treeOf(b.proc.pid!)) {
      const t = procTicks(pid);
      if (t === null) continue;
      if (!first.has(pid)) first.set(pid, initial ? t : 0); // born during the phase: all its ticks count
      last.set(pid, t);
    }
    initial = false;
  };
  sample();
  const sampler = setInterval(sample, 200);
  const cpu0 = process.cpuUsage();
  const m0 = machineBusyTicks();
  const t0 = performance.now();
  const endAt = t0 + SECONDS * 1000;
  const loop = async (): Promise<void> => {
    for (let i = 0; i < 10_000_000 && performance.now() < endAt; i++) {
      const start = performance.now();
      let fail: string | null = null;
      try {
        const r = await pool.request({ path, method: 'POST', headers, body: BODY, signal: AbortSignal.timeout(30_000) });
        const text = await r.body.text();
        if (r.statusCode === 200) {
          const v = String(JSON.parse(text)?.output?.result?.version ?? '?');
          p.versions[v] = (p.versions[v] ?? 0) + 1;
        } else {
          let code = '';
          try { code = String(JSON.parse(text).code ?? ''); } catch { /* not JSON */ }
          fail = `${r.statusCode}${code ? ' ' + code : ''}`;
        }
      } catch (err) {
        fail = (err as { code?: string }).code ?? (err as Error).name;
      }
      p.latencies.push(performance.now() - start);
      p.calls++;
      if (fail) { p.failed++; p.failures[fail] = (p.failures[fail] ?? 0) + 1; }
    }
  };
  try {
    await Promise.all([...Array.from({ length: CONCURRENCY }, loop), change ? change(endAt, p) : Promise.resolve()]);
  } finally {
    clearInterval(sampler);
    await pool.close().catch(() => {});
  }
  sample();
  p.seconds = (performance.now() - t0) / 1000;
  const m1 = machineBusyTicks();
  const cpu1 = process.cpuUsage(cpu0);
  const machineCores = ((m1.busy - m0.busy) / Math.max(1, m1.total - m0.total)) * cpus().length;
  let ourTicks = 0;
  for (const [pid, t] of last) ourTicks += t - first.get(pid)!;
  p.otherCores = Math.max(0, machineCores - (ourTicks / CLK_TCK + (cpu1.user + cpu1.system) / 1e6) / p.seconds);
  p.latencies.sort((a, c) => a - c);
  const pct = (q: number): string => percentile(p.latencies, q).toFixed(2);
  log(`${name} (round ${round}): ${p.calls} calls, ${p.failed} failed, p50 ${pct(50)} ms, p99 ${pct(99)} ms, ${p.changes} changes, versions ${JSON.stringify(p.versions)}`);
  return p;
}

/** PATCH the node between two checkpoints, the next as soon as the last rollout is Complete. */
function rollouts(b: Berth, nodeId: string, checkpoints: [string, string]) {
  let next = 1;
  return async (endAt: number, p: Phase): Promise<void> => {
    await sleep(500); // the load first
    while (performance.now() < endAt - 500) {
      const sent = performance.now();
      const body = await ok(b, 'PATCH', `/v1/nodes/${nodeId}`, { checkpointId: checkpoints[next] });
      next = 1 - next;
      for (;;) {
        const n = await ok(b, 'GET', `/v1/nodes/${nodeId}`, undefined);
        if (n.rollout?.revision === body.revision && n.rollout.state !== 'Progressing') {
          if (n.rollout.state !== 'Complete') throw new Error(`rollout to revision ${body.revision} ended ${n.rollout.state}: ${n.rollout.reason}`);
          break;
        }
        if (performance.now() - sent > 120_000) throw new Error(`rollout to revision ${body.revision} did not end in 120 s`);
        await sleep(50);
      }
      p.changes++;
      p.changeMs.push(performance.now() - sent);
    }
  };
}

/** PATCH the alias's backends A→B→A… every SWAP_INTERVAL_MS. */
function swaps(b: Berth, ids: [string, string]) {
  let to = 1;
  return async (endAt: number, p: Phase): Promise<void> => {
    await sleep(500);
    while (performance.now() < endAt - 500) {
      const sent = performance.now();
      await ok(b, 'PATCH', `/v1/aliases/${ALIAS}`, { backends: [{ nodeId: ids[to], weight: 1 }] });
      p.changeMs.push(performance.now() - sent);
      p.changes++;
      to = 1 - to;
      await sleep(SWAP_INTERVAL_MS);
    }
  };
}


interface Row { name: PhaseName; calls: number; failed: number; failures: Record<string, number>; seconds: number; p50: number; p99: number; max: number; changes: number; changeMs: number[]; versions: Record<string, number>; other: number }

function aggregate(phases: Phase[], name: PhaseName): Row {
  const ps = phases.filter((p) => p.name === name);
  const lat = ps.flatMap((p) => p.latencies).sort((a, c) => a - c);
  const failures: Record<string, number> = {};
  const versions: Record<string, number> = {};
  for (const p of ps) {
    for (const [k, v] of Object.entries(p.failures)) failures[k] = (failures[k] ?? 0) + v;
    for (const [k, v] of Object.entries(p.versions)) versions[k] = (versions[k] ?? 0) + v;
  }
  const sum = (f: (p: Phase) => number): number => ps.reduce((s, p) => s + f(p), 0);
  return {
    name, calls: sum((p) => p.calls), failed: sum((p) => p.failed), failures, seconds: sum((p) => p.seconds),
    p50: percentile(lat, 50), p99: percentile(lat, 99), max: lat.at(-1) ?? NaN,
    changes: sum((p) => p.changes), changeMs: ps.flatMap((p) => p.changeMs).sort((a, c) => a - c), versions,
    other: sum((p) => p.otherCores * p.seconds) / Math.max(1e-9, sum((p) => p.seconds)),
  };
}

function report(env: Record<string, string>, rows: Row[], idle: number): string {
  const by = (n: PhaseName): Row => rows.find((r) => r.name === n)!;
  const L: string[] = [];
  L.push(`Machine: ${env.nproc} cores (nproc, shared with the load generator and other sessions), ${env.cpu}, ${env.memory}; Node ${env.node}; ${env.python}; Berth ${env.berth_head}`);
  L.push(`Load: ${CONCURRENCY} calls in flight (undici Pool, ${CONCURRENCY} connections, 127.0.0.1) for ${SECONDS}s per phase, ${ROUNDS} round(s); ` +
    `cell nodes of ${INSTANCES} instances (process runtime); alias swapped every ${SWAP_INTERVAL_MS} ms; other processes used ${idle.toFixed(2)} cores before the start.`);
  L.push('');
  L.push('| phase | calls | calls/s | failed | p50 ms | p99 ms | max ms | p99 / steady | changes | other cores |');
  L.push('|---|---:|---:|---:|---:|---:|---:|---:|---|---:|');
  for (const r of rows) {
    const base = r.name.startsWith('alias') ? by('alias-steady') : by('steady');
    const fails = Object.entries(r.failures).map(([k, v]) => `${k}: ${v}`).join(', ');
    const ch = r.name === 'rollouts' ? `${r.changes} rollouts, PATCH→Complete p50 ${(percentile(r.changeMs, 50) / 1000).toFixed(2)} s`
      : r.name === 'alias-swaps' ? `${r.changes} swaps` : '';
    L.push(`| ${r.name} | ${r.calls} | ${(r.calls / r.seconds).toFixed(0)} | ${r.failed}${fails ? ` (${fails})` : ''} | ${r.p50.toFixed(2)} | ${r.p99.toFixed(2)} | ${r.max.toFixed(1)} | ` +
      `${r === base ? '1 (base)' : (r.p99 / base.p99).toFixed(2) + '×'} | ${ch} | ${r.other.toFixed(2)} |`);
  }
  L.push('');
  const ro = by('rollouts');
  const sw = by('alias-swaps');
  const ratio = ro.p99 / by('steady').p99;
  L.push(`Answers by version during rollouts: ${JSON.stringify(ro.versions)}; during swaps: ${JSON.stringify(sw.versions)}.`);
  L.push(`Goal (zero failed calls, p99 during rollouts within 2× of steady state): failed ${ro.failed}, p99 ratio ${ratio.toFixed(2)}× → ` +
    `${ro.failed === 0 && ratio <= 2 ? 'met' : 'NOT met'}; alias swaps: failed ${sw.failed}, p99 ratio ${(sw.p99 / by('alias-steady').p99).toFixed(2)}×.`);
  return L.join('\n');
}

async function main(): Promise<void> {
  const env = machine({ python: firstLine(PYTHON, ['--version']) });
  log('starting berth up (process runtime)');
  const b = await startBerth(undefined, { BERTH_PYTHON: PYTHON }, { cli: berthCommand() });
  berth = b;
  for (const v of ['1', '2', 'A', 'B']) await makeCheckpoint(b, `bench-v${v}`, VERSION(v));
  const node = await createNode(b, { ...NODE, name: 'bench-rolling', checkpointId: 'bench-v1' });
  const [a, c] = await Promise.all([
    createNode(b, { ...NODE, name: 'bench-a', checkpointId: 'bench-vA' }),
    createNode(b, { ...NODE, name: 'bench-b', checkpointId: 'bench-vB' }),
  ]);
  await ok(b, 'POST', '/v1/aliases', { name: ALIAS, backends: [{ nodeId: a.id, weight: 1 }] }, 201);
  log(`nodes Healthy: rolling ${node.id}, A ${a.id}, B ${c.id}; alias ${ALIAS} → A`);
  const idle = await waitQuiet('rollout bench', { cores: 0.5, waitS: 120 });
  const nodePath = `/datasphere/v1/nodes/${node.id}:execute`;
  const aliasPath = `/datasphere/v1/aliases/${ALIAS}:execute`;
  const phases: Phase[] = [];
  const roll = rollouts(b, node.id, ['bench-v1', 'bench-v2']);
  const swap = swaps(b, [a.id, c.id]);
  for (let round = 1; round <= ROUNDS; round++) {
    phases.push(await phase(b, 'steady', round, nodePath));
    phases.push(await phase(b, 'rollouts', round, nodePath, roll));
    phases.push(await phase(b, 'alias-steady', round, aliasPath));
    phases.push(await phase(b, 'alias-swaps', round, aliasPath, swap));
  }
  const rows = (['steady', 'rollouts', 'alias-steady', 'alias-swaps'] as const).map((n) => aggregate(phases, n));
  const table = report(env, rows, idle);
  const outDir = join(ROOT, 'bench', 'results');
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `rollout-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, JSON.stringify({
    env, options: { SECONDS, ROUNDS, CONCURRENCY, SWAP_INTERVAL_MS },
    rows: rows.map((r) => ({ ...r, changeMs: r.changeMs.map((x) => Math.round(x)) })), table,
  }, null, 2) + '\n');
  console.log('\n' + table + '\n');
  log(`raw numbers: ${file}`);
  const failed = rows.reduce((s, r) => s + r.failed, 0);
  if (failed > 0) throw new Error(`${failed} failed calls`);
  if (rows.find((r) => r.name === 'rollouts')!.changes === 0) throw new Error('no rollout completed: lengthen --seconds');
}

main().then(stopAll, async (err) => {
  console.error(`\nBENCHMARK FAILED: ${(err as Error).stack ?? err}`);
  await stopAll();
  process.exit(1);
});
