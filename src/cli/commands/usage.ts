// `berth usage`: what folders used (instance time per node and preset, calls, bytes in and
// out) over a range, grouped by node, folder or day: GET /v1/usage as a table or --json.
import type { Command } from 'commander';
import { bytes, table } from '../format.js';
import { clientFor, out, type JsonOption } from '../shared.js';

interface UsageRow {
  folderId: string; nodeId?: string; nodeName?: string | null; preset?: string; day?: string;
  instanceSeconds: number; calls: number; bytesIn: number; bytesOut: number;
}
interface UsageAnswer { from: string; to: string; groupBy: 'node' | 'folder' | 'day'; rows: UsageRow[] }

/** 3725.5 → "1h 02m 06s": instance time reads as a duration. */
export function duration(seconds: number): string {
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  if (h > 0) return `${h}h ${String(m).padStart(2, '0')}m ${String(r).padStart(2, '0')}s`;
  if (m > 0) return `${m}m ${String(r).padStart(2, '0')}s`;
  return `${seconds < 10 ? seconds.toFixed(1) : r}s`;
}

export function registerUsage(cli: Command): void {
  const client = clientFor(cli);
  cli.command('usage').description('What your folders used: instance time per node and preset, calls, bytes in and out')
    .option('--folder <id>', 'only this folder (default: every folder the token may read)')
    .option('--from <iso>', 'start, e.g. 2025-01-01 or 2025-01-01T12:00:00Z (default: 30 days before --to)')
    .option('--to <iso>', 'end (default: now)')
    .option('--group-by <how>', 'node, folder or day', 'node')
    .option('--json', 'print JSON')
    .action(async (o: JsonOption & { folder?: string; from?: string; to?: string; groupBy: string }) => {
      const q = new URLSearchParams({ groupBy: o.groupBy });
      if (o.folder !== undefined) q.set('folder', o.folder);
      if (o.from !== undefined) q.set('from', o.from);
      if (o.to !== undefined) q.set('to', o.to);
      const r = await client().request<UsageAnswer>('GET', `/v1/usage?${q}`);
      out(o.json, r, () => {
        const first = r.groupBy === 'node' ? ['FOLDER', 'NODE', 'ID', 'PRESET'] : r.groupBy === 'day' ? ['FOLDER', 'DAY'] : ['FOLDER'];
        const lead = (u: UsageRow): Array<string | undefined | null> =>
          r.groupBy === 'node' ? [u.folderId, u.nodeName ?? '(deleted)', u.nodeId, u.preset] : r.groupBy === 'day' ? [u.folderId, u.day] : [u.folderId];
        const body = table([...first, 'INSTANCE TIME', 'CALLS', 'BYTES IN', 'BYTES OUT'],
          r.rows.map((u) => [...lead(u), duration(u.instanceSeconds), u.calls, bytes(u.bytesIn), bytes(u.bytesOut)]));
        return `usage from ${r.from} to ${r.to} (by ${r.groupBy})\n${r.rows.length ? body : 'no usage in this range'}`;
      });
    });
}
