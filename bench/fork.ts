// Benchmark for forked instances (issue 10): for checkpoints holding ~10 MB and ~1 GB of numpy
// state, side by side in one run on one `berth up`:
//   - scale-out time to a ready instance, forked from the node's template vs a fresh process
//     (goal: under 100 ms forked, for both sizes). Measured from the PATCH that raises
//     minInstances to the new instance's `Healthy` transition (Berth's own timestamps), and from
//     the instance's creation to `Healthy`;
//   - memory of four instances, the sum of PSS from /proc/<pid>/smaps_rollup: forked (template
//     included) vs fresh vs `gunicorn --preload -w 4` serving the same state (arbiter included)
//     (goal: forked under 1.5× one instance for 1 GB). "One instance" is a fresh instance's PSS.
// Instances are added one at a time (1 → 4), so fresh 1 GB restores never run four at once.
//
//   node --import tsx bench/fork.ts            (= npm run bench:fork; about 4 minutes)
//     [--sizes 10,1024] [--rounds 3] [--keep]
//
// Prints a markdown table; raw numbers go to bench/results/ (ignored by git). Uses the sandbox
// when run as root with bubblewrap, else --sandbox none. Stops everything it started on exit.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ROOT, berthCommand, freePort, gitHead, http, log, machine, managed, onSignals, posInt, readLog, sleep, start, stop, treeOf } from './lib.js';

const PYTHON = '/usr/bin/python3';
const { values: args } = parseArgs({
  options: {
    sizes: { type: 'string', default: '10,1024' },
    rounds: { type: 'string', default: '3' },
    keep: { type: 'boolean', default: false },
  },
});
const SIZES = args.sizes!.split(',').map((s) => posInt(s, 'sizes', 1, 4096));
const ROUNDS = posInt(args.rounds!, 'rounds', 1, 20);
const SANDBOX = process.getuid?.() === 0 && existsSync('/usr/bin/bwrap') ? 'bubblewrap' : 'none';

const work = mkdtempSync(join(tmpdir(), 'berth-bench-fork-'));
const stopAll = async (): Promise<void> => { for (const m of [...managed].reverse()) await stop(m, 15_000); };
onSignals(stopAll, () => { if (!args.keep) rmSync(work, { recursive: true, force: true }); });

let url = '';
let auth: Record<string, string> = {};
const api = (method: string, path: string, body?: unknown, timeoutMs = 30_000) => http(method, url + path, body, auth, timeoutMs);

function pssKb(pid: number): number {
  return Number(/^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1] ?? NaN);
}
function ppidOf(pid: number): number { return Number(/^PPid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]); }
/** The Python worker under the pid Berth shows for a fresh instance (bwrap's). */
function workerUnder(pid: number): number {
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    let cmd = '';
    try { cmd = readFileSync(`/proc/${e}/cmdline`, 'utf8'); } catch { continue; }
    if (!cmd.includes('berth_worker') || cmd.startsWith('/usr/bin/bwrap')) continue;
    for (let p = Number(e), i = 0; p > 1 && i < 6; i++) {
      if (p === pid) return Number(e);
      try { p = ppidOf(p); } catch { break; }
    }
  }
  return pid; // unsandboxed: the pid is the worker
}

const at = (inst: any, status: string): number => Date.parse(inst.transitions.findLast((t: any) => t.status === status).at);

async function waitNode(id: string, healthyCount: number, timeoutMs: number, everyMs = 10): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const n = (await api('GET', `/v1/nodes/${id}`)).json;
    const healthy = n.instances.filter((i: any) => i.status === 'Healthy');
    if (healthy.length === healthyCount && n.instances.length === healthyCount) return n;
    if (Date.now() > deadline) throw new Error(`node ${id}: ${healthy.length} of ${healthyCount} Healthy after ${timeoutMs / 1000}s: ${JSON.stringify(n.instances.map((i: any) => [i.status, i.lastError]))}`);
    await sleep(everyMs);
  }
}

interface ScaleOut { fromPatchMs: number; createdToHealthyMs: number }

/** Raises the node to `k` instances; the new instance's times. */
async function scaleTo(id: string, k: number, fork: boolean, timeoutMs: number): Promise<ScaleOut> {
  const before = new Set(((await api('GET', `/v1/nodes/${id}`)).json.instances as any[]).map((i) => i.id));
  const t0 = Date.now();
  const r = await api('PATCH', `/v1/nodes/${id}`, { scaling: { minInstances: k, maxInstances: k, fork } });
  if (r.status !== 200) throw new Error(`PATCH: ${r.status} ${r.text}`);
  const n = await waitNode(id, k, timeoutMs);
  const added = n.instances.find((i: any) => !before.has(i.id));
  return { fromPatchMs: at(added, 'Healthy') - t0, createdToHealthyMs: at(added, 'Healthy') - at(added, 'Undefined') };
}

