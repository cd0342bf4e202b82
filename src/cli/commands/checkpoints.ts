// `berth checkpoint …`: run a script or notebook into a saved interpreter state, list, show,
// pin/rename/unpin and delete them. Only pinned checkpoints can back nodes.
import type { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import { ago, bytes, table } from '../format.js';
import { clientFor, out, type JsonOption } from '../shared.js';
import type { CheckpointList, CheckpointView, Deleted } from '../views.js';

/** `[12] model.fit(X, y)…`: the kernel cell that made a checkpoint (its number, its first line). */
function cellLabel(c: CheckpointView): string {
  if (!c.cell) return '';
  const first = c.cell.code.split('\n').find((l) => l.trim()) ?? '';
  const short = first.length > 40 ? first.slice(0, 39) + '…' : first;
  return `${c.cell.number === null ? '' : `[${c.cell.number}] `}${short.trim()}`;
}

export function registerCheckpoints(cli: Command): void {
  const client = clientFor(cli);
  const ckpt = cli.command('checkpoint').alias('checkpoints').description('Saved interpreter states (only pinned ones can back nodes)');

  ckpt.command('create <file>').description('Run a script (cells split by "# %%") or a .ipynb notebook in a fresh interpreter and save its state')
    .option('--name <name>', 'pin it with this name')
    .option('--cell <n>', 'the serving cell, 0-based (default: the last); negative counts from the end')
    .option('--python <path>', 'interpreter to run it with (default: the server\'s)')
    .option('--folder <id>', 'folder (default: your token\'s)')
    .option('--json', 'print JSON')
    .action(async (file: string, o: JsonOption & { name?: string; cell?: string; python?: string; folder?: string }) => {
      const text = readFileSync(file, 'utf8');
      const body: Record<string, unknown> = extname(file) === '.ipynb' ? { notebook: text } : { script: text };
      if (o.name) body.name = o.name;
      if (o.cell !== undefined) body.servingCell = Number(o.cell);
      if (o.python) body.python = o.python;
      if (o.folder) body.folderId = o.folder;
      if (!o.json) process.stderr.write(`running ${file} in a fresh interpreter…\n`);
      const c = await client().request<CheckpointView>('POST', '/v1/checkpoints', body);
      if (!o.json && c.log) process.stderr.write(c.log.replace(/^/gm, '  | '));
      out(o.json, c, () => `checkpoint ${c.id}${c.name ? ` pinned as "${c.name}"` : ' (not pinned)'}: ${c.variables.length} variables, ${bytes(c.size)}, Python ${c.python}` +
        (c.skipped.length ? `\nnot saved (cannot be pickled): ${c.skipped.map((s) => `${s.name} (${s.type})`).join(', ')}` : ''));
    });

  ckpt.command('list').description('List checkpoints').option('--json', 'print JSON').action(async (o: JsonOption) => {
    const { checkpoints } = await client().request<CheckpointList>('GET', '/v1/checkpoints');
    out(o.json, checkpoints, () => table(['ID', 'NAME', 'SOURCE', 'CELL', 'PYTHON', 'VARIABLES', 'SIZE', 'CREATED'],
      checkpoints.map((c) => [c.id, c.name ?? '(not pinned)', c.autosave ? 'kernel (auto)' : c.source, cellLabel(c), c.python, c.variables.length, bytes(c.size), ago(c.createdAt)])));
  });

  ckpt.command('get <ref>').description('Show a checkpoint (id or name)').option('--json', 'print JSON').action(async (ref: string, o: JsonOption) => {
    const c = await client().request<CheckpointView>('GET', `/v1/checkpoints/${encodeURIComponent(ref)}`);
    out(o.json, c, () => [
      table(['FIELD', 'VALUE'], [['id', c.id], ['name', c.name ?? '(not pinned)'], ['source', c.source], ['python', `${c.python} (${c.executable})`],
        ['size', bytes(c.size)], ['sha256', c.sha256], ['variables', c.variables.map((v) => `${v.name}: ${v.type}`).join(', ')],
        ['requires', c.requires.map((p) => `${p.name}==${p.version}`).join(', ') || '(standard library only)'], ['created', c.createdAt],
        ...(c.cell ? [['made by cell', cellLabel(c)] as [string, string]] : []),
        ...(c.autosave ? [['autosave', `kernel session ${c.autosave.session}, its ${c.autosave.keep} most recent kept`] as [string, string]] : [])]),
      'serving cell:', c.code.replace(/^/gm, '  '),
    ].join('\n'));
  });

  for (const [cmd, desc] of [['pin', 'Pin a checkpoint under a name'], ['rename', 'Rename a pinned checkpoint']] as const) {
    ckpt.command(`${cmd} <ref> <name>`).description(desc).option('--json', 'print JSON').action(async (ref: string, name: string, o: JsonOption) => {
      const c = await client().request<CheckpointView>('PATCH', `/v1/checkpoints/${encodeURIComponent(ref)}`, { name });
      out(o.json, c, () => `checkpoint ${c.id} pinned as "${c.name}"`);
    });
  }

  ckpt.command('unpin <ref>').description('Remove a checkpoint\'s name').option('--json', 'print JSON').action(async (ref: string, o: JsonOption) => {
    const c = await client().request<CheckpointView>('PATCH', `/v1/checkpoints/${encodeURIComponent(ref)}`, { name: null });
    out(o.json, c, () => `checkpoint ${c.id} unpinned`);
  });

  ckpt.command('delete <ref>').description('Delete a checkpoint no node uses').option('--json', 'print JSON').action(async (ref: string, o: JsonOption) => {
    const r = await client().request<Deleted>('DELETE', `/v1/checkpoints/${encodeURIComponent(ref)}`);
    out(o.json, r, () => `checkpoint ${r.id} deleted`);
  });
}
