// Benchmark for "Scale to zero, with calls held": the first call to a cell node that has scaled
// to zero (held while an instance starts and restores its checkpoint, then served), side by side
// with starting the same model server cold with `gunicorn --preload -w 1` + Flask
// (bench/apps/state_app.py) until it answers its first call, for a checkpoint holding ~10 MB and
// ~1 GB of numpy state. The two are interleaved round by round, in one run, on one machine.
// Reported per size: first-call latency (median, min, max) of each, the ratio, and the CPU time the
// first call cost (Berth: `berth up` and everything under it, instance included; gunicorn: its
// process tree), from /proc.
//
//   node --import tsx bench/scale-to-zero.ts      (= npm run bench:scale-to-zero; ~3–6 minutes)
//     [--sizes 10,1000]  (MB of state per round)  [--rounds 5]  [--big-rounds 3]  (rounds for sizes ≥ 500 MB)
//     [--keep]  (keep the temporary directory: Berth's home, the logs, the state files)
//
// Every network call goes to 127.0.0.1; every process started is stopped on every exit path.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import {
  CLK_TCK, ROOT, berthCommand, cpuModel, freePort, gitHead, http, log, managed, memGiB, onSignals, percentile, posInt, procTicks, readLog, sleep,
  start, stop, treeOf, type Managed,
} from './lib.js';

const PYTHON = '/usr/bin/python3';
const APPS = join(ROOT, 'bench', 'apps');

const { values: args } = parseArgs({
  options: {
    sizes: { type: 'string', default: '10,1000' },
    rounds: { type: 'string', default: '5' },
    'big-rounds': { type: 'string', default: '3' },
    keep: { type: 'boolean', default: false },
  },
});
const SIZES = args.sizes!.split(',').map((s) => posInt(s.trim(), 'sizes', 1, 4000));
const ROUNDS = posInt(args.rounds!, 'rounds', 1, 50);
const BIG_ROUNDS = posInt(args['big-rounds']!, 'big-rounds', 1, 50);

const LOAD_BEFORE = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
const work = mkdtempSync(join(tmpdir(), 'berth-bench-zero-'));
const home = join(work, 'home');
onSignals(async () => { for (const m of [...managed].reverse()) await stop(m, 5000); }, () => { if (!args.keep) rmSync(work, { recursive: true, force: true }); });

/** CPU ticks of a process tree, now (processes that already exited are not counted: both sides keep theirs alive until measured). */
function treeTicks(pid: number): number {
  let t = 0;
  for (const p of treeOf(pid)) t += procTicks(p) ?? 0;
  return t;
}

interface Sample { ms: number; cpuMs: number; phases?: { spawn: number; restore: number; serve: number } }

