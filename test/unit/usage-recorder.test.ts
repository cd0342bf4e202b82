// The usage recorder and its store on their own, with the clock under the test's control:
// instance time split at hour boundaries, hour and day buckets read back by range and
// grouping, calls from a gateway's meter, and a run the previous Berth left open resumed on
// adoption (or dropped when nobody adopts it). A real SQLite file, real Metrics.
import { test, mock, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStore } from '../../src/store/sqlite.js';
import { Metrics } from '../../src/core/metrics.js';
import { UsageRecorder } from '../../src/usage/recorder.js';
import { CallMeter } from '../../src/gateway/usage-meter.js';
import type { NodeRoute } from '../../src/gateway/routing-table.js';

const dirs: string[] = [];
afterEach(() => { mock.timers.reset(); for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true }); });

async function store(dir = mkdtempSync(join(tmpdir(), 'berth-usage-'))): Promise<{ s: SqliteStore; dir: string }> {
  dirs.push(dir);
  const s = new SqliteStore(join(dir, 'berth.db'));
  await s.migrate();
  return { s, dir };
}

const KEY = { folderId: 'team-a', nodeId: 'n1', preset: 'c1.4', instanceId: 'i1' };
const at = (iso: string): number => Date.parse(iso);

test('instance time is split at hour boundaries; ranges take whole hours; days are UTC days', async () => {
  mock.timers.enable({ apis: ['Date'], now: at('2025-01-01T22:59:30Z') });
  const { s } = await store();
  const r = new UsageRecorder(s, new Metrics(), { nameOf: () => 'node one' });
  const stop = r.started(KEY);
  mock.timers.tick(75_000); // to 23:00:45
  await r.flush();
  mock.timers.tick(3_600_000 - 45_000 - 10_000); // to 23:59:50
  stop();
  const stop2 = r.started({ ...KEY, instanceId: 'i2' });
  mock.timers.tick(20_000); // to 2025-01-02 00:00:10
  stop2();
  await r.flush();

  const q = (from: string, to: string, groupBy: 'node' | 'folder' | 'day') => s.queryUsage({ folders: ['team-a'], from: at(from), to: at(to), groupBy });
  const all = await q('2025-01-01T00:00:00Z', '2025-01-03T00:00:00Z', 'node');
  assert.deepEqual(all, [{ folderId: 'team-a', nodeId: 'n1', nodeName: 'node one', preset: 'c1.4', instanceSeconds: 30 + 3600 - 10 + 10 + 10, calls: 0, bytesIn: 0, bytesOut: 0 }]);
  // the 22:00 hour holds 30 s, the 23:00 hour 3590 s + 10 s, the next day 10 s
  assert.equal((await q('2025-01-01T23:00:00Z', '2025-01-02T00:00:00Z', 'folder'))[0]!.instanceSeconds, 3600);
  assert.deepEqual((await q('2025-01-01T00:00:00Z', '2025-01-03T00:00:00Z', 'day')).map((d) => [d.day, d.instanceSeconds]),
    [['2025-01-01', 30 + 3600], ['2025-01-02', 10]]);
  // other folders see nothing of it; an empty range has no rows
  assert.deepEqual(await s.queryUsage({ folders: ['team-b'], from: 0, to: at('2030-01-01T00:00:00Z'), groupBy: 'folder' }), []);
  assert.deepEqual(await q('2024-01-01T00:00:00Z', '2024-02-01T00:00:00Z', 'node'), []);
  await s.close();
});

test("a gateway's calls and bytes, drained at each flush, land in the hour they were counted", async () => {
  mock.timers.enable({ apis: ['Date'], now: at('2025-03-01T10:15:00Z') });
  const { s } = await store();
  const metrics = new Metrics();
  const r = new UsageRecorder(s, metrics, { nameOf: () => undefined });
  const meter = new CallMeter();
  r.drainFrom(() => meter.drain());
  const route = { id: 'n2', spec: { folderId: 'team-a', resources: { cores: 2, memoryGb: 4, gpus: 0 } } } as unknown as NodeRoute;
  for (let i = 0; i < 3; i++) meter.add(route, 100, 1000);
  await r.flush();
  meter.add(route, 1, 2);
  await r.flush();
  await r.flush(); // nothing new: nothing changes
  const [row] = await s.queryUsage({ folders: null, from: at('2025-03-01T00:00:00Z'), to: at('2025-03-02T00:00:00Z'), groupBy: 'node' });
  assert.deepEqual(row, { folderId: 'team-a', nodeId: 'n2', nodeName: null, preset: 'custom:2c-4g-0gpu', instanceSeconds: 0, calls: 4, bytesIn: 301, bytesOut: 3002 });
  const text = await metrics.registry.metrics();
  assert.match(text, /berth_usage_calls_total\{folder_id="team-a",node_id="n2",preset="custom:2c-4g-0gpu"\} 4/);
  assert.match(text, /berth_usage_bytes_total\{folder_id="team-a",node_id="n2",preset="custom:2c-4g-0gpu",direction="out"\} 3002/);
  await s.close();
});

test('a run left open by a crashed Berth: resumed from its last write when adopted, dropped when not', async () => {
  mock.timers.enable({ apis: ['Date'], now: at('2025-05-05T08:00:00Z') });
  const { s, dir } = await store();
  const first = new UsageRecorder(s, new Metrics(), { nameOf: () => 'n' });
  first.started(KEY);
  first.started({ ...KEY, instanceId: 'gone' });
  mock.timers.tick(10_000);
  await first.flush(); // 10 s each written, both open as of 08:00:10; then Berth is killed
  await s.close();

  mock.timers.tick(20_000); // 20 s with no Berth
  const { s: s2 } = await store(dir);
  const second = new UsageRecorder(s2, new Metrics(), { nameOf: () => 'n' });
  await second.load();
  second.started(KEY, true); // the container survived: adopted
  second.forgetLeftovers(); // 'gone' did not
  mock.timers.tick(5_000);
  await second.flush();
  const rows = await s2.queryUsage({ folders: null, from: at('2025-05-05T08:00:00Z'), to: at('2025-05-05T09:00:00Z'), groupBy: 'node' });
  assert.equal(rows[0]!.instanceSeconds, 10 + 10 + 20 + 5); // i1: 10 before, 20 unwatched, 5 after; gone: its 10
  assert.deepEqual((await s2.openInstances()).map((o) => o.instanceId), ['i1']);
  await s2.close();
});
