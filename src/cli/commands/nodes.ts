// `berth node …`: create (cell or image), list, show, update (in place or rolled out), rollout
// status, history, rollback, suspend/resume, delete, read or follow the instances' logs, and
// execute. createNode, planTable and followRollout are shared with `berth apply`.
import type { Command } from 'commander';
import { ApiError, berthFetch, findToken, serverUrl } from '../client.js';
import { ago, table } from '../format.js';
import { clientFor, collect, out, parseInput, printOutput, waitHealthy, type JsonOption } from '../shared.js';
import type { Client } from '../client.js';
import { SNIPPET_LANGS, snippet, type SnippetLang } from '../../contracts/snippets.js';

/** The parts of a node's OpenAPI contract the snippets read. */
interface OpenApiDoc {
  servers: Array<{ url: string }>;
  paths: Record<string, unknown>;
  components: { schemas: { Input: { properties: Record<string, { 'x-berth-type': string; default?: unknown }> } } };
}
import type { Deleted, ExecuteAnswer, NodeEventList, NodeList, NodeLogs, NodeView, RevisionList, UpdatePlan, WhoAmI } from '../views.js';

interface CreateOptions extends JsonOption {
  name: string; checkpoint?: string; image?: string; port?: string; protocol: string; env?: string[]; healthPath?: string;
  username?: string; passwordSecret?: string; input?: string[]; output?: string[]; description?: string; folder?: string;
  acl?: string[]; min: string; max?: string; sessions: string; resources?: string; timeout?: string; python?: string;
  wait: boolean; quiet?: boolean;
}

/** `name:type[=default]`: the type may be `ndarray[float32,-1]`, `list[int]`…; the default is JSON (or a plain string). */
const parseVars = (list: string[] | undefined, flag: string): Array<{ name: string; type: string; default?: unknown }> | undefined =>
  list?.map((s) => {
    const colon = s.indexOf(':');
    const name = colon === -1 ? '' : s.slice(0, colon);
    const rest = colon === -1 ? '' : s.slice(colon + 1);
    // the default starts at the first "=" outside the type's brackets
    let depth = 0;
    let eq = -1;
    for (let i = 0; i < rest.length && eq === -1; i++) {
      if (rest[i] === '[') depth++;
      else if (rest[i] === ']') depth--;
      else if (rest[i] === '=' && depth === 0) eq = i;
    }
    const type = eq === -1 ? rest : rest.slice(0, eq);
    if (!name || !type) throw new Error(`${flag} takes name:type[=default], e.g. ${flag} input_data:dict or ${flag} 'x:ndarray[float32,-1]' (got "${s}")`);
    if (eq === -1) return { name, type };
    const text = rest.slice(eq + 1);
    let dflt: unknown;
    try { dflt = JSON.parse(text); } catch { dflt = text; }
    return { name, type, default: dflt };
  });

export function nodeTable(n: NodeView): string {
  const kindRows: Array<[string, string]> = n.kind === 'cell'
    ? [['checkpoint', n.checkpointId], ['inputs', n.inputs.map((v) => `${v.name}: ${v.type}`).join(', ')],
      ['outputs', n.outputs.map((v) => `${v.name}: ${v.type}`).join(', ')], ['timeout', `${n.timeout}s`]]
    : [['image', n.image], ['endpoint', `${n.endpoint.protocol} :${n.endpoint.port}, timeout ${n.endpoint.timeout}s, idle ${n.endpoint.idleTimeout}s`],
      ['health check', `${n.healthcheck.protocol}${n.healthcheck.path ? ' ' + n.healthcheck.path : ''} :${n.healthcheck.port}`],
      ...(n.telemetry ? [['telemetry', `${n.telemetry.format} :${n.telemetry.port}${n.telemetry.path}`] as [string, string]] : [])];
  const head = table(['FIELD', 'VALUE'], [
    ['id', n.id], ['name', n.name], ['kind', n.kind], ['status', statusLine(n)], ['folder', n.folderId], ['revision', rolloutLine(n)], ...kindRows,
    ['scaling', `${n.scaling.minInstances}–${n.scaling.maxInstances} instances, ${n.scaling.sessionsPerInstance} session(s) each` +
      (n.scaling.minInstances === 0 ? `; to zero after ${n.scaling.scaleDownDelaySeconds}s idle, calls held up to ${n.scaling.holdTimeout ?? 60}s` : '')],
    ['acl', n.permissions.folders.join(', ')],
  ]);
  const inst = table(['INSTANCE', 'REV', 'STATUS', 'SINCE', 'RESTARTS', 'IN FLIGHT', 'LAST ERROR'],
    n.instances.map((i) => [i.id, i.revision, i.status, ago(i.updatedAt), i.restarts, i.inFlight, i.lastError ?? '']));
  return `${head}\n${inst}${n.warnings?.length ? `\nnote: ${n.warnings.join('; ')}` : ''}`;
}