async function main(): Promise<void> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const [nodeBin, ...cli] = berthCommand();
  const berth = start('berth', nodeBin!, [...cli, 'up', '--port', String(port), '--home', home],
    join(work, 'berth.log'), { BERTH_HOME: home, BERTH_PYTHON: PYTHON });
  for (let i = 0; ; i++) {
    try { if ((await http('GET', `${url}/v1/health`)).status === 200) break; } catch { /* not yet */ }
    if (i > 600) throw new Error(`berth up did not start:\n${readLog(join(work, 'berth.log'))}`);
    await sleep(100);
  }
  const token = readFileSync(join(home, 'admin-token'), 'utf8').trim();
  const auth = { authorization: `Bearer ${token}` };
  const rows: Array<{ mb: number; berth: Sample[]; gunicorn: Sample[]; checkpointBytes: number }> = [];

  for (const mb of SIZES) {
    const n = Math.round((mb * 1024 * 1024) / 8);
    log(`${mb} MB: making the checkpoint and the pickle`);
    const cp = await http('POST', `${url}/v1/checkpoints`, {
      name: `state-${mb}`, script: `import numpy as np\nstate = np.full(${n}, 1.0)\nx = 0.0\n# %%\nresult = float(state[0]) + x\n`,
    }, auth, 20 * 60_000);
    if (cp.status !== 201) throw new Error(`checkpoint: ${cp.status} ${cp.text.slice(0, 500)}`);
    const pkl = join(work, `state-${mb}.pkl`);
    const made = spawnSync(PYTHON, ['-c', `import numpy as np, pickle, sys; pickle.dump(np.full(${n}, 1.0), open(sys.argv[1], "wb"), protocol=5)`, pkl]);
    if (made.status !== 0) throw new Error(`pickle: ${made.stderr}`);
    const node = await http('POST', `${url}/v1/nodes`, {
      kind: 'cell', name: `zero-${mb}`, checkpointId: `state-${mb}`, inputs: [{ name: 'x', type: 'float' }], outputs: [{ name: 'result', type: 'float' }],
      scaling: { minInstances: 0, maxInstances: 1, scaleDownDelaySeconds: 1, holdTimeout: 600 },
    }, auth);
    if (node.status !== 201) throw new Error(`node: ${node.status} ${node.text}`);
    const id = node.json.id as string;
    const row = { mb, berth: [] as Sample[], gunicorn: [] as Sample[], checkpointBytes: cp.json.size as number };
    rows.push(row);
    const rounds = mb >= 500 ? BIG_ROUNDS : ROUNDS;
    for (let r = 0; r < rounds; r++) {
      // interleaved, the order alternating: neither side always runs on a cache the other warmed
      for (const side of r % 2 === 0 ? ['berth', 'gunicorn'] : ['gunicorn', 'berth']) {
        if (side === 'berth') row.berth.push(await berthFirstCall(url, auth, id, berth));
        else row.gunicorn.push(await gunicornFirstCall(pkl, mb, r));
        const last = side === 'berth' ? row.berth[row.berth.length - 1]! : row.gunicorn[row.gunicorn.length - 1]!;
        log(`${mb} MB round ${r + 1}: ${side} first call ${last.ms.toFixed(0)} ms, CPU ${last.cpuMs.toFixed(0)} ms${last.phases ? ` (spawn ${last.phases.spawn}, restore ${last.phases.restore}, serve ${last.phases.serve.toFixed(0)})` : ''}`);
      }
    }
    await http('DELETE', `${url}/v1/nodes/${id}`, undefined, auth);
  }

  await stop(berth, 30_000);
  const med = (xs: number[]): number => percentile([...xs].sort((a, b) => a - b), 50);
  const f = (x: number): string => x.toFixed(0);
  const lines = [
    `load average before: ${LOAD_BEFORE}, after: ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`,
    '',
    `Scale to zero, first call (${new Date().toISOString().slice(0, 10)}, commit ${gitHead()}, ${cpuModel()}, ${memGiB()} GiB; rounds interleaved)`,
    '',
    '| state | checkpoint | Berth first call at zero, ms (median / min / max) | gunicorn --preload cold to first answer, ms (median / min / max) | Berth ÷ gunicorn (median) | CPU per first call, ms: Berth / gunicorn | Berth phases, ms (median): spawn / restore / serve |',
    '|---|---|---|---|---|---|---|',
    ...rows.map((r) => {
      const b = r.berth.map((s) => s.ms); const g = r.gunicorn.map((s) => s.ms);
      const ph = r.berth.flatMap((s) => (s.phases ? [s.phases] : []));
      const phases = ph.length ? `${f(med(ph.map((p) => p.spawn)))} / ${f(med(ph.map((p) => p.restore)))} / ${f(med(ph.map((p) => p.serve)))}` : '—';
      return `| ${r.mb} MB | ${(r.checkpointBytes / 1024 / 1024).toFixed(0)} MB | ${f(med(b))} / ${f(Math.min(...b))} / ${f(Math.max(...b))} | ${f(med(g))} / ${f(Math.min(...g))} / ${f(Math.max(...g))} | ${(med(b) / med(g)).toFixed(2)} | ${f(med(r.berth.map((s) => s.cpuMs)))} / ${f(med(r.gunicorn.map((s) => s.cpuMs)))} | ${phases} |`;
    }),
  ];
  console.log(lines.join('\n'));
}

