// What the dashboard costs the server (docs/dashboard.md): CPU of `berth up` with 50 nodes,
// idle, then with 1 and 10 pages open (watch streams), each for the same window; and the
// bytes a page receives. Anchor: the same server with no page open, in the same run.
// Run: npm run bench:dashboard
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startBerth, tempHome, removeHome } from '../test/helpers.js';
import { berthCommand } from './lib.js';
import { SqliteStore } from '../src/store/sqlite.js';
import { parseNodeSpec } from '../src/core/node-spec.js';
import { DEFAULT_QUOTA } from '../src/folders/quotas.js';

const WINDOW_MS = Number(process.env.WINDOW_MS ?? 20_000);
const TICKS = 100; // USER_HZ on Linux

function cpuSeconds(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) / TICKS; // utime + stime
}

async function main(): Promise<void> {
  const home = tempHome();
  const store = new SqliteStore(join(home, 'berth.db'));
  await store.migrate();
  const now = new Date().toISOString();
  for (let i = 0; i < 50; i++) {
    const spec = parseNodeSpec({ kind: 'cell', name: `bulk-${i}`, checkpointId: 'c0000000000000000000', inputs: [{ name: 'x', type: 'int' }], outputs: [{ name: 'y', type: 'int' }] },
      { defaultFolder: 'default', defaultProject: 'default', defaultPython: '/usr/bin/python3' });
    await store.insertNode({ id: `bulk${String(i).padStart(16, '0')}`, spec, revision: 1, rollout: null, status: 'Suspended',
      transitions: [{ status: 'Suspended', at: now }], createdAt: now, updatedAt: now, createdBy: 'bench' }, { ...DEFAULT_QUOTA, maxNodes: 100, maxInstances: 1000 });
  }
  await store.close();
  const b = await startBerth(home, {}, { cli: berthCommand() });
  const pid = b.proc.pid!;
  try {
    await new Promise((r) => setTimeout(r, 3000)); // past start-up
    const rows: Array<[string, number, number]> = [];
    for (const pages of [0, 1, 10]) {
      const aborts: AbortController[] = [];
      let bytes = 0;
      for (let i = 0; i < pages; i++) {
        const a = new AbortController();
        aborts.push(a);
        const res = await fetch(`${b.url}/v1/watch`, { headers: { authorization: `Bearer ${b.token}` }, signal: a.signal });
        void (async () => { try { for await (const c of res.body!) bytes += (c as Uint8Array).length; } catch { /* aborted */ } })();
      }
      await new Promise((r) => setTimeout(r, 2000)); // the first full state is not the steady cost
      const c0 = cpuSeconds(pid); const b0 = bytes;
      await new Promise((r) => setTimeout(r, WINDOW_MS));
      const cpu = cpuSeconds(pid) - c0;
      rows.push([`${pages} page${pages === 1 ? '' : 's'} open`, (cpu / (WINDOW_MS / 1000)) * 100, (bytes - b0) / Math.max(1, pages) / (WINDOW_MS / 1000)]);
      for (const a of aborts) a.abort();
    }
    console.log(`berth up with 50 nodes, ${WINDOW_MS / 1000} s per row (machine: ${(await import('node:os')).cpus().length} cores)`);
    console.log('| | server CPU (% of a core) | vs idle | bytes/s per page |');
    console.log('|---|---|---|---|');
    for (const [what, cpu, bps] of rows) console.log(`| ${what} | ${cpu.toFixed(2)} | ${(cpu / rows[0]![1]).toFixed(2)}× | ${what.startsWith('0') ? '–' : bps.toFixed(0)} |`);
  } finally {
    await b.stop();
    removeHome(home);
  }
}

await main();