/** `Healthy`, or `Healthy (scaled to zero)`. */
function statusLine(n: NodeView): string {
  return n.scaledToZero ? `${n.status} (scaled to zero)` : n.status;
}

/** `3`, or `3 (rolling out from 2: 1 updated, 1 outdated)`, or `2 (rollout to 3 failed: …)`. */
function rolloutLine(n: NodeView): string {
  const r = n.rollout;
  if (!r || r.state === 'Complete') return String(n.revision);
  if (r.state === 'Failed') return `${n.revision} (rollout to ${r.revision} failed: ${r.reason ?? 'no reason given'})`;
  return `${n.revision} (rolling out from ${r.from}: ${r.healthy ?? 0} healthy of ${r.updated ?? 0} updated, ${r.outdated ?? 0} old)`;
}

/** What an update would change, field by field (`--dry-run`). */
export function planTable(p: UpdatePlan): string {
  if (p.changed.length === 0) return 'no change';
  const show = (v: unknown): string => (v === null ? '—' : typeof v === 'string' ? v : JSON.stringify(v));
  return `${table(['FIELD', 'NOW', 'AFTER'], p.diff.map((d) => [d.field, show(d.from), show(d.to)]))}
` +
    (p.rollout ? `a new revision ${p.revision} would be rolled out` : 'applies in place: nothing restarts');
}

/**
 * Follows a node's rollout until it completes or fails, with a progress bar on stderr.
 * Throws when it fails (the old revision keeps serving).
 */
