// `berth apply -f FILE`: create or update the nodes and aliases a YAML file describes, one
// document each; an existing node takes a merge patch (in place, or a new revision rolled out),
// a new one is created. `--dry-run` prints what would change and changes nothing.
import type { Command } from 'commander';
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import YAML from 'yaml';
import { clientFor, type JsonOption } from '../shared.js';
import type { AliasList, AliasView, NodeList, NodeView, UpdatePlan } from '../views.js';
import { createNode, planTable, updateNode } from './nodes.js';

export function registerApply(cli: Command): void {
  const client = clientFor(cli);
  cli.command('apply').description('Create or update the nodes and aliases described in a YAML file (an existing node is updated: in place, or a new revision rolled out)')
    .requiredOption('-f, --file <file>', 'YAML file, one or more documents')
    .option('--dry-run', 'print what would change on existing nodes; change nothing')
    .option('--no-wait', 'do not wait for Healthy or for rollouts').option('--json', 'print JSON')
    .action(async (o: JsonOption & { file: string; wait: boolean; dryRun?: boolean }) => {
      if (!existsSync(o.file)) throw new Error(`no such file: ${o.file}`);
      const docs = YAML.parseAllDocuments(readFileSync(resolve(o.file), 'utf8')).map((d) => {
        if (d.errors.length) throw new Error(`${o.file}: ${d.errors[0]!.message}`);
        return d.toJS() as Record<string, unknown>;
      }).filter(Boolean);
      const c = client();
      const results = [];
      for (const spec of docs) {
        if (o.dryRun && spec.kind === 'alias') {
          results.push({ name: spec.name, kind: 'alias', action: 'not checked (dry run covers nodes)' });
          if (!o.json) console.log(`alias ${String(spec.name)}: not checked (--dry-run covers nodes)`);
          continue;
        }
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
          if (o.dryRun) {
            const plan = await updateNode(c, existing.id, spec, { dryRun: true, wait: false, quiet: true });
            if (!o.json) console.log(`node ${existing.name} (${existing.id}):\n${planTable(plan as UpdatePlan)}`);
            results.push({ id: existing.id, name: existing.name, action: 'dry-run', plan });
            continue;
          }
          const n = await updateNode(c, existing.id, spec, { dryRun: false, wait: o.wait, json: o.json, quiet: true }) as NodeView;
          const action = n.changed?.length ? 'updated' : 'unchanged';
          if (!o.json) console.log(`node ${existing.name} (${existing.id}) ${action}`);
          results.push({ id: existing.id, name: existing.name, action, revision: n.revision });
          continue;
        }
        if (o.dryRun) {
          results.push({ name: spec.name, action: 'would be created' });
          if (!o.json) console.log(`node ${String(spec.name)}: would be created`);
          continue;
        }
        const n = await createNode(cli, spec, { wait: o.wait, json: o.json, silent: true });
        results.push({ id: n.id, name: n.name ?? spec.name, action: 'created' });
        if (!o.json) console.log(`node ${spec.name} created`);
      }
      if (o.json) console.log(JSON.stringify(results, null, 2));
    });
}
