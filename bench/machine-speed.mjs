// How fast this machine runs a gateway's kind of JavaScript, per CPU, run after run: the same
// probe (JSON parse and stringify, small objects, a Map, header strings: the work a gateway does
// per call, no I/O) in a fresh Node process pinned to one CPU at a time with taskset, several
// times over. On a machine whose speed is steady every cell of the table is about the same; on
// the 2-vCPU machines of issue 8 it is not (docs/benchmarks.md, "Two speeds"), and every
// benchmark figure of a run inherits the speed of the CPU and the minute it ran on.
//
//   node bench/machine-speed.mjs [--runs 6] [--iterations 1000000]
// Prints one row per run, ns per probe iteration on each CPU; the spread at the end.
import { spawnSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const { values: args } = parseArgs({ options: {
  runs: { type: 'string', default: '6' }, iterations: { type: 'string', default: '1000000' }, probe: { type: 'boolean', default: false },
} });
const ITERATIONS = Math.min(50_000_000, Math.max(10_000, Number(args.iterations) || 1_000_000));

if (args.probe) {
  const body = JSON.stringify({ folder_id: 'default', input: { x: 1, name: 'abc', arr: [1, 2, 3] } });
  const seen = new Map();
  const one = (i) => {
    const o = JSON.parse(body);
    o.k = `key${i & 1023}`;
    seen.set(o.k, o);
    const h = { 'content-type': 'application/json', 'content-length': String(body.length), x: o.input.name };
    let s = '';
    for (const k in h) s += `${k}: ${h[k]}\r\n`;
    return s.length + JSON.stringify(o).length;
  };
  let acc = 0;
  for (let i = 0; i < ITERATIONS / 10; i++) acc += one(i); // warm-up: optimised code before the clock starts
  const t = process.hrtime.bigint();
  for (let i = 0; i < ITERATIONS; i++) acc += one(i);
  console.log((Number(process.hrtime.bigint() - t) / ITERATIONS).toFixed(0), acc > 0 ? '' : '!');
} else {
  const runs = Math.min(100, Math.max(1, Number(args.runs) || 6));
  const cpus = availableParallelism();
  const self = fileURLToPath(import.meta.url);
  const all = [];
  console.log(`| run | ${Array.from({ length: cpus }, (_, c) => `CPU ${c}: ns/iteration`).join(' | ')} |`);
  console.log(`|---|${'---:|'.repeat(cpus)}`);
  for (let r = 1; r <= runs; r++) {
    const row = [];
    for (let c = 0; c < cpus; c++) {
      const p = spawnSync('taskset', ['-c', String(c), process.execPath, self, '--probe', '--iterations', String(ITERATIONS)], { encoding: 'utf8', timeout: 120_000 });
      if (p.status !== 0) throw new Error(`probe on CPU ${c} failed: ${p.error?.message ?? p.stderr}`);
      const ns = Number(p.stdout.trim().split(' ')[0]);
      row.push(ns);
      all.push(ns);
    }
    console.log(`| ${r} | ${row.join(' | ')} |`);
  }
  all.sort((a, b) => a - b);
  console.log(`\nfastest ${all[0]} ns, median ${all[Math.floor(all.length / 2)]} ns, slowest ${all.at(-1)} ns: slowest / fastest ${(all.at(-1) / all[0]).toFixed(2)}×`);
}
