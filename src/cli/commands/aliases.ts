// `berth alias …`: stable endpoints that spread calls over nodes by weight: create, list, show,
// set or shift the weights, delete, and execute through the alias.
import type { Command } from 'commander';
import type { Client } from '../client.js';
import { ago, table } from '../format.js';
import { clientFor, collect, out, parseInput, printOutput, type JsonOption } from '../shared.js';
import type { AliasList, AliasView, Deleted, ExecuteAnswer, NodeList, WhoAmI } from '../views.js';

/** "node=90" or "node" (weight 1); node by id or name. */
async function parseBackends(c: Client, list: string[]): Promise<Array<{ nodeId: string; weight: number }>> {
  const { nodes } = await c.request<NodeList>('GET', '/v1/nodes');
  return list.map((item) => {
    const [ref, w] = item.split('=');
    const n = nodes.find((x) => x.id === ref || x.name === ref);
    if (!n) throw new Error(`--backend ${item}: no node ${ref}`);
    return { nodeId: n.id, weight: w === undefined ? 1 : Number(w) };
  });
}

function aliasTable(a: AliasView): string {
  const head = table(['FIELD', 'VALUE'], [
    ['id', a.id], ['name', a.name], ['folder', a.folderId],
    ['acl', a.executionAcl.isPublic ? 'public (any token)' : a.executionAcl.folders.join(', ')],
    ['headers', a.proxyMetadata.headers.map((h) => `${h.name}: ${h.value}`).join(', ')],
    ['sticky', a.sticky ? `by header ${a.sticky.header}` : ''],
    ['mirror', a.mirror ? `${a.mirror.percent}% to ${a.mirror.nodeId}` : ''],
  ]);
  const total = a.backends.reduce((s, b) => s + b.weight, 0);
  const backends = table(['NODE', 'WEIGHT', 'SHARE', 'NODE STATUS', 'HEALTHY INSTANCES'],
    a.status.backends.map((b) => [b.nodeId, b.weight, `${((100 * b.weight) / total).toFixed(1)}%`, b.nodeStatus, b.healthyInstances]));
  const m = a.status.mirror;
  const mirror = m ? `\nmirror: ${m.compared} compared, ${m.differing} differing (${(100 * m.differingRatio).toFixed(1)}%), p50 primary ${m.primaryP50Ms?.toFixed(1) ?? '-'} ms / shadow ${m.shadowP50Ms?.toFixed(1) ?? '-'} ms` : '';
  return `${head}\n${backends}${mirror}`;
}