export async function followRollout(c: Client, id: string, progress: boolean, timeoutS = Number(process.env.BERTH_WAIT_SECONDS ?? 900)): Promise<NodeView> {
  const started = Date.now();
  let last = '';
  for (;;) {
    const n = await c.request<NodeView>('GET', `/v1/nodes/${encodeURIComponent(id)}`);
    const r = n.rollout;
    if (!r) return n;
    const target = Math.max(n.scaling.minInstances, (r.healthy ?? 0) + (r.outdated ?? 0));
    const done = r.state === 'Complete' ? target : Math.min(r.healthy ?? 0, target);
    const width = 20;
    const filled = Math.round((done / Math.max(1, target)) * width);
    const line = `revision ${r.revision} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${target} new healthy, ${r.outdated ?? 0} old — ${r.state}`;
    if (progress && line !== last) { process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${line}\n`); last = line; }
    if (r.state === 'Complete') return n;
    if (r.state === 'Failed') throw new Error(`rollout to revision ${r.revision} failed; revision ${n.revision} keeps serving: ${r.reason ?? 'no reason given'}`);
    if (Date.now() - started > timeoutS * 1000) throw new Error(`rollout to revision ${r.revision} still in progress after ${timeoutS}s (berth node rollout status ${id} follows it)`);
    await new Promise((res) => setTimeout(res, 250));
  }
}

/** POSTs a node spec, waits for Healthy unless told not to, prints it unless `silent`. */
export async function createNode(cli: Command, spec: Record<string, unknown>, o: { wait?: boolean; quiet?: boolean; json?: boolean; silent?: boolean }): Promise<NodeView> {
  const c = clientFor(cli)();
  let n = await c.request<NodeView>('POST', '/v1/nodes', spec);
  if (o.wait !== false) n = await waitHealthy(c, n.id, !o.quiet && !o.json);
  if (o.silent) return n;
  if (o.quiet) console.log(n.id);
  else out(!!o.json, n, () => nodeTable(n));
  return n;
}

/** Streams a follow response to stdout as it arrives (chunked text/plain). */
async function followLogs(cli: Command, path: string): Promise<void> {
  const url = serverUrl(cli.opts<{ url?: string }>().url);
  let res: Response;
  try {
    res = await berthFetch(url + path, { headers: { authorization: `Bearer ${findToken()}` } });
  } catch (err) {
    throw new Error(`cannot reach Berth at ${url} (${(err as Error & { cause?: Error }).cause?.message ?? (err as Error).message}); is "berth up" running?`);
  }
  if (!res.ok || !res.body) {
    const text = await res.text();
    let p: { code?: string; message?: string; details?: Record<string, unknown> } = {};
    try { p = JSON.parse(text) as typeof p; } catch { /* not JSON */ }
    throw new ApiError(res.status, p.code ?? `HTTP_${res.status}`, p.message ?? text.slice(0, 500), p.details ?? {}, p);
  }
  for await (const chunk of res.body) process.stdout.write(chunk);
}

/** PATCHes a node; prints the plan (`dryRun`) or follows the rollout it starts (`wait`). */
export async function updateNode(c: Client, ref: string, patch: Record<string, unknown>, o: { dryRun: boolean; wait: boolean; json?: boolean; quiet?: boolean }): Promise<NodeView | UpdatePlan> {
  const path = `/v1/nodes/${encodeURIComponent(ref)}`;
  if (o.dryRun) {
    const plan = await c.request<UpdatePlan>('PATCH', `${path}?dryRun=true`, patch);
    if (!o.quiet) out(o.json, plan, () => planTable(plan));
    return plan;
  }
  let n = await c.request<NodeView>('PATCH', path, patch);
  const rolling = n.rollout?.state === 'Progressing' && n.changed?.some((f) => !['description', 'scaling', 'permissions', 'rollout'].includes(f));
  if (rolling && o.wait) n = await followRollout(c, n.id, !o.json);
  if (!o.quiet) {
    out(o.json, n, () => (n.changed?.length
      ? `node ${n.name} (${n.id}) updated (${n.changed.join(', ')}): revision ${rolloutLine(n)}`
      : `node ${n.name} (${n.id}) unchanged`));
  }
  return n;
}

export function registerNodes(cli: Command): void {
  const client = clientFor(cli);
  const node = cli.command('node').alias('nodes').description('Groups of instances serving one thing, balanced as one');

  node.command('create').description('Create a cell node (--checkpoint) or an image node (--image); `berth apply -f` takes every field')
    .requiredOption('--name <name>', 'node name')
    .option('--checkpoint <ref>', 'cell node: pinned checkpoint (id or name)')
    .option('--image <ref>', 'image node: container image')
    .option('--port <n>', 'image node: the port the container serves on')
    .option('--protocol <p>', 'image node: http, http2 or grpc', 'http')
    .option('--env <K=V>', 'image node: environment variable (repeat)', collect)
    .option('--health-path <path>', 'image node: HTTP health check path on the endpoint port')
    .option('--username <user>', 'registry user for a private image')
    .option('--password-secret <name>', 'secret holding the registry password')
    .option('--input <name:type>', "input variable name:type[=default] (repeat); types: int float str bool list dict bytes any, list[T], 'ndarray[float32,-1]', dataframe", collect)
    .option('--output <name:type>', 'output variable (repeat)', collect)
    .option('--description <text>')
    .option('--folder <id>', 'folder the node lives in')
    .option('--acl <folder>', 'folder allowed to call it (repeat; default: its own folder)', collect)
    .option('--min <n>', 'minInstances (0: scale to zero when idle, calls held while an instance starts)', '1')
    .option('--max <n>', 'maxInstances (default: min)')
    .option('--sessions <n>', 'sessionsPerInstance', '1')
    .option('--resources <preset>', 'c1.4, c1.8, c1.32, g1.1 or g2.1')
    .option('--timeout <seconds>', 'per-call timeout')
    .option('--python <path>', 'interpreter for the instances')
    .option('--no-wait', 'return at once instead of waiting for Healthy')
    .option('-q, --quiet', 'print only the node id')
    .option('--json', 'print JSON')
    .action(async (o: CreateOptions) => {
      if (!o.checkpoint === !o.image) throw new Error('give --checkpoint (a cell node) or --image (an image node)');
      const scaling = { minInstances: Number(o.min), maxInstances: Number(o.max ?? Math.max(1, Number(o.min))), sessionsPerInstance: Number(o.sessions) };
      const spec: Record<string, unknown> = o.checkpoint
        ? { kind: 'cell', name: o.name, checkpointId: o.checkpoint, inputs: parseVars(o.input, '--input') ?? [], outputs: parseVars(o.output, '--output') ?? [], scaling }
        : {
          kind: 'image', name: o.name, image: o.image, scaling,
          endpoint: { port: Number(o.port), protocol: o.protocol, ...(o.timeout ? { timeout: Number(o.timeout) } : {}) },
          env: Object.fromEntries((o.env ?? []).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)])),
          ...(o.healthPath ? { healthcheck: { protocol: 'http', path: o.healthPath } } : {}),
          ...(o.username ? { username: o.username } : {}), ...(o.passwordSecret ? { passwordSecret: o.passwordSecret } : {}),
        };
      if (o.description) spec.description = o.description;
      if (o.folder) spec.folderId = o.folder;
      if (o.acl) spec.permissions = { folders: o.acl };
      if (o.resources) spec.resources = o.resources;
      if (o.timeout && o.checkpoint) spec.timeout = Number(o.timeout);
      if (o.python) spec.environment = { python: o.python };
      await createNode(cli, spec, o);
    });

  node.command('list').description('List nodes').option('--json', 'print JSON').action(async (o: JsonOption) => {
    const { nodes } = await client().request<NodeList>('GET', '/v1/nodes');
    out(o.json, nodes, () => table(['ID', 'NAME', 'KIND', 'STATUS', 'INSTANCES', 'FOLDER', 'CREATED'],
      nodes.map((n) => [n.id, n.name, n.kind, statusLine(n),
        n.scaledToZero ? '0 (scaled to zero)' : `${n.instances.filter((i) => i.status === 'Healthy').length}/${n.instances.length} healthy`, n.folderId, ago(n.createdAt)])));
  });

  node.command('get <node>').description('Show a node and its instances (id or name)').option('--json', 'print JSON').action(async (ref: string, o: JsonOption) => {
    const n = await client().request<NodeView>('GET', `/v1/nodes/${encodeURIComponent(ref)}`);
    out(o.json, n, () => nodeTable(n));
  });

  node.command('delete <node>').description('Delete a node and stop its instances').option('--json', 'print JSON').action(async (ref: string, o: JsonOption) => {
    const r = await client().request<Deleted>('DELETE', `/v1/nodes/${encodeURIComponent(ref)}`);
    out(o.json, r, () => `node ${r.id} deleted`);
  });

  node.command('update <node>')
    .description('Change a node. Scaling, description and ACL apply in place; checkpoint, image, env, resources… make a new revision, rolled out with zero failed calls')
    .option('--checkpoint <ref>', 'cell node: pinned checkpoint (id or name)').option('--image <ref>', 'image node: container image')
    .option('--env <K=V>', 'image node: set an environment variable (repeat; K= removes it)', collect)
    .option('--resources <preset>', 'c1.4, c1.8, c1.32, g1.1 or g2.1').option('--timeout <seconds>', 'per-call timeout')
    .option('--min <n>', 'scaling.minInstances').option('--max <n>', 'scaling.maxInstances').option('--sessions <n>', 'scaling.sessionsPerInstance')
    .option('--description <text>', 'description').option('--acl <folders>', 'permissions.folders: the folders that may call it, comma-separated')
    .option('--max-surge <n>', 'rollout.maxSurge').option('--max-unavailable <n>', 'rollout.maxUnavailable').option('--deadline <seconds>', 'rollout.deadlineSeconds')
    .option('--dry-run', 'print what would change and change nothing').option('--no-wait', 'return at once instead of following the rollout')
    .option('--json', 'print JSON')
    .action(async (ref: string, o: JsonOption & Record<string, string | string[] | boolean | undefined>) => {
      const num = (v: unknown): number | undefined => (v === undefined ? undefined : Number(v));
      const defined = (x: Record<string, unknown>): Record<string, unknown> | undefined => {
        const e = Object.entries(x).filter(([, v]) => v !== undefined);
        return e.length ? Object.fromEntries(e) : undefined;
      };
      const env = o.env as string[] | undefined;
      const patch: Record<string, unknown> = defined({
        checkpointId: o.checkpoint, image: o.image, resources: o.resources, description: o.description,
        env: env && Object.fromEntries(env.map((kv) => { const i = kv.indexOf('='); return [kv.slice(0, i), i < 0 || i === kv.length - 1 ? null : kv.slice(i + 1)]; })),
        permissions: o.acl === undefined ? undefined : { folders: String(o.acl).split(',').map((f) => f.trim()).filter(Boolean) },
        scaling: defined({ minInstances: num(o.min), maxInstances: num(o.max), sessionsPerInstance: num(o.sessions) }),
        rollout: defined({ maxSurge: num(o.maxSurge), maxUnavailable: num(o.maxUnavailable), deadlineSeconds: num(o.deadline) }),
      }) ?? {};
      if (o.timeout !== undefined) {
        // a cell node's timeout is top-level, an image node's is its endpoint's
        const kind = (await client().request<NodeView>('GET', `/v1/nodes/${encodeURIComponent(ref)}`)).kind;
        Object.assign(patch, kind === 'cell' ? { timeout: Number(o.timeout) } : { endpoint: { timeout: Number(o.timeout) } });
      }
      if (!Object.keys(patch).length) throw new Error('nothing to change: give --checkpoint, --image, --env, --resources, --timeout, --min, --max, --sessions, --description, --acl or a rollout setting');
      await updateNode(client(), ref, patch, { dryRun: !!o.dryRun, wait: o.wait !== false, json: o.json });
    });

  const rollout = node.command('rollout').description('Rollouts of new revisions');
  rollout.command('status <node>').description('Follow the current rollout with a progress bar until it completes or fails')
    .option('--no-wait', 'print the state once').option('--json', 'print JSON')
    .action(async (ref: string, o: JsonOption & { wait: boolean }) => {
      const c = client();
      const n = o.wait && !o.json ? await followRollout(c, ref, true) : await c.request<NodeView>('GET', `/v1/nodes/${encodeURIComponent(ref)}`);
      out(o.json, { id: n.id, revision: n.revision, rollout: n.rollout }, () => `node ${n.name}: revision ${rolloutLine(n)}${n.rollout ? `, last rollout ${n.rollout.state.toLowerCase()}` : ''}`);
    });

  node.command('events <node>').description('What happened to a node, newest first: scale decisions with their reason, wakes, failed starts, rollouts')
    .option('--limit <n>', 'at most this many (1–1000)', '50').option('--before <id>', 'only events older than this id (paging)').option('--json', 'print JSON')
    .action(async (ref: string, o: JsonOption & { limit: string; before?: string }) => {
      const q = new URLSearchParams({ limit: o.limit, ...(o.before ? { before: o.before } : {}) });
      const r = await client().request<NodeEventList>('GET', `/v1/nodes/${encodeURIComponent(ref)}/events?${q}`);
      out(o.json, r, () => table(['ID', 'WHEN', 'TYPE', 'REASON'], r.events.map((e) => [e.id, ago(e.at), e.type, e.reason])));
    });

  node.command('history <node>').description("A node's revisions, newest first").option('--json', 'print JSON')
    .action(async (ref: string, o: JsonOption) => {
      const h = await client().request<RevisionList>('GET', `/v1/nodes/${encodeURIComponent(ref)}/revisions`);
      out(o.json, h, () => table(['REVISION', 'CURRENT', 'RUNS', 'CAUSE', 'CREATED', 'BY'],
        h.revisions.map((r) => [r.revision, r.current ? '*' : '', r.runs.checkpointId ?? r.runs.image ?? '', r.cause, ago(r.createdAt), r.createdBy])));
    });

  node.command('rollback <node>').description('Roll an earlier revision out again (default: the one before the current)')
    .option('--to <revision>', 'the revision to go back to').option('--no-wait', 'return at once instead of following the rollout').option('--json', 'print JSON')
    .action(async (ref: string, o: JsonOption & { to?: string; wait: boolean }) => {
      const c = client();
      let n = await c.request<NodeView>('POST', `/v1/nodes/${encodeURIComponent(ref)}:rollback`, o.to === undefined ? {} : { revision: Number(o.to) });
      if (o.wait) n = await followRollout(c, n.id, !o.json);
      out(o.json, n, () => `node ${n.name} (${n.id}): revision ${rolloutLine(n)}`);
    });

  for (const verb of ['suspend', 'resume'] as const) {
    node.command(`${verb} <node>`)
      .description(verb === 'suspend' ? 'Drain calls and stop every instance; calls get NODE_SUSPENDED until resume (settings are kept)' : 'Start the instances of a suspended node again')
      .option('--json', 'print JSON')
      .action(async (ref: string, o: JsonOption) => {
        const n = await client().request<NodeView>('POST', `/v1/nodes/${encodeURIComponent(ref)}:${verb}`);
        out(o.json, n, () => `node ${n.name} (${n.id}): ${n.status}`);
      });
  }

  node.command('logs <node>').description('What the instances printed (the last lines; -f keeps printing new ones)')
    .option('--instance <id>', 'one instance only').option('--lines <n>', 'last N lines per instance (at most 10000; default 100, 10 with -f)')
    .option('--search <text>', 'only lines containing this text').option('-f, --follow', 'keep printing lines as they are written, until Ctrl-C or the instances end')
    .option('--json', 'print JSON')
    .action(async (ref: string, o: JsonOption & { instance?: string; lines?: string; search?: string; follow?: boolean }) => {
      const q = new URLSearchParams({ ...(o.lines ? { lines: o.lines } : o.follow ? {} : { lines: '100' }), ...(o.instance ? { instance: o.instance } : {}), ...(o.search ? { search: o.search } : {}) });
      if (o.follow) {
        q.set('follow', 'true');
        await followLogs(cli, `/v1/nodes/${encodeURIComponent(ref)}/logs?${q}`);
        return;
      }
      const r = await client().request<NodeLogs>('GET', `/v1/nodes/${encodeURIComponent(ref)}/logs?${q}`);
      out(o.json, r, () => r.logs.map((l) => `==> instance ${l.instanceId} <==\n${l.text}`).join('\n'));
    });

  node.command('snippet <node>').description('Print a working call of a cell node, with example inputs (the token is read from $BERTH_TOKEN)')
    .option('--lang <lang>', `one of ${SNIPPET_LANGS.join(', ')}`, 'curl')
    .option('--folder <id>', 'the folder you call from (default: your token\'s)')
    .action(async (ref: string, o: { lang: string; folder?: string }) => {
      if (!(SNIPPET_LANGS as readonly string[]).includes(o.lang)) throw new Error(`--lang must be one of ${SNIPPET_LANGS.join(', ')}, got "${o.lang}"`);
      const c = client();
      // the contract, not the node: a caller (executor) may read the one and not the other
      const doc = await c.request<OpenApiDoc>('GET', `/v1/nodes/${encodeURIComponent(ref)}/openapi.json`);
      const path = Object.keys(doc.paths)[0]!;
      const nodeId = decodeURIComponent(/\/nodes\/([^/:]+):execute$/.exec(path)![1]!);
      const props = doc.components.schemas.Input.properties;
      const inputs = Object.entries(props).map(([name, p]) => ({ name, type: p['x-berth-type'], ...(Object.hasOwn(p, 'default') ? { default: p.default } : {}) }));
      const proto = await c.request<string>('GET', `/v1/nodes/${encodeURIComponent(ref)}/node.proto`);
      const service = /^service (\S+) \{/m.exec(proto)?.[1];
      const folder = o.folder ?? (await c.request<WhoAmI>('GET', '/v1/whoami')).defaultFolder;
      process.stdout.write(snippet(o.lang as SnippetLang, { url: doc.servers[0]!.url, nodeId, folderId: folder, inputs, service: `berth.nodes.v1.${service}` }));
    });

  node.command('proto <node>').description('Print the typed gRPC contract of a cell node (service berth.nodes.v1.<Name>, served on Berth\'s port)')
    .action(async (ref: string) => {
      process.stdout.write(await client().request<string>('GET', `/v1/nodes/${encodeURIComponent(ref)}/node.proto`));
    });

  node.command('openapi <node>').description('Print the OpenAPI 3.1 contract of a cell node (the Swagger UI shows it at /docs/nodes/<id>)')
    .action(async (ref: string) => {
      process.stdout.write(JSON.stringify(await client().request('GET', `/v1/nodes/${encodeURIComponent(ref)}/openapi.json`), null, 2) + '\n');
    });

  node.command('execute <node>').description('Call a node, like POST /datasphere/v1/nodes/{id}:execute')
    .requiredOption('--input <json>', 'the input variables as a JSON object')
    .option('--folder <id>', 'the folder you call from (default: your token\'s)').option('--json', 'print the raw JSON answer')
    .action(async (ref: string, o: JsonOption & { input: string; folder?: string }) => {
      const c = client();
      const input = parseInput(o.input);
      // an executor token may call but not read nodes: a node id is used as it is
      let id = ref;
      try {
        id = (await c.request<NodeView>('GET', `/v1/nodes/${encodeURIComponent(ref)}`)).id;
      } catch (err) {
        if (!(err instanceof ApiError && err.status === 404 && /^[a-z0-9]{20}$/.test(ref))) throw err;
      }
      const folder = o.folder ?? (await c.request<WhoAmI>('GET', '/v1/whoami')).defaultFolder;
      printOutput(o.json, await c.request<ExecuteAnswer>('POST', `/datasphere/v1/nodes/${id}:execute`, { folder_id: folder, input }));
    });
}
