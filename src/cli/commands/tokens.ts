// `berth token …`: bearer tokens with a role per folder (admin only), and `token admin`, which
// prints the admin token from the local BERTH_HOME without asking the server.
import { Option, type Command } from 'commander';
import { defaultHome } from '../../core/config.js';
import type { Role } from '../../core/types.js';
import { findToken } from '../client.js';
import { ago, table } from '../format.js';
import { clientFor, collect, out, type JsonOption } from '../shared.js';
import type { Deleted, NewTokenView, TokenList } from '../views.js';

const rolesText = (roles: Record<string, string>): string => Object.entries(roles).map(([f, r]) => `${f}=${r}`).join(', ');

export function registerTokens(cli: Command): void {
  const client = clientFor(cli);
  const tok = cli.command('token').alias('tokens').description('Bearer tokens for callers (admin)');
  tok.command('create').description('Create a token with a role in one or more folders')
    .requiredOption('--folder <id>', 'folder the token may act in (repeat; * for every folder)', collect)
    .addOption(new Option('--role <role>', 'admin: everything; editor: manage and call; executor: call only; viewer: read only').choices(['admin', 'editor', 'executor', 'viewer']).default('editor'))
    .option('--name <name>', 'label', 'token').option('--json', 'print JSON')
    .action(async (o: JsonOption & { folder: string[]; role: Role; name: string }) => {
      const r = await client().request<NewTokenView>('POST', '/v1/tokens', { name: o.name, folders: o.folder, role: o.role });
      out(o.json, r, () => `${r.token}\n(shown once; roles: ${rolesText(r.roles)})`);
    });
  tok.command('list').description('List tokens').option('--json', 'print JSON').action(async (o: JsonOption) => {
    const { tokens } = await client().request<TokenList>('GET', '/v1/tokens');
    out(o.json, tokens, () => table(['ID', 'NAME', 'ROLES', 'CREATED'], tokens.map((t) => [t.id, t.name, rolesText(t.roles), ago(t.createdAt)])));
  });
  tok.command('delete <id>').description('Revoke a token').option('--json', 'print JSON').action(async (id: string, o: JsonOption) => {
    const r = await client().request<Deleted>('DELETE', `/v1/tokens/${id}`);
    out(o.json, r, () => `token ${id} revoked`);
  });
  tok.command('admin').description(`Print the admin token (from ${defaultHome()}/admin-token)`).action(() => console.log(findToken()));
}
