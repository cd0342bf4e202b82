// `berth folder …` (a folder's quota and usage, quota changes) and `berth audit` (the
// control-plane change log): the per-tenant administration commands.
import type { Command } from 'commander';
import type { Quota } from '../../core/types.js';
import { ago, bytes, table } from '../format.js';
import { clientFor, out, type JsonOption } from '../shared.js';
import type { AuditList, FolderView } from '../views.js';

const QUOTA_KEYS = ['maxInstances', 'maxNodes', 'maxCheckpointBytes', 'maxUploadBytes', 'maxCheckpointRuns'] as const satisfies ReadonlyArray<keyof Quota>;

const folderTable = (f: FolderView): string => table(['QUOTA', 'LIMIT', 'USED'], [
  ['maxNodes', f.quota.maxNodes, f.usage.nodes],
  ['maxInstances', f.quota.maxInstances, f.usage.instances],
  ['maxCheckpointBytes', bytes(f.quota.maxCheckpointBytes), bytes(f.usage.checkpointBytes)],
  ['maxUploadBytes', bytes(f.quota.maxUploadBytes), ''],
  ['maxCheckpointRuns', f.quota.maxCheckpointRuns, ''],
]);

export function registerFolders(cli: Command): void {
  const client = clientFor(cli);
  const folder = cli.command('folder').alias('folders').description("Folders' quotas and usage");
  folder.command('get <id>').description("A folder's quota and what it uses").option('--json', 'print JSON').action(async (id: string, o: JsonOption) => {
    const r = await client().request<FolderView>('GET', `/v1/folders/${encodeURIComponent(id)}`);
    out(o.json, r, () => `folder ${r.id}\n${folderTable(r)}`);
  });
  folder.command('set-quota <id>').description("Change a folder's quota (admin of every folder)")
    .option('--max-instances <n>', 'sum of maxInstances over its nodes').option('--max-nodes <n>', 'nodes')
    .option('--max-checkpoint-bytes <n>', 'bytes of checkpoints in all').option('--max-upload-bytes <n>', 'bytes of one checkpoint upload or run request')
    .option('--max-checkpoint-runs <n>', 'checkpoint runs at once').option('--json', 'print JSON')
    .action(async (id: string, o: JsonOption & Partial<Record<keyof Quota, string>>) => {
      const change: Record<string, number> = {};
      for (const k of QUOTA_KEYS) if (o[k] !== undefined) change[k] = Number(o[k]);
      if (Object.keys(change).length === 0) throw new Error('name at least one quota to change, e.g. --max-instances 8');
      const r = await client().request<FolderView>('PATCH', `/v1/folders/${encodeURIComponent(id)}/quota`, change);
      out(o.json, r, () => `folder ${r.id}\n${folderTable(r)}`);
    });
  cli.command('audit').description('Control-plane changes, newest first (admins see their folders)')
    .option('--folder <id>', 'only this folder').option('--limit <n>', 'entries', '50').option('--json', 'print JSON')
    .action(async (o: JsonOption & { folder?: string; limit: string }) => {
      const q = new URLSearchParams({ limit: o.limit, ...(o.folder ? { folderId: o.folder } : {}) });
      const { entries } = await client().request<AuditList>('GET', `/v1/audit?${q}`);
      out(o.json, entries, () => table(['WHEN', 'TOKEN', 'ACTION', 'FOLDER', 'RESOURCE', 'RESULT'],
        entries.map((e) => [ago(e.at), e.tokenName ?? '', e.action, e.folderId ?? '', e.resourceId ?? '', e.result])));
    });
}