/** Waits until the node has scaled to zero, then times one call from sending to its answer. */
async function berthFirstCall(url: string, auth: Record<string, string>, id: string, berth: Managed): Promise<Sample> {
  for (let i = 0; ; i++) {
    const n = await http('GET', `${url}/v1/nodes/${id}`, undefined, auth);
    if (n.json?.scaledToZero && n.json.instances.length === 0) break;
    if (i > 3000) throw new Error(`node ${id} did not scale to zero: ${n.text.slice(0, 500)}`);
    await sleep(50);
  }
  await sleep(300); // the instance's exit settles
  const cpu0 = treeTicks(berth.proc.pid!);
  const wall0 = Date.now();
  const t0 = performance.now();
  const r = await http('POST', `${url}/datasphere/v1/nodes/${id}:execute`, { folder_id: 'default', input: { x: 1.5 } }, auth, 600_000);
  const ms = performance.now() - t0;
  const cpuMs = ((treeTicks(berth.proc.pid!) - cpu0) * 1000) / CLK_TCK;
  if (r.status !== 200 || r.json?.output?.result !== 2.5) throw new Error(`berth first call: ${r.status} ${r.text.slice(0, 500)}`);
  // where the time went, from the instance's timestamped transitions (ms resolution):
  // spawn = held → Created (sandbox, interpreter, worker socket), restore = Created → Healthy
  // (checkpoint restored, health check passed), serve = Healthy → answer (sessions opened, the call)
  const n = await http('GET', `${url}/v1/nodes/${id}`, undefined, auth);
  const at = (status: string): number | undefined => {
    const tr = (n.json?.instances?.[0]?.transitions ?? []) as Array<{ status: string; at: string }>;
    const hit = tr.filter((x) => x.status === status).pop();
    return hit ? Date.parse(hit.at) - wall0 : undefined;
  };
  const created = at('Created');
  const healthy = at('Healthy');
  const phases = created !== undefined && healthy !== undefined ? { spawn: created, restore: healthy - created, serve: ms - healthy } : undefined;
  return { ms, cpuMs, ...(phases ? { phases } : {}) };
}

/** Starts gunicorn --preload cold and times it from spawn to its first answered call. */
async function gunicornFirstCall(pkl: string, mb: number, round: number): Promise<Sample> {
  const port = await freePort();
  const t0 = performance.now();
  const m = start(`gunicorn-${mb}-${round}`, PYTHON, ['-m', 'gunicorn', '--preload', '-w', '1', '-k', 'sync', '-b', `127.0.0.1:${port}`, '--chdir', APPS, 'state_app:app'],
    join(work, `gunicorn-${mb}.log`), { BERTH_BENCH_STATE: pkl });
  try {
    for (;;) {
      try {
        const r = await http('POST', `http://127.0.0.1:${port}/datasphere/v1/nodes/x:execute`, { folder_id: 'default', input: { x: 1.5 } }, {}, 600_000);
        const ms = performance.now() - t0;
        const cpuMs = (treeTicks(m.proc.pid!) * 1000) / CLK_TCK;
        if (r.status !== 200 || r.json?.output?.result !== 2.5) throw new Error(`gunicorn: ${r.status} ${r.text.slice(0, 300)}`);
        return { ms, cpuMs };
      } catch (err) {
        if (!/fetch failed|ECONNREFUSED/.test(String((err as Error & { cause?: Error }).cause ?? err))) throw err;
      }
      if (m.proc.exitCode !== null) throw new Error(`gunicorn exited:\n${readLog(join(work, `gunicorn-${mb}.log`))}`);
      await sleep(5);
    }
  } finally {
    await stop(m, 5000);
  }
}

main().then(async () => {
  if (!args.keep) rmSync(work, { recursive: true, force: true });
  process.exit(0);
}, async (err) => {
  console.error(err);
  for (const m of [...managed].reverse()) await stop(m, 5000);
  if (!args.keep) rmSync(work, { recursive: true, force: true });
  process.exit(1);
});
