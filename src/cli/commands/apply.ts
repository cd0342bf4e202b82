// `berth apply -f FILE`: create or update the nodes and aliases a YAML file describes, one
// document each; an existing node takes a merge patch (in-place fields), a new one is created.
import type { Command } from 'commander';
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import YAML from 'yaml';
import { clientFor, type JsonOption } from '../shared.js';
import type { AliasList, AliasView, NodeList, NodeView } from '../views.js';
import { createNode } from './nodes.js';

export function registerApply(cli: Command): void {
  const client = clientFor(cli);
  cli.command('apply').description('Create or update the nodes and aliases described in a YAML file (an existing node takes scaling, description and ACL changes in place)')
    .requiredOption('-f, --file <file>', 'YAML file, one or more documents')
    .option('--no-wait', 'do not wait for Healthy').option('--json', 'print JSON')
    .action(async (o: JsonOption & { file: string; wait: boolean }) => {
      if (!existsSync(o.file)) throw new Error(`no such file: ${o.file}`);
      const docs = YAML.parseAllDocuments(readFileSync(resolve(o.file), 'utf8')).map((d) => {
        if (d.errors.length) throw new Error(`${o.file}: ${d.errors[0]!.message}`);
        return d.toJS() as Record<string, unknown>;
      }).filter(Boolean);
      const c = client();
      const results = [];
      for (const spec of docs) {
        if (spec.kind === 'alias') {
          const { kind: _k, ...body } = spec;
          const found = (await c.request<AliasList>('GET', '/v1/aliases')).aliases.find((a) => a.name === spec.name);
          const a = found
            ? await c.request<AliasView>('PATCH', `/v1/aliases/${encodeURIComponent(String(spec.name))}`, Object.fromEntries(Object.entries(body).filter(([k]) => !['name', 'folderId', 'projectId'].includes(k))))
            : await c.request<AliasView>('POST', '/v1/aliases', body);
          results.push({ id: a.id, name: a.name, kind: 'alias', action: found ? 'updated' : 'created' });
          if (!o.json) console.log(`alias ${a.name} ${found ? 'updated' : 'created'}`);
          continue;
        }
        const existing = (await c.request<NodeList>('GET', '/v1/nodes')).nodes.find((n) => n.name === spec.name && (!spec.folderId || n.folderId === spec.folderId));
        if (existing) {
          // a merge patch: what the file says is applied, what it leaves out stays as it is
          const n = await c.request<NodeView>('PATCH', `/v1/nodes/${existing.id}`, spec);
          const action = n.updatedAt === existing.updatedAt ? 'unchanged' : 'updated';
          if (!o.json) console.log(`node ${existing.name} (${existing.id}) ${action}`);
          results.push({ id: existing.id, name: existing.name, action });
          continue;
        }
        const n = await createNode(cli, spec, { wait: o.wait, json: o.json, silent: true });
        results.push({ id: n.id, name: n.name ?? spec.name, action: 'created' });
        if (!o.json) console.log(`node ${spec.name} created`);
      }
      if (o.json) console.log(JSON.stringify(results, null, 2));
    });
}