async function scaleDown(id: string, k: number, fork: boolean): Promise<void> {
  const r = await api('PATCH', `/v1/nodes/${id}`, { scaling: { minInstances: k, maxInstances: k, fork } });
  if (r.status !== 200) throw new Error(`PATCH: ${r.status} ${r.text}`);
  await waitNode(id, k, 60_000, 50);
}

interface ModeResult { mode: string; firstHealthyS: number; scaleOuts: ScaleOut[]; pssKb: number[]; templateKb: number | null }

async function berthMode(size: number, checkpoint: string, mode: 'forked' | 'fresh'): Promise<ModeResult> {
  const fork = mode === 'forked';
  const memoryGb = Math.max(1, Math.ceil((3 * size) / 1024) + 1);
  const slow = size >= 256 ? 10 * 60_000 : 60_000;
  const t0 = Date.now();
  const c = await api('POST', '/v1/nodes', {
    name: `${mode}-${size}`, checkpointId: checkpoint, inputs: [{ name: 'x', type: 'int' }], outputs: [{ name: 'out', type: 'float' }],
    resources: { cores: 1, memoryGb }, scaling: { minInstances: 1, maxInstances: 1, fork, scaleDownDelaySeconds: 0 },
  });
  if (c.status !== 201) throw new Error(`create: ${c.status} ${c.text}`);
  const id = c.json.id;
  await waitNode(id, 1, slow, 50);
  const firstHealthyS = (Date.now() - t0) / 1000;
  log(`${mode} ${size} MB: first instance Healthy in ${firstHealthyS.toFixed(2)} s`);
  const scaleOuts: ScaleOut[] = [];
  for (let k = 2; k <= 4; k++) scaleOuts.push(await scaleTo(id, k, fork, slow));
  // every instance serves a few calls first (a call touches the namespace, as in use)
  for (let i = 0; i < 12; i++) {
    const r = await api('POST', `/datasphere/v1/nodes/${id}:execute`, { folder_id: 'default', input: { x: 1 } });
    if (r.status !== 200) throw new Error(`call: ${r.status} ${r.text}`);
  }
  await sleep(1000);
  const n = (await api('GET', `/v1/nodes/${id}`)).json;
  const pids: number[] = n.instances.map((i: any) => (fork ? i.pid : workerUnder(i.pid)));
  const pss = pids.map(pssKb);
  const templateKb = fork ? pssKb(ppidOf(pids[0]!)) : null;
  log(`${mode} ${size} MB: 4 instances ${pss.map((k) => (k / 1024).toFixed(0)).join(' + ')} MB${templateKb !== null ? ` + template ${(templateKb / 1024).toFixed(0)} MB` : ''}`);
  for (let r = 0; r < ROUNDS - 1; r++) {
    await scaleDown(id, 3, fork);
    scaleOuts.push(await scaleTo(id, 4, fork, slow));
  }
  log(`${mode} ${size} MB: scale-outs ${scaleOuts.map((s) => s.fromPatchMs).join(', ')} ms`);
  await api('DELETE', `/v1/nodes/${id}`, undefined, 120_000);
  return { mode, firstHealthyS, scaleOuts, pssKb: pss, templateKb };
}

async function gunicorn(size: number): Promise<{ pssKb: number[]; startS: number }> {
  const port = await freePort();
  const t0 = Date.now();
  const g = start(`gunicorn-${size}`, PYTHON, ['-m', 'gunicorn', '--preload', '-w', '4', '-k', 'sync', '-b', `127.0.0.1:${port}`, '--chdir', join(ROOT, 'bench/apps'), 'numpy_state_app:app'],
    join(work, `gunicorn-${size}.log`), { BENCH_STATE_BYTES: String(size * 1024 * 1024), PYTHONUNBUFFERED: '1' });
  for (;;) {
    try { if ((await http('POST', `http://127.0.0.1:${port}/call`, { x: 1 }, {}, 2000)).status === 200) break; } catch { /* not yet */ }
    if (Date.now() - t0 > 10 * 60_000) throw new Error(`gunicorn did not answer: ${readLog(join(work, `gunicorn-${size}.log`))}`);
    await sleep(50);
  }
  const startS = (Date.now() - t0) / 1000;
  for (let i = 0; i < 12; i++) await http('POST', `http://127.0.0.1:${port}/call`, { x: 1 });
  await sleep(1000);
  const pss = treeOf(g.proc.pid!).map(pssKb); // the arbiter (which built the state) and its 4 workers
  await stop(g, 10_000);
  return { pssKb: pss, startS };
}

const mb = (kb: number): string => (kb / 1024).toFixed(0);
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;

