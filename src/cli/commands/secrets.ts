// `berth secret …`: encrypted values (registry passwords) stored per folder and referred to by
// name; the CLI never prints a value back.
import type { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { ago, table } from '../format.js';
import { clientFor, out, type JsonOption } from '../shared.js';
import type { Secret } from '../../core/types.js';
import type { Deleted, SecretList } from '../views.js';

export function registerSecrets(cli: Command): void {
  const client = clientFor(cli);
  const sec = cli.command('secret').alias('secrets').description('Encrypted values (registry passwords) referred to by name');
  sec.command('create <name>').description('Store a secret in a folder; the value comes from --value or standard input')
    .option('--value <value>', 'the value (prefer stdin: it stays out of your shell history)').option('--folder <id>', "the secret's folder (default: the token's)").option('--json', 'print JSON')
    .action(async (name: string, o: JsonOption & { value?: string; folder?: string }) => {
      const value = o.value ?? readFileSync(0, 'utf8').replace(/\n$/, '');
      const r = await client().request<Secret>('POST', '/v1/secrets', { name, value, ...(o.folder ? { folderId: o.folder } : {}) });
      out(o.json, r, () => `secret ${r.name} stored in folder ${r.folderId}`);
    });
  sec.command('list').description('List secrets (names only)').option('--folder <id>', 'only this folder').option('--json', 'print JSON').action(async (o: JsonOption & { folder?: string }) => {
    const { secrets } = await client().request<SecretList>('GET', `/v1/secrets${o.folder ? `?folderId=${encodeURIComponent(o.folder)}` : ''}`);
    out(o.json, secrets, () => table(['NAME', 'FOLDER', 'ID', 'CREATED'], secrets.map((s) => [s.name, s.folderId, s.id, ago(s.createdAt)])));
  });
  sec.command('delete <name>').description('Delete a secret no node uses').option('--folder <id>', "the secret's folder (default: the token's)").option('--json', 'print JSON').action(async (name: string, o: JsonOption & { folder?: string }) => {
    const r = await client().request<Deleted>('DELETE', `/v1/secrets/${encodeURIComponent(name)}${o.folder ? `?folderId=${encodeURIComponent(o.folder)}` : ''}`);
    out(o.json, r, () => `secret ${name} deleted`);
  });
}
