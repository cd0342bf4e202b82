// Benchmark for `%berth_autocheckpoint`: what recording a checkpoint after every cell costs the
// person at the notebook. One `berth up` (port 0) and one real Jupyter kernel (ipykernel through
// jupyter_client, test/kernel_driver.py); cells are sent over the kernel protocol and timed
// from here, round trip, as a notebook front end sees them. In alternating rounds it runs
//   - off:        autocheckpoint off, a cell that rebinds a name (`z = i`)    ← the anchor
//   - read-only:  on, a cell that reads only (`z`): skipped without a snapshot
//   - unchanged:  on, a cell that calls something but changes nothing (`print(end="")`):
//                 a snapshot is made and hashed, nothing is uploaded
//   - changed:    on, `z = i`: snapshot, upload, server-side pruning (keep 5)
// for a small namespace and for one of about 10 MB (a 10 MB bytes value and a 200,000-int list).
// Reports p50 per cell and its ratio to the anchor of the same state, and the CPU per cell of
// the kernel and of Berth (from /proc).
//
//   node --import tsx bench/kernel.ts          (= npm run bench:kernel; about a minute)
//     [--cells 30] [--rounds 3]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { CLK_TCK, ROOT, cpuModel, gitHead, percentile, posInt, procTicks, treeOf } from './lib.js';
import { startBerth } from '../test/helpers.js';
import { Kernel } from '../test/kernel-support.js';

const { values: args } = parseArgs({ options: { cells: { type: 'string', default: '30' }, rounds: { type: 'string', default: '3' } } });
const CELLS = posInt(args.cells!, 'cells', 5, 1000);
const ROUNDS = posInt(args.rounds!, 'rounds', 1, 20);

type Mode = 'off' | 'read-only' | 'unchanged' | 'changed';
const MODES: Mode[] = ['off', 'read-only', 'unchanged', 'changed'];
const STATES = {
  small: 'import math\nscale = 2.5\ndef f(x):\n    return math.sqrt(x) * scale\nz = 0',
  '10 MB': 'big = bytes(10_000_000)\nnums = list(range(200_000))',
};

const ticksOf = (pids: number[]): number => pids.reduce((s, p) => s + (procTicks(p) ?? 0), 0);

async function main(): Promise<void> {
  const home = mkdtempSync(join(tmpdir(), 'berth-bench-kernel-'));
  const b = await startBerth(home);
  const k = await Kernel.start({ PYTHONPATH: join(ROOT, 'python'), BERTH_URL: b.url, BERTH_TOKEN: b.token });
  const rows: string[] = [];
  try {
    await k.ok('%load_ext berth_client');
    for (const [label, setup] of Object.entries(STATES)) {
      await k.ok('%berth_autocheckpoint off');
      await k.ok(setup);
      const times: Record<Mode, number[]> = { off: [], 'read-only': [], unchanged: [], changed: [] };
      const kernelTicks: Record<Mode, number> = { off: 0, 'read-only': 0, unchanged: 0, changed: 0 };
      const berthTicks: Record<Mode, number> = { off: 0, 'read-only': 0, unchanged: 0, changed: 0 };
      let n = 0;
      for (let round = 0; round < ROUNDS; round++) {
        for (const mode of MODES) {
          await k.ok(mode === 'off' ? '%berth_autocheckpoint off' : '%berth_autocheckpoint on --keep 5');
          await k.ok(`z = ${++n}`); // a recorded starting point, so 'read-only'/'unchanged' compare against it
          const kPids = k.kernelPid ? [k.kernelPid] : [];
          const bPids = treeOf(b.proc.pid!);
          const k0 = ticksOf(kPids);
          const b0 = ticksOf(bPids);
          for (let i = 0; i < CELLS; i++) {
            const cell = mode === 'read-only' ? 'z' : mode === 'unchanged' ? 'print(end="")' : `z = ${++n}`;
            const t = performance.now();
            await k.ok(cell);
            times[mode].push(performance.now() - t);
          }
          kernelTicks[mode] += ticksOf(kPids) - k0;
          berthTicks[mode] += ticksOf(bPids) - b0;
        }
      }
      const p50 = (m: Mode): number => percentile([...times[m]].sort((x, y) => x - y), 50);
      for (const mode of MODES) {
        const cells = times[mode].length;
        rows.push(`| ${label} | ${mode} | ${p50(mode).toFixed(1)} | ${(p50(mode) / p50('off')).toFixed(2)}× | `
          + `${((kernelTicks[mode] / CLK_TCK) * 1000 / cells).toFixed(1)} | ${((berthTicks[mode] / CLK_TCK) * 1000 / cells).toFixed(1)} |`);
      }
    }
    const kept = (await b.request('GET', '/v1/checkpoints')).body.checkpoints.filter((c: { autosave?: unknown }) => c.autosave).length;
    console.log(`\n${new Date().toISOString()} · ${gitHead()} · ${cpuModel()} · ${CELLS} cells × ${ROUNDS} rounds per row; autosaves kept at the end: ${kept}\n`);
    console.log('| state | autocheckpoint | p50 ms per cell | vs off | kernel CPU ms per cell | Berth CPU ms per cell |');
    console.log('|---|---|---|---|---|---|');
    for (const r of rows) console.log(r);
  } finally {
    await k.close();
    await b.stop();
    rmSync(home, { recursive: true, force: true });
  }
}

await main();