async function main(): Promise<void> {
  const home = join(work, 'home');
  mkdirSync(home);
  const port = await freePort();
  const [nodeBin, ...cli] = berthCommand();
  start('berth', nodeBin!, [...cli, 'up', '--port', String(port), '--home', home, '--sandbox', SANDBOX],
    join(work, 'berth.log'), { BERTH_HOME: home, BERTH_PYTHON: PYTHON, BERTH_CHECKPOINT_RUN_MEMORY_GB: '8' });
  url = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    try { if ((await http('GET', url + '/v1/health', undefined, {}, 1000)).status === 200) break; } catch { /* not yet */ }
    if (i > 300) throw new Error(`berth up did not start: ${readLog(join(work, 'berth.log'))}`);
    await sleep(100);
  }
  auth = { authorization: `Bearer ${readFileSync(join(home, 'admin-token'), 'utf8').trim()}` };
  const results: Array<{ size: number; checkpointS: number; forked: ModeResult; fresh: ModeResult; gunicorn: { pssKb: number[]; startS: number } }> = [];
  for (const size of SIZES) {
    const t0 = Date.now();
    const cp = await api('POST', '/v1/checkpoints', {
      name: `state-${size}`,
      cells: [`import numpy as np\ndata = np.ones(${(size * 1024 * 1024) / 8})\ncounter = 0\nx = 0\n`, 'counter += x\nout = float(data[0]) + counter\n'],
    }, 15 * 60_000);
    if (cp.status !== 201) throw new Error(`checkpoint: ${cp.status} ${cp.text.slice(0, 2000)}`);
    const checkpointS = (Date.now() - t0) / 1000;
    log(`checkpoint ${size} MB: ${(cp.json.size / 1024 / 1024).toFixed(0)} MB blob in ${checkpointS.toFixed(1)} s`);
    // side by side: forked, then fresh, then the gunicorn anchor, on the same machine in one run
    const forked = await berthMode(size, cp.json.id, 'forked');
    const fresh = await berthMode(size, cp.json.id, 'fresh');
    const g = await gunicorn(size);
    log(`gunicorn --preload -w 4, ${size} MB: ${g.pssKb.map(mb).join(' + ')} MB`);
    results.push({ size, checkpointS, forked, fresh, gunicorn: g });
  }
  await stopAll();

  const lines: string[] = [];
  lines.push(`machine: ${Object.entries(machine({ sandbox: SANDBOX, python: PYTHON })).map(([k, v]) => `${k}=${v}`).join(', ')}`, '');
  lines.push('| state | scale-out, forked (PATCH → Healthy, median / max) | created → Healthy, forked | scale-out, fresh (median / max) | ratio fresh ÷ forked | first instance (forked: template restore + fork) |');
  lines.push('|---|---|---|---|---|---|');
  for (const r of results) {
    const f = r.forked.scaleOuts.map((s) => s.fromPatchMs);
    const fc = r.forked.scaleOuts.map((s) => s.createdToHealthyMs);
    const n = r.fresh.scaleOuts.map((s) => s.fromPatchMs);
    lines.push(`| ${r.size} MB | ${median(f)} / ${Math.max(...f)} ms | ${median(fc)} / ${Math.max(...fc)} ms | ${median(n)} / ${Math.max(...n)} ms | ${(median(n) / median(f)).toFixed(1)}× | forked ${r.forked.firstHealthyS.toFixed(2)} s, fresh ${r.fresh.firstHealthyS.toFixed(2)} s |`);
  }
  lines.push('', '| state | one instance (fresh PSS) | 4 forked + template (sum of PSS) | 4 fresh | gunicorn --preload -w 4 (+ arbiter) | forked ÷ one | fresh ÷ one | gunicorn ÷ one |');
  lines.push('|---|---|---|---|---|---|---|---|');
  for (const r of results) {
    const one = median(r.fresh.pssKb);
    const forked = r.forked.pssKb.reduce((a, x) => a + x, 0) + (r.forked.templateKb ?? 0);
    const fresh = r.fresh.pssKb.reduce((a, x) => a + x, 0);
    const guni = r.gunicorn.pssKb.reduce((a, x) => a + x, 0);
    lines.push(`| ${r.size} MB | ${mb(one)} MB | ${mb(forked)} MB (${r.forked.pssKb.map(mb).join(' + ')} + ${mb(r.forked.templateKb ?? 0)}) | ${mb(fresh)} MB | ${mb(guni)} MB (${r.gunicorn.pssKb.map(mb).join(' + ')}) | ${(forked / one).toFixed(2)}× | ${(fresh / one).toFixed(2)}× | ${(guni / one).toFixed(2)}× |`);
  }
  const table = lines.join('\n');
  console.log(table);
  const dir = join(ROOT, 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `fork-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, JSON.stringify({ head: gitHead(), sizes: SIZES, rounds: ROUNDS, sandbox: SANDBOX, results }, null, 2));
  log(`raw numbers: ${file}`);
  if (!args.keep) rmSync(work, { recursive: true, force: true });
}

main().catch(async (err) => {
  console.error(err);
  console.error(readLog(join(work, 'berth.log')));
  await stopAll();
  process.exit(1);
});
