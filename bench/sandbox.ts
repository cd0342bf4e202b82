// Benchmark for "Tenant code runs in a sandbox": what the sandbox costs. Two `berth up` run
// side by side on this machine, one with the sandbox (bubblewrap + own uid + cgroup limits),
// one with `--sandbox none`; each serves the randomizer from a node of 2 instances. In
// alternating rounds (sandbox, none, sandbox, none, …) it measures
//   - node create → Healthy (POST /v1/nodes, then GET until status Healthy; the node is
//     deleted after each measurement), goal: still under 1 s with the sandbox;
//   - per-call throughput with wrk (one thread, fixed connections, same duration, 127.0.0.1)
//     and the CPU used per call by Berth and its workers (the whole process tree, from /proc),
//     goal: within 3% without the sandbox (bwrap is only at spawn: calls never cross it).
//
//   node --import tsx bench/sandbox.ts            (= npm run bench:sandbox; about 2 minutes)
//     [--rounds 4] [--duration 8] [--connections 16] [--healthy-rounds 5] [--keep]
//
// Prints a markdown table; writes the raw numbers to bench/results/ (ignored by git). Needs
// root and /usr/bin/bwrap for the sandboxed side. Stops every process it started on every exit.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import {
  CLK_TCK, ROOT, berthCommand, assertClean, childrenOf, cpuModel, freePort, gitHead, http, log, managed, memGiB, onSignals, posInt,
  procTicks, readLog, sleep, start, stop, waitQuiet, wrk, type Managed, type WrkResult,
} from './lib.js';

const LUA = join(ROOT, 'bench', 'post.lua');
const PYTHON = '/usr/bin/python3';
const BODY = JSON.stringify({ folder_id: 'default', input: { input_data: { left_bound: 1, right_bound: 10 } } });

const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '4' },
    duration: { type: 'string', default: '8' },
    connections: { type: 'string', default: '16' },
    'healthy-rounds': { type: 'string', default: '5' },
    keep: { type: 'boolean', default: false },
  },
});
const ROUNDS = posInt(args.rounds!, 'rounds', 1, 20);
const DURATION = posInt(args.duration!, 'duration', 2, 120);
const CONNECTIONS = posInt(args.connections!, 'connections', 1, 256);
const HEALTHY_ROUNDS = posInt(args['healthy-rounds']!, 'healthy-rounds', 1, 50);

type Mode = 'bubblewrap' | 'none';
interface Side { mode: Mode; home: string; url: string; token: string; proc: Managed; checkpoint: string; node: string }

const work = mkdtempSync(join(tmpdir(), 'berth-bench-sandbox-'));
const stopAll = async (): Promise<void> => { for (const m of [...managed].reverse()) await stop(m, 10_000); };
onSignals(stopAll, () => { if (!args.keep) rmSync(work, { recursive: true, force: true }); });

async function startSide(mode: Mode): Promise<Side> {
  const home = join(work, mode);
  mkdirSync(home);
  const port = await freePort();
  const logFile = join(work, `berth-${mode}.log`);
  const [nodeBin, ...cli] = berthCommand();
  const proc = start(`berth-${mode}`, nodeBin!, [...cli, 'up', '--port', String(port), '--home', home, '--sandbox', mode],
    logFile, { BERTH_HOME: home, BERTH_PYTHON: PYTHON });
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    try { if ((await http('GET', url + '/v1/health', undefined, {}, 1000)).status === 200) break; } catch { /* not yet */ }
    if (i > 300) throw new Error(`berth (${mode}) did not start:\n${readLog(logFile)}`);
    await sleep(100);
  }
  const token = readFileSync(join(home, 'admin-token'), 'utf8').trim();
  const auth = { authorization: `Bearer ${token}` };
  const script = readFileSync(join(ROOT, 'examples/randomizer.py'), 'utf8');
  const c = await http('POST', url + '/v1/checkpoints', { script, name: 'randomizer' }, auth, 60_000);
  if (c.status !== 201) throw new Error(`checkpoint (${mode}): ${c.status} ${c.text}`);
  return { mode, home, url, token, proc, checkpoint: c.json.id, node: '' };
}

const nodeSpec = (name: string, checkpoint: string, instances: number): Record<string, unknown> => ({
  name, checkpointId: checkpoint,
  inputs: [{ name: 'input_data', type: 'dict' }], outputs: [{ name: 'output_data', type: 'dict' }],
  resources: { cores: 1, memoryGb: 1 }, scaling: { minInstances: instances, maxInstances: instances },
});

/** POST /v1/nodes → status Healthy, in ms; the node is deleted afterwards. */
async function createToHealthy(s: Side, i: number): Promise<number> {
  const auth = { authorization: `Bearer ${s.token}` };
  const t0 = performance.now();
  const r = await http('POST', s.url + '/v1/nodes', nodeSpec(`h${i}`, s.checkpoint, 1), auth);
  if (r.status !== 201) throw new Error(`create (${s.mode}): ${r.status} ${r.text}`);
  for (;;) {
    const n = await http('GET', `${s.url}/v1/nodes/${r.json.id}`, undefined, auth);
    if (n.json?.status === 'Healthy') break;
    if (performance.now() - t0 > 60_000) throw new Error(`node (${s.mode}) not Healthy in 60 s: ${n.text}`);
    await sleep(10);
  }
  const ms = performance.now() - t0;
  await http('DELETE', `${s.url}/v1/nodes/${r.json.id}`, undefined, auth);
  return ms;
}

/** Berth and everything under it (sh, bwrap, setpriv → python workers). */
function tree(pid: number): number[] {
  const out = [pid];
  for (let i = 0; i < out.length; i++) out.push(...childrenOf(out[i]!));
  return out;
}

