// Benchmark for `%berth_autocheckpoint`: what recording a checkpoint after every cell costs the
// person at the notebook. One `berth up` (port 0) and one real Jupyter kernel (ipykernel through
// jupyter_client, test/kernel_driver.py); cells are sent over the kernel protocol and timed
// from here, round trip, as a notebook front end sees them. Three kinds of cell, each timed with
// autocheckpoint off (the anchor: the same cell, the same kernel) and on, in alternating rounds:
//   - read-only:  `z`: skipped without hashing
//   - unchanged:  `print(end="")` calls something but changes nothing: the state is hashed
//                 (C pickler), nothing is uploaded
//   - changed:    `z = i` back to back (as "Run All" does): hash, then the dill snapshot and the
//                 upload in a forked child; a cell that finds the previous recording still
//                 running waits for it, so this is the throughput of recording
//   - paused:     `z = i` after the previous recording has ended (untimed wait), as a person
//                 running cells one by one sees it: hash + fork only
// for a small namespace and for one of about 10 MB (a 10 MB bytes value and a 200,000-int list).
// Reports p50 per cell, on/off of the same cell, and the CPU per cell of the kernel and of
// Berth (from /proc).
//
//   node --import tsx bench/kernel.ts          (= npm run bench:kernel; about a minute)
//     [--cells 30] [--rounds 3]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { CLK_TCK, ROOT, berthCommand, cpuModel, gitHead, percentile, posInt, procTicks, treeOf } from './lib.js';
import { startBerth } from '../test/helpers.js';
import { Kernel } from '../test/kernel-support.js';

const { values: args } = parseArgs({ options: { cells: { type: 'string', default: '30' }, rounds: { type: 'string', default: '3' } } });
const CELLS = posInt(args.cells!, 'cells', 5, 1000);
const ROUNDS = posInt(args.rounds!, 'rounds', 1, 20);

type Kind = 'read-only' | 'unchanged' | 'changed' | 'paused';
type Mode = `${Kind} ${'off' | 'on'}`;
const KINDS: Kind[] = ['read-only', 'unchanged', 'changed', 'paused'];
const MODES: Mode[] = KINDS.flatMap((k) => [`${k} off`, `${k} on`] as Mode[]);
const STATES = {
  small: 'import math\nscale = 2.5\ndef f(x):\n    return math.sqrt(x) * scale\nz = 0',
  '10 MB': 'big = bytes(10_000_000)\nnums = list(range(200_000))',
};

const ticksOf = (pids: number[]): number => pids.reduce((s, p) => s + (procTicks(p) ?? 0), 0);

async function main(): Promise<void> {
  const home = mkdtempSync(join(tmpdir(), 'berth-bench-kernel-'));
  const b = await startBerth(home, {}, { cli: berthCommand() });
  const k = await Kernel.start({ PYTHONPATH: join(ROOT, 'python'), BERTH_URL: b.url, BERTH_TOKEN: b.token });
  const rows: string[] = [];
  try {
    await k.ok('%load_ext berth_client');
    for (const [label, setup] of Object.entries(STATES)) {
      await k.ok('%berth_autocheckpoint off');
      await k.ok(setup);
      const times = Object.fromEntries(MODES.map((m) => [m, [] as number[]])) as Record<Mode, number[]>;
      const kernelTicks = Object.fromEntries(MODES.map((m) => [m, 0])) as Record<Mode, number>;
      const berthTicks = Object.fromEntries(MODES.map((m) => [m, 0])) as Record<Mode, number>;
      let n = 0;
      for (let round = 0; round < ROUNDS; round++) {
        for (const mode of MODES) {
          const [kind, state] = mode.split(' ') as [Kind, 'off' | 'on'];
          await k.ok(state === 'off' ? '%berth_autocheckpoint off' : '%berth_autocheckpoint on --keep 5');
          await k.ok(`z = ${++n}`); // a recorded starting point, so 'read-only'/'unchanged' compare against it
          const kPids = k.kernelPid ? [k.kernelPid] : [];
          const bPids = treeOf(b.proc.pid!);
          const k0 = ticksOf(kPids);
          const b0 = ticksOf(bPids);
          for (let i = 0; i < CELLS; i++) {
            const cell = kind === 'read-only' ? 'z' : kind === 'unchanged' ? 'print(end="")' : `z = ${++n}`;
            if (kind === 'paused') await k.ok('get_ipython()._berth_autocheckpoint.collect(block=True)');
            const t = performance.now();
            await k.ok(cell);
            times[mode].push(performance.now() - t);
          }
          kernelTicks[mode] += ticksOf(kPids) - k0;
          berthTicks[mode] += ticksOf(bPids) - b0;
        }
      }
      const p50 = (m: Mode): number => percentile([...times[m]].sort((x, y) => x - y), 50);
      for (const kind of KINDS) {
        const cpu = (t: Record<Mode, number>, m: Mode): string => ((t[m] / CLK_TCK) * 1000 / times[m].length).toFixed(1);
        const off: Mode = `${kind} off`;
        const on: Mode = `${kind} on`;
        rows.push(`| ${label} | ${kind} | ${p50(off).toFixed(1)} | ${p50(on).toFixed(1)} | ${(p50(on) / p50(off)).toFixed(2)}× | `
          + `${cpu(kernelTicks, off)} → ${cpu(kernelTicks, on)} | ${cpu(berthTicks, off)} → ${cpu(berthTicks, on)} |`);
      }
    }
    const kept = (await b.request('GET', '/v1/checkpoints')).body.checkpoints.filter((c: { autosave?: unknown }) => c.autosave).length;
    console.log(`\n${new Date().toISOString()} · ${gitHead()} · ${cpuModel()} · ${CELLS} cells × ${ROUNDS} rounds per row; autosaves kept at the end: ${kept}\n`);
    console.log('| state | cell | p50 ms, off | p50 ms, on | on / off | kernel CPU ms per cell, off → on | Berth CPU ms per cell, off → on |');
    console.log('|---|---|---|---|---|---|---|');
    for (const r of rows) console.log(r);
  } finally {
    await k.close();
    await b.stop();
    rmSync(home, { recursive: true, force: true });
  }
}

await main();
