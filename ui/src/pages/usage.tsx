// Usage per folder, node or day (GET /v1/usage, when this server has it): instance-seconds,
// calls and bytes in and out.
import { useEffect, useState } from 'preact/hooks';
import { ApiError, api } from '../api';
import { ErrorBox, bytes, num } from '../common';

interface Row { folderId: string; nodeId?: string; nodeName?: string; preset?: string; day?: string; instanceSeconds: number; calls: number; bytesIn: number; bytesOut: number }

export function Usage() {
  const [groupBy, setGroupBy] = useState<'folder' | 'node' | 'day'>('folder');
  const [days, setDays] = useState(7);
  const [rows, setRows] = useState<Row[] | null>(null);
  const [missing, setMissing] = useState(false);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    const to = new Date();
    const from = new Date(to.getTime() - days * 86400_000);
    api<{ rows: Row[] }>('GET', `/v1/usage?groupBy=${groupBy}&from=${encodeURIComponent(from.toISOString())}&to=${encodeURIComponent(to.toISOString())}`)
      .then((r) => { setRows(r.rows); setError(null); })
      .catch((err) => { if (err instanceof ApiError && err.code === 'ROUTE_NOT_FOUND') setMissing(true); else setError(err); });
  }, [groupBy, days]);
  if (missing) return <div class="page" data-testid="usage"><h2>Usage</h2><p class="muted" data-testid="usage-missing">This server has no usage API (GET /v1/usage).</p></div>;
  return (
    <div class="page" data-testid="usage">
      <div class="row">
        <h2>Usage</h2>
        <label class="inline">by <select value={groupBy} onChange={(e) => setGroupBy((e.target as HTMLSelectElement).value as 'folder')} data-testid="usage-group">
          <option value="folder">folder</option><option value="node">node</option><option value="day">day</option></select></label>
        <label class="inline">last <select value={String(days)} onChange={(e) => setDays(Number((e.target as HTMLSelectElement).value))}>
          <option value="1">day</option><option value="7">7 days</option><option value="30">30 days</option></select></label>
      </div>
      <ErrorBox error={error} />
      <table class="grid" data-testid="usage-table">
        <thead><tr><th>folder</th>{groupBy === 'node' && <><th>node</th><th>preset</th></>}{groupBy === 'day' && <th>day</th>}<th class="r">instance-hours</th><th class="r">calls</th><th class="r">in</th><th class="r">out</th></tr></thead>
        <tbody>{(rows ?? []).map((r, i) => (
          <tr key={i} data-testid="usage-row">
            <td>{r.folderId}</td>
            {groupBy === 'node' && <><td>{r.nodeName ?? r.nodeId}</td><td>{r.preset ?? ''}</td></>}
            {groupBy === 'day' && <td>{r.day}</td>}
            <td class="r">{num(r.instanceSeconds / 3600, 2)}</td><td class="r">{r.calls}</td><td class="r">{bytes(r.bytesIn)}</td><td class="r">{bytes(r.bytesOut)}</td>
          </tr>))}
          {rows?.length === 0 && <tr><td colSpan={7} class="muted">Nothing used in this period.</td></tr>}
        </tbody>
      </table>
    </div>
  );
}