async function load(s: Side): Promise<{ r: WrkResult; cpuPerCallUs: number; treeCores: number }> {
  const pids = tree(s.proc.proc.pid!);
  const ticks = (): number => pids.reduce((a, p) => a + (procTicks(p) ?? 0), 0);
  const a = ticks();
  const t0 = performance.now();
  const r = await wrk(LUA, `${s.url}/datasphere/v1/nodes/${s.node}:execute`, CONNECTIONS, DURATION, { BENCH_BODY: BODY, BENCH_AUTH: `Bearer ${s.token}` });
  const secs = (performance.now() - t0) / 1000;
  const used = (ticks() - a) / CLK_TCK;
  assertClean(`berth ${s.mode}`, r);
  return { r, cpuPerCallUs: (used / r.requests) * 1e6, treeCores: used / secs };
}

const median = (xs: number[]): number => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor((s.length - 1) / 2)]!; };

async function main(): Promise<void> {
  if (!existsSync('/usr/bin/bwrap') || process.getuid?.() !== 0) throw new Error('needs root and /usr/bin/bwrap for the sandboxed side');
  log(`work dir ${work}`);
  const sides = [await startSide('bubblewrap'), await startSide('none')];
  const healthy: Record<Mode, number[]> = { bubblewrap: [], none: [] };
  for (let i = 0; i < HEALTHY_ROUNDS; i++) {
    for (const s of i % 2 ? [...sides].reverse() : sides) healthy[s.mode].push(await createToHealthy(s, i));
  }
  log(`create → Healthy (ms): ${JSON.stringify(healthy)}`);
  for (const s of sides) {
    const r = await http('POST', s.url + '/v1/nodes', nodeSpec('serve', s.checkpoint, 2), { authorization: `Bearer ${s.token}` });
    if (r.status !== 201) throw new Error(`create (${s.mode}): ${r.status} ${r.text}`);
    s.node = r.json.id;
    for (let i = 0; (await http('GET', `${s.url}/v1/nodes/${s.node}`, undefined, { authorization: `Bearer ${s.token}` })).json.status !== 'Healthy'; i++) {
      if (i > 600) throw new Error(`serve node (${s.mode}) not Healthy`);
      await sleep(50);
    }
    await wrk(LUA, `${s.url}/datasphere/v1/nodes/${s.node}:execute`, CONNECTIONS, 2, { BENCH_BODY: BODY, BENCH_AUTH: `Bearer ${s.token}` }); // warm-up
  }
  const runs: Record<Mode, Array<{ rps: number; p50: number; p99: number; cpuPerCallUs: number; treeCores: number; background: number }>> = { bubblewrap: [], none: [] };
  for (let i = 0; i < ROUNDS; i++) {
    for (const s of i % 2 ? [...sides].reverse() : sides) {
      const background = await waitQuiet(`round ${i + 1} ${s.mode}`, { cores: 0.5, waitS: 20 });
      const { r, cpuPerCallUs, treeCores } = await load(s);
      runs[s.mode].push({ rps: r.rps, p50: r.latency_us.p50, p99: r.latency_us.p99, cpuPerCallUs, treeCores, background });
      log(`round ${i + 1} ${s.mode}: ${r.rps.toFixed(0)} req/s, p50 ${(r.latency_us.p50 / 1000).toFixed(2)} ms, ${cpuPerCallUs.toFixed(0)} µs CPU/call`);
    }
  }
  await stopAll();

  const row = (m: Mode): string[] => {
    const x = runs[m];
    return [m === 'bubblewrap' ? 'sandbox (bubblewrap)' : 'no sandbox', `${median(healthy[m]).toFixed(0)} (${Math.min(...healthy[m]).toFixed(0)}–${Math.max(...healthy[m]).toFixed(0)})`,
      median(x.map((v) => v.rps)).toFixed(0), (median(x.map((v) => v.p50)) / 1000).toFixed(2), (median(x.map((v) => v.p99)) / 1000).toFixed(2),
      median(x.map((v) => v.cpuPerCallUs)).toFixed(0), median(x.map((v) => v.background)).toFixed(2)];
  };
  const ratio = median(runs.bubblewrap.map((v) => v.rps)) / median(runs.none.map((v) => v.rps));
  const table = [
    `| berth | create → Healthy, ms: median (min–max) of ${HEALTHY_ROUNDS} | req/s (median of ${ROUNDS}) | p50 ms | p99 ms | CPU µs per call (Berth + workers) | other load, cores |`,
    '|---|---|---|---|---|---|---|',
    `| ${row('bubblewrap').join(' | ')} |`,
    `| ${row('none').join(' | ')} |`,
    '',
    `throughput with the sandbox: ${(ratio * 100).toFixed(1)}% of without (goal ≥ 97%); create → Healthy with the sandbox: ${median(healthy.bubblewrap).toFixed(0)} ms (goal < 1000)`,
    `wrk -t1 -c${CONNECTIONS} -d${DURATION}s, rounds alternate; 2 instances per node; ${cpuModel()}, ${memGiB()}; git ${gitHead()}`,
  ].join('\n');
  console.log(table);
  mkdirSync(join(ROOT, 'bench', 'results'), { recursive: true });
  writeFileSync(join(ROOT, 'bench', 'results', `sandbox-${new Date().toISOString().replace(/[:.]/g, '-')}.json`), JSON.stringify({ healthy, runs, ratio }, null, 2));
  if (!args.keep) rmSync(work, { recursive: true, force: true });
}

main().catch(async (err) => {
  console.error(err instanceof Error ? err.message : err);
  await stopAll();
  if (!args.keep) rmSync(work, { recursive: true, force: true });
  process.exit(1);
});