export function registerAliases(cli: Command): void {
  const client = clientFor(cli);
  const alias = cli.command('alias').alias('aliases').description('Stable endpoints that spread calls over nodes by weight');

  alias.command('create <name>').description('Create an alias, e.g. --backend model-v1=100')
    .requiredOption('--backend <node=weight>', 'a backend node and its weight (repeat)', collect)
    .option('--acl <folder>', 'folder allowed to call (repeat; default: its own folder)', collect)
    .option('--public', 'any valid token may call it')
    .option('--header <name=value>', 'header added to every call passed on (repeat)', collect)
    .option('--sticky-header <name>', 'calls with the same value in this header reach the same node and instance')
    .option('--folder <id>').option('--json', 'print JSON')
    .action(async (name: string, o: JsonOption & { backend: string[]; acl?: string[]; public?: boolean; header?: string[]; stickyHeader?: string; folder?: string }) => {
      const c = client();
      const spec: Record<string, unknown> = { name, backends: await parseBackends(c, o.backend) };
      if (o.folder) spec.folderId = o.folder;
      if (o.acl || o.public) spec.executionAcl = { ...(o.acl ? { folders: o.acl } : {}), isPublic: !!o.public };
      if (o.header) spec.proxyMetadata = { headers: o.header.map((h) => ({ name: h.slice(0, h.indexOf('=')), value: h.slice(h.indexOf('=') + 1) })) };
      if (o.stickyHeader) spec.sticky = { header: o.stickyHeader };
      const a = await c.request<AliasView>('POST', '/v1/aliases', spec);
      out(o.json, a, () => aliasTable(a));
    });

  alias.command('list').description('List aliases').option('--json', 'print JSON').action(async (o: JsonOption) => {
    const { aliases } = await client().request<AliasList>('GET', '/v1/aliases');
    out(o.json, aliases, () => table(['NAME', 'BACKENDS', 'ACL', 'CREATED'], aliases.map((a) => [a.name,
      a.backends.map((b) => `${b.nodeId}=${b.weight}`).join(' '), a.executionAcl.isPublic ? 'public' : a.executionAcl.folders.join(', '), ago(a.createdAt)])));
  });

  alias.command('get <name>').description('Show an alias, its backends and their status').option('--json', 'print JSON').action(async (name: string, o: JsonOption) => {
    const a = await client().request<AliasView>('GET', `/v1/aliases/${encodeURIComponent(name)}`);
    out(o.json, a, () => aliasTable(a));
  });

  alias.command('set <name>').description('Replace the backends at once, e.g. --backend v1=90 --backend v2=10')
    .requiredOption('--backend <node=weight>', 'a backend node and its weight (repeat)', collect).option('--json', 'print JSON')
    .action(async (name: string, o: JsonOption & { backend: string[] }) => {
      const c = client();
      const a = await c.request<AliasView>('PATCH', `/v1/aliases/${encodeURIComponent(name)}`, { backends: await parseBackends(c, o.backend) });
      out(o.json, a, () => aliasTable(a));
    });

  alias.command('shift <name> <node> <percent>').description('Send PERCENT% of calls to NODE (added if new); the other backends share the rest in their current proportions')
    .option('--json', 'print JSON')
    .action(async (name: string, nodeRef: string, percentText: string, o: JsonOption) => {
      const c = client();
      const percent = Number(String(percentText).replace('%', ''));
      if (!(percent >= 0 && percent <= 100)) throw new Error('percent must be between 0 and 100');
      const a = await c.request<AliasView>('GET', `/v1/aliases/${encodeURIComponent(name)}`);
      const [target] = await parseBackends(c, [nodeRef]);
      const others = a.backends.filter((b) => b.nodeId !== target!.nodeId);
      const rest = others.reduce((s, b) => s + b.weight, 0);
      if (percent < 100 && rest === 0) throw new Error(`${nodeRef} is the only backend: add another before moving weight away from it`);
      // weights out of 1000 keep one decimal of a percent
      const backends = [
        ...(percent > 0 ? [{ nodeId: target!.nodeId, weight: percent * 10 }] : []),
        ...(percent < 100 ? others.map((b) => ({ nodeId: b.nodeId, weight: Math.max(1e-6, ((100 - percent) * 10 * b.weight) / rest) })) : []),
      ];
      const updated = await c.request<AliasView>('PATCH', `/v1/aliases/${encodeURIComponent(name)}`, { backends });
      out(o.json, updated, () => aliasTable(updated));
    });

  alias.command('delete <name>').description('Delete an alias (its nodes stay)').option('--json', 'print JSON').action(async (name: string, o: JsonOption) => {
    const r = await client().request<Deleted>('DELETE', `/v1/aliases/${encodeURIComponent(name)}`);
    out(o.json, r, () => `alias ${name} deleted`);
  });

  alias.command('execute <name>').description('Call an alias over cell nodes, like POST /datasphere/v1/aliases/{name}:execute')
    .requiredOption('--input <json>', 'the input variables as a JSON object').option('--folder <id>', 'the folder you call from')
    .option('--json', 'print the raw JSON answer')
    .action(async (name: string, o: JsonOption & { input: string; folder?: string }) => {
      const c = client();
      const input = parseInput(o.input);
      const folder = o.folder ?? (await c.request<WhoAmI>('GET', '/v1/whoami')).defaultFolder;
      printOutput(o.json, await c.request<ExecuteAnswer>('POST', `/datasphere/v1/aliases/${encodeURIComponent(name)}:execute`, { folder_id: folder, input }));
    });
}
