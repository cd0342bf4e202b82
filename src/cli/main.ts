// The `berth` command line. Every command prints a table (or a short line) and takes --json.
import { Command, Option } from 'commander';
import { readFileSync, existsSync } from 'node:fs';
import { extname, resolve } from 'node:path';
import YAML from 'yaml';
import { loadConfig, defaultHome, parseByteSize } from '../core/config.js';
import { ApiError, Client, berthFetch, findToken, serverUrl } from './client.js';
import { ago, bytes, table } from './format.js';

const program = new Command();
program.name('berth').description('Self-hosted model serving: cell nodes from Python checkpoints, balanced and health-checked.')
  .option('--url <url>', 'Berth server URL (default: $BERTH_URL, the running server in $BERTH_HOME, or http://127.0.0.1:7700)')
  .option('--ca <file>', 'trust this PEM certificate for an https URL, e.g. a self-signed --tls-cert (default: $BERTH_CA)')
  .showHelpAfterError();
program.hook('preAction', () => { const ca = program.opts().ca as string | undefined; if (ca) process.env.BERTH_CA = resolve(ca); });

const client = (): Client => new Client(serverUrl(program.opts().url), findToken);
const out = (json: boolean, data: unknown, human: () => string): void => {
  console.log(json ? JSON.stringify(data, null, 2) : human());
};

// ---- up ----
program.command('up').description('Run the control API, controller and gateway in this process')
  .option('--host <host>', 'address to listen on', process.env.BERTH_HOST ?? '127.0.0.1')
  .option('--port <port>', 'port to listen on (0 picks a free one)', process.env.BERTH_PORT ?? '7700')
  .option('--home <dir>', 'data directory (default: $BERTH_HOME or ~/.berth)')
  .option('--python <path>', 'Python for checkpoints and cell instances (default: $BERTH_PYTHON or /usr/bin/python3)')
  .option('--allow-python <path>', 'another interpreter nodes and checkpoint runs may name (repeat; default: only --python, or $BERTH_ALLOWED_PYTHONS)', (v: string, prev: string[] = []) => [...prev, v])
  .addOption(new Option('--runtime <name>', 'where instances run: local processes, or Docker containers (needed for image nodes)').choices(['process', 'docker']).default(process.env.BERTH_RUNTIME ?? 'process'))
  .option('--kernel-image <image>', 'docker runtime: image cell nodes run in when they name none (Python 3 + dill)')
  .option('--metrics-listen <host:port>', 'also serve /metrics without a token on this address (keep it private)')
  .option('--log-max-bytes <size>', 'instance logs rotate past this size, e.g. 10m (default: $BERTH_LOG_MAX_BYTES or 10m)')
  .option('--log-files <n>', 'instance log files kept per instance, the current one included (default: $BERTH_LOG_FILES or 2)')
  .option('--tls-cert <file>', 'serve HTTPS, h2 and gRPC over TLS with this PEM certificate chain (needs --tls-key; default $BERTH_TLS_CERT)')
  .option('--tls-key <file>', 'the PEM private key for --tls-cert (default $BERTH_TLS_KEY)')
  .option('--max-connections <n>', 'connections open at once; past it 503 + Retry-After / GOAWAY (default: from ulimit -n, or $BERTH_MAX_CONNECTIONS)')
  .option('--headers-timeout <seconds>', 'from connect to a complete request head or first h2 stream (default 20, or $BERTH_HEADERS_TIMEOUT)')
  .option('--max-request-bytes <size>', 'largest request body a call or upload may send, e.g. 16m (default 16m, or $BERTH_MAX_REQUEST_BYTES)')
  .option('--max-response-bytes <size>', 'largest answer an instance may return, e.g. 16m (default 16m, or $BERTH_MAX_RESPONSE_BYTES)')
  .option('--idle-timeout <seconds>', 'close a connection with no call running, or a request body, silent this long (default 300, or $BERTH_IDLE_TIMEOUT)')
  .addOption(new Option('--sandbox <mode>', 'run cells and checkpoint runs in bubblewrap, or unsandboxed (none: a machine only you use)').choices(['bubblewrap', 'none']).default(process.env.BERTH_SANDBOX ?? 'bubblewrap'))
  .action(async (o) => {
    const { startBerth, checkPython } = await import('../server.js');
    if (Boolean(o.tlsCert) !== Boolean(o.tlsKey)) { console.error('berth: --tls-cert and --tls-key go together'); process.exit(2); }
    const positive = (flag: string, v: unknown): number => {
      const n = Number(v);
      if (!Number.isFinite(n) || n <= 0) { console.error(`berth: ${flag} takes a positive number, got ${String(v)}`); process.exit(2); }
      return n;
    };
    const config = loadConfig({
      host: o.host, port: Number(o.port), runtime: o.runtime, ...(o.allowPython ? { allowedPythons: o.allowPython } : {}), ...(o.home ? { home: o.home } : {}), ...(o.python ? { python: o.python } : {}),
      ...(o.kernelImage ? { kernelImage: o.kernelImage } : {}), ...(o.metricsListen ? { metricsListen: o.metricsListen } : {}),
      ...(o.logMaxBytes !== undefined ? { logMaxBytes: parseByteSize(o.logMaxBytes) ?? NaN } : {}),
      ...(o.logFiles !== undefined ? { logFiles: Number(o.logFiles) } : {}), sandbox: o.sandbox,
      ...(o.tlsCert ? { tls: { certFile: resolve(o.tlsCert), keyFile: resolve(o.tlsKey) } } : {}),
      ...(o.maxConnections !== undefined ? { maxConnections: Math.floor(positive('--max-connections', o.maxConnections)) } : {}),
      ...(o.headersTimeout !== undefined ? { headersTimeoutMs: positive('--headers-timeout', o.headersTimeout) * 1000 } : {}),
      ...(o.idleTimeout !== undefined ? { idleTimeoutMs: positive('--idle-timeout', o.idleTimeout) * 1000 } : {}),
      ...(o.maxRequestBytes !== undefined ? { maxRequestBytes: positive('--max-request-bytes', parseByteSize(o.maxRequestBytes) ?? NaN) } : {}),
      ...(o.maxResponseBytes !== undefined ? { maxResponseBytes: positive('--max-response-bytes', parseByteSize(o.maxResponseBytes) ?? NaN) } : {}),
    });
    for (const [flag, v] of [['--max-request-bytes', config.maxRequestBytes], ['--max-response-bytes', config.maxResponseBytes]] as const) {
      if (!Number.isInteger(v) || v < 1024) { console.error(`berth: ${flag} must be a size of at least 1k, e.g. 16m (got ${v})`); process.exit(2); }
    }
    const problem = checkPython(config.python);
    if (problem) { console.error(`berth: ${problem}`); process.exit(2); }
    let berth;
    try {
      berth = await startBerth(config);
    } catch (err) {
      console.error(`berth: ${(err as Error).message}`);
      process.exit(2);
    }
    console.log(`Berth listening on ${berth.url} (home ${config.home}, runtime ${config.runtime}, python ${config.python}, sandbox ${config.sandbox})`);
    console.log(`admin token: ${config.home}/admin-token`);
    let stopping = false;
    const stop = (signal: string): void => {
      if (stopping) return;
      stopping = true;
      console.log(`${signal}: letting running calls finish, then stopping instances…`);
      berth.close().then(() => { console.log('stopped'); process.exit(0); }, (err) => { console.error(err); process.exit(1); });
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });

program.command('status').description('Is the server up? Shows where it is and what it runs')
  .option('--wait [seconds]', 'wait until it answers (default 30s)').option('--json', 'print JSON')
  .action(async (o) => {
    const c = client();
    const deadline = Date.now() + (o.wait === undefined ? 0 : o.wait === true ? 30 : Number(o.wait)) * 1000;
    for (;;) {
      try {
        await c.request('GET', '/v1/health');
        break;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    const { nodes } = await c.request('GET', '/v1/nodes');
    const { checkpoints } = await c.request('GET', '/v1/checkpoints');
    const data = { url: c.url, nodes: nodes.length, healthyNodes: nodes.filter((n: any) => n.status === 'Healthy').length, checkpoints: checkpoints.length };
    out(o.json, data, () => `Berth at ${data.url}: ${data.nodes} node(s), ${data.healthyNodes} healthy; ${data.checkpoints} checkpoint(s)`);
  });

// ---- checkpoints ----
const ckpt = program.command('checkpoint').alias('checkpoints').description('Saved interpreter states (only pinned ones can back nodes)');

ckpt.command('create <file>').description('Run a script (cells split by "# %%") or a .ipynb notebook in a fresh interpreter and save its state')
  .option('--name <name>', 'pin it with this name')
  .option('--cell <n>', 'the serving cell, 0-based (default: the last); negative counts from the end')
  .option('--python <path>', 'interpreter to run it with (default: the server\'s)')
  .option('--folder <id>', 'folder (default: your token\'s)')
  .option('--json', 'print JSON')
  .action(async (file, o) => {
    const text = readFileSync(file, 'utf8');
    const body: Record<string, unknown> = extname(file) === '.ipynb' ? { notebook: text } : { script: text };
    if (o.name) body.name = o.name;
    if (o.cell !== undefined) body.servingCell = Number(o.cell);
    if (o.python) body.python = o.python;
    if (o.folder) body.folderId = o.folder;
    if (!o.json) process.stderr.write(`running ${file} in a fresh interpreter…\n`);
    const c = await client().request('POST', '/v1/checkpoints', body);
    if (!o.json && c.log) process.stderr.write(c.log.replace(/^/gm, '  | '));
    out(o.json, c, () => `checkpoint ${c.id}${c.name ? ` pinned as "${c.name}"` : ' (not pinned)'}: ${c.variables.length} variables, ${bytes(c.size)}, Python ${c.python}` +
      (c.skipped.length ? `\nnot saved (cannot be pickled): ${c.skipped.map((s: any) => `${s.name} (${s.type})`).join(', ')}` : ''));
  });

ckpt.command('list').description('List checkpoints').option('--json', 'print JSON').action(async (o) => {
  const { checkpoints } = await client().request('GET', '/v1/checkpoints');
  out(o.json, checkpoints, () => table(['ID', 'NAME', 'SOURCE', 'PYTHON', 'VARIABLES', 'SIZE', 'CREATED'],
    checkpoints.map((c: any) => [c.id, c.name ?? '(not pinned)', c.source, c.python, c.variables.length, bytes(c.size), ago(c.createdAt)])));
});

ckpt.command('get <ref>').description('Show a checkpoint (id or name)').option('--json', 'print JSON').action(async (ref, o) => {
  const c = await client().request('GET', `/v1/checkpoints/${encodeURIComponent(ref)}`);
  out(o.json, c, () => [
    table(['FIELD', 'VALUE'], [['id', c.id], ['name', c.name ?? '(not pinned)'], ['source', c.source], ['python', `${c.python} (${c.executable})`],
      ['size', bytes(c.size)], ['sha256', c.sha256], ['variables', c.variables.map((v: any) => `${v.name}: ${v.type}`).join(', ')],
      ['requires', c.requires.map((p: any) => `${p.name}==${p.version}`).join(', ') || '(standard library only)'], ['created', c.createdAt]]),
    'serving cell:', c.code.replace(/^/gm, '  '),
  ].join('\n'));
});

for (const [cmd, desc] of [['pin', 'Pin a checkpoint under a name'], ['rename', 'Rename a pinned checkpoint']] as const) {
  ckpt.command(`${cmd} <ref> <name>`).description(desc).option('--json', 'print JSON').action(async (ref, name, o) => {
    const c = await client().request('PATCH', `/v1/checkpoints/${encodeURIComponent(ref)}`, { name });
    out(o.json, c, () => `checkpoint ${c.id} pinned as "${c.name}"`);
  });
}

ckpt.command('unpin <ref>').description('Remove a checkpoint\'s name').option('--json', 'print JSON').action(async (ref, o) => {
  const c = await client().request('PATCH', `/v1/checkpoints/${encodeURIComponent(ref)}`, { name: null });
  out(o.json, c, () => `checkpoint ${c.id} unpinned`);
});

ckpt.command('delete <ref>').description('Delete a checkpoint no node uses').option('--json', 'print JSON').action(async (ref, o) => {
  const r = await client().request('DELETE', `/v1/checkpoints/${encodeURIComponent(ref)}`);
  out(o.json, r, () => `checkpoint ${r.id} deleted`);
});

// ---- nodes ----
const node = program.command('node').alias('nodes').description('Groups of instances serving one thing, balanced as one');

const parseVars = (list: string[] | undefined, flag: string): Array<{ name: string; type: string }> | undefined =>
  list?.map((s) => {
    const [name, type] = s.split(':');
    if (!name || !type) throw new Error(`${flag} takes name:type, e.g. ${flag} input_data:dict (got "${s}")`);
    return { name, type };
  });
const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

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
  .option('--input <name:type>', 'input variable (repeat); types: int float str bool list dict bytes any', collect)
  .option('--output <name:type>', 'output variable (repeat)', collect)
  .option('--description <text>')
  .option('--folder <id>', 'folder the node lives in')
  .option('--acl <folder>', 'folder allowed to call it (repeat; default: its own folder)', collect)
  .option('--min <n>', 'minInstances', '1')
  .option('--max <n>', 'maxInstances (default: min)')
  .option('--sessions <n>', 'sessionsPerInstance', '1')
  .option('--resources <preset>', 'c1.4, c1.8, c1.32, g1.1 or g2.1')
  .option('--timeout <seconds>', 'per-call timeout')
  .option('--python <path>', 'interpreter for the instances')
  .option('--no-wait', 'return at once instead of waiting for Healthy')
  .option('-q, --quiet', 'print only the node id')
  .option('--json', 'print JSON')
  .action(async (o) => {
    if (!o.checkpoint === !o.image) throw new Error('give --checkpoint (a cell node) or --image (an image node)');
    const scaling = { minInstances: Number(o.min), maxInstances: Number(o.max ?? o.min), sessionsPerInstance: Number(o.sessions) };
    const spec: Record<string, unknown> = o.checkpoint
      ? { kind: 'cell', name: o.name, checkpointId: o.checkpoint, inputs: parseVars(o.input, '--input') ?? [], outputs: parseVars(o.output, '--output') ?? [], scaling }
      : {
        kind: 'image', name: o.name, image: o.image, scaling,
        endpoint: { port: Number(o.port), protocol: o.protocol, ...(o.timeout ? { timeout: Number(o.timeout) } : {}) },
        env: Object.fromEntries((o.env ?? []).map((kv: string) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)])),
        ...(o.healthPath ? { healthcheck: { protocol: 'http', path: o.healthPath } } : {}),
        ...(o.username ? { username: o.username } : {}), ...(o.passwordSecret ? { passwordSecret: o.passwordSecret } : {}),
      };
    if (o.description) spec.description = o.description;
    if (o.folder) spec.folderId = o.folder;
    if (o.acl) spec.permissions = { folders: o.acl };
    if (o.resources) spec.resources = o.resources;
    if (o.timeout && o.checkpoint) spec.timeout = Number(o.timeout);
    if (o.python) spec.environment = { python: o.python };
    await createNode(spec, o);
  });

async function createNode(spec: Record<string, unknown>, o: { wait?: boolean; quiet?: boolean; json?: boolean; silent?: boolean }): Promise<any> {
  const c = client();
  let n = await c.request('POST', '/v1/nodes', spec);
  if (o.wait !== false) n = await waitHealthy(c, n.id, !o.quiet && !o.json);
  if (o.silent) return n;
  if (o.quiet) console.log(n.id);
  else out(!!o.json, n, () => nodeTable(n));
  return n;
}

/** Shows progress while instances start; gives up with the instances' last errors. */
async function waitHealthy(c: Client, id: string, progress: boolean, timeoutS = Number(process.env.BERTH_WAIT_SECONDS ?? 300)): Promise<any> {
  const started = Date.now();
  let last = '';
  for (;;) {
    const n = await c.request('GET', `/v1/nodes/${id}`);
    const line = `node ${n.name}: ${n.status} — ` + (n.instances.map((i: any) => i.status).join(', ') || 'no instances yet');
    if (progress && line !== last) { process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${line}\n`); last = line; }
    if (n.status === 'Healthy') return n;
    if (Date.now() - started > timeoutS * 1000) {
      const errors = n.instances.map((i: any) => i.lastError).filter(Boolean);
      throw new Error(`node ${id} is not Healthy after ${timeoutS}s (${n.status})${errors.length ? `: ${errors[0]}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

function nodeTable(n: any): string {
  const kindRows: Array<[string, string]> = n.kind === 'cell'
    ? [['checkpoint', n.checkpointId], ['inputs', n.inputs.map((v: any) => `${v.name}: ${v.type}`).join(', ')],
      ['outputs', n.outputs.map((v: any) => `${v.name}: ${v.type}`).join(', ')], ['timeout', `${n.timeout}s`]]
    : [['image', n.image], ['endpoint', `${n.endpoint.protocol} :${n.endpoint.port}, timeout ${n.endpoint.timeout}s, idle ${n.endpoint.idleTimeout}s`],
      ['health check', `${n.healthcheck.protocol}${n.healthcheck.path ? ' ' + n.healthcheck.path : ''} :${n.healthcheck.port}`],
      ...(n.telemetry ? [['telemetry', `${n.telemetry.format} :${n.telemetry.port}${n.telemetry.path}`] as [string, string]] : [])];
  const head = table(['FIELD', 'VALUE'], [
    ['id', n.id], ['name', n.name], ['kind', n.kind], ['status', n.status], ['folder', n.folderId], ...kindRows,
    ['scaling', `${n.scaling.minInstances}–${n.scaling.maxInstances} instances, ${n.scaling.sessionsPerInstance} session(s) each`],
    ['acl', n.permissions.folders.join(', ')],
  ]);
  const inst = table(['INSTANCE', 'STATUS', 'SINCE', 'RESTARTS', 'IN FLIGHT', 'LAST ERROR'],
    n.instances.map((i: any) => [i.id, i.status, ago(i.updatedAt), i.restarts, i.inFlight, i.lastError ?? '']));
  return `${head}\n${inst}${n.warnings?.length ? `\nnote: ${n.warnings.join('; ')}` : ''}`;
}

node.command('list').description('List nodes').option('--json', 'print JSON').action(async (o) => {
  const { nodes } = await client().request('GET', '/v1/nodes');
  out(o.json, nodes, () => table(['ID', 'NAME', 'KIND', 'STATUS', 'INSTANCES', 'FOLDER', 'CREATED'],
    nodes.map((n: any) => [n.id, n.name, n.kind, n.status,
      `${n.instances.filter((i: any) => i.status === 'Healthy').length}/${n.instances.length} healthy`, n.folderId, ago(n.createdAt)])));
});

node.command('get <node>').description('Show a node and its instances (id or name)').option('--json', 'print JSON').action(async (ref, o) => {
  const n = await client().request('GET', `/v1/nodes/${encodeURIComponent(ref)}`);
  out(o.json, n, () => nodeTable(n));
});

node.command('delete <node>').description('Delete a node and stop its instances').option('--json', 'print JSON').action(async (ref, o) => {
  const r = await client().request('DELETE', `/v1/nodes/${encodeURIComponent(ref)}`);
  out(o.json, r, () => `node ${r.id} deleted`);
});

node.command('update <node>').description('Change scaling, description or ACL in place (nothing restarts); the rest needs revisions, not built yet')
  .option('--min <n>', 'scaling.minInstances').option('--max <n>', 'scaling.maxInstances')
  .option('--description <text>', 'description').option('--acl <folders>', 'permissions.folders: the folders that may call it, comma-separated')
  .option('--json', 'print JSON')
  .action(async (ref, o) => {
    const scaling: Record<string, number> = {};
    if (o.min !== undefined) scaling.minInstances = Number(o.min);
    if (o.max !== undefined) scaling.maxInstances = Number(o.max);
    const patch: Record<string, unknown> = {
      ...(Object.keys(scaling).length ? { scaling } : {}),
      ...(o.description !== undefined ? { description: o.description } : {}),
      ...(o.acl !== undefined ? { permissions: { folders: String(o.acl).split(',').map((f) => f.trim()).filter(Boolean) } } : {}),
    };
    if (!Object.keys(patch).length) throw new Error('nothing to change: give --min, --max, --description or --acl');
    const n = await client().request('PATCH', `/v1/nodes/${encodeURIComponent(ref)}`, patch);
    out(o.json, n, () => `node ${n.name} (${n.id}) updated: ${n.scaling.minInstances}-${n.scaling.maxInstances} instances, ACL ${n.permissions.folders.join(', ')}`);
  });

for (const verb of ['suspend', 'resume'] as const) {
  node.command(`${verb} <node>`)
    .description(verb === 'suspend' ? 'Drain calls and stop every instance; calls get NODE_SUSPENDED until resume (settings are kept)' : 'Start the instances of a suspended node again')
    .option('--json', 'print JSON')
    .action(async (ref, o) => {
      const n = await client().request('POST', `/v1/nodes/${encodeURIComponent(ref)}:${verb}`);
      out(o.json, n, () => `node ${n.name} (${n.id}): ${n.status}`);
    });
}

node.command('logs <node>').description('What the instances printed (the last lines; -f keeps printing new ones)')
  .option('--instance <id>', 'one instance only').option('--lines <n>', 'last N lines per instance (at most 10000; default 100, 10 with -f)')
  .option('--search <text>', 'only lines containing this text').option('-f, --follow', 'keep printing lines as they are written, until Ctrl-C or the instances end')
  .option('--json', 'print JSON')
  .action(async (ref, o) => {
    const q = new URLSearchParams({ ...(o.lines ? { lines: o.lines } : o.follow ? {} : { lines: '100' }), ...(o.instance ? { instance: o.instance } : {}), ...(o.search ? { search: o.search } : {}) });
    if (o.follow) {
      q.set('follow', 'true');
      await followLogs(`/v1/nodes/${encodeURIComponent(ref)}/logs?${q}`);
      return;
    }
    const r = await client().request('GET', `/v1/nodes/${encodeURIComponent(ref)}/logs?${q}`);
    out(o.json, r, () => r.logs.map((l: any) => `==> instance ${l.instanceId} <==\n${l.text}`).join('\n'));
  });

/** Streams a follow response to stdout as it arrives (chunked text/plain). */
async function followLogs(path: string): Promise<void> {
  const url = serverUrl(program.opts().url);
  let res: Response;
  try {
    res = await berthFetch(url + path, { headers: { authorization: `Bearer ${findToken()}` } });
  } catch (err) {
    throw new Error(`cannot reach Berth at ${url} (${(err as Error & { cause?: Error }).cause?.message ?? (err as Error).message}); is "berth up" running?`);
  }
  if (!res.ok || !res.body) {
    const text = await res.text();
    let p: any = {};
    try { p = JSON.parse(text); } catch { /* not JSON */ }
    throw new ApiError(res.status, p.code ?? `HTTP_${res.status}`, p.message ?? text.slice(0, 500), p.details ?? {}, p);
  }
  for await (const chunk of res.body) process.stdout.write(chunk);
}

/** The answer of an execute call: one row per output variable, or the raw JSON. */
const printOutput = (json: boolean, r: { output?: Record<string, unknown> }): void =>
  out(json, r, () => table(['OUTPUT', 'VALUE'], Object.entries(r.output ?? {}).map(([k, v]) => [k, JSON.stringify(v)])));

const parseInput = (text: string): unknown => {
  try { return JSON.parse(text); } catch { throw new Error('--input must be a JSON object, e.g. --input \'{"x": 1}\''); }
};

node.command('execute <node>').description('Call a node, like POST /datasphere/v1/nodes/{id}:execute')
  .requiredOption('--input <json>', 'the input variables as a JSON object')
  .option('--folder <id>', 'the folder you call from (default: your token\'s)').option('--json', 'print the raw JSON answer')
  .action(async (ref, o) => {
    const c = client();
    const input = parseInput(o.input);
    // an executor token may call but not read nodes: a node id is used as it is
    let id = ref;
    try {
      id = (await c.request('GET', `/v1/nodes/${encodeURIComponent(ref)}`)).id;
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404 && /^[a-z0-9]{20}$/.test(ref))) throw err;
    }
    const folder = o.folder ?? (await c.request('GET', '/v1/whoami')).defaultFolder;
    printOutput(o.json, await c.request('POST', `/datasphere/v1/nodes/${id}:execute`, { folder_id: folder, input }));
  });

// ---- apply ----
program.command('apply').description('Create or update the nodes and aliases described in a YAML file (an existing node takes scaling, description and ACL changes in place)')
  .requiredOption('-f, --file <file>', 'YAML file, one or more documents')
  .option('--no-wait', 'do not wait for Healthy').option('--json', 'print JSON')
  .action(async (o) => {
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
        const found = (await c.request('GET', '/v1/aliases')).aliases.find((a: any) => a.name === spec.name);
        const a = found
          ? await c.request('PATCH', `/v1/aliases/${encodeURIComponent(String(spec.name))}`, Object.fromEntries(Object.entries(body).filter(([k]) => !['name', 'folderId', 'projectId'].includes(k))))
          : await c.request('POST', '/v1/aliases', body);
        results.push({ id: a.id, name: a.name, kind: 'alias', action: found ? 'updated' : 'created' });
        if (!o.json) console.log(`alias ${a.name} ${found ? 'updated' : 'created'}`);
        continue;
      }
      const existing = (await c.request('GET', '/v1/nodes')).nodes.find((n: any) => n.name === spec.name && (!spec.folderId || n.folderId === spec.folderId));
      if (existing) {
        // a merge patch: what the file says is applied, what it leaves out stays as it is
        const n = await c.request('PATCH', `/v1/nodes/${existing.id}`, spec);
        const action = n.updatedAt === existing.updatedAt ? 'unchanged' : 'updated';
        if (!o.json) console.log(`node ${existing.name} (${existing.id}) ${action}`);
        results.push({ id: existing.id, name: existing.name, action });
        continue;
      }
      const n = await createNode(spec, { wait: o.wait, json: o.json, silent: true });
      results.push({ id: n.id, name: n.name ?? spec.name, action: 'created' });
      if (!o.json) console.log(`node ${spec.name} created`);
    }
    if (o.json) console.log(JSON.stringify(results, null, 2));
  });

// ---- aliases ----
const alias = program.command('alias').alias('aliases').description('Stable endpoints that spread calls over nodes by weight');

/** "node=90" or "node" (weight 1); node by id or name. */
async function parseBackends(c: Client, list: string[]): Promise<Array<{ nodeId: string; weight: number }>> {
  const { nodes } = await c.request('GET', '/v1/nodes');
  return list.map((item) => {
    const [ref, w] = item.split('=');
    const n = nodes.find((x: any) => x.id === ref || x.name === ref);
    if (!n) throw new Error(`--backend ${item}: no node ${ref}`);
    return { nodeId: n.id, weight: w === undefined ? 1 : Number(w) };
  });
}

function aliasTable(a: any): string {
  const head = table(['FIELD', 'VALUE'], [
    ['id', a.id], ['name', a.name], ['folder', a.folderId],
    ['acl', a.executionAcl.isPublic ? 'public (any token)' : a.executionAcl.folders.join(', ')],
    ['headers', a.proxyMetadata.headers.map((h: any) => `${h.name}: ${h.value}`).join(', ')],
    ['sticky', a.sticky ? `by header ${a.sticky.header}` : ''],
    ['mirror', a.mirror ? `${a.mirror.percent}% to ${a.mirror.nodeId}` : ''],
  ]);
  const total = a.backends.reduce((s: number, b: any) => s + b.weight, 0);
  const backends = table(['NODE', 'WEIGHT', 'SHARE', 'NODE STATUS', 'HEALTHY INSTANCES'],
    a.status.backends.map((b: any) => [b.nodeId, b.weight, `${((100 * b.weight) / total).toFixed(1)}%`, b.nodeStatus, b.healthyInstances]));
  const m = a.status.mirror;
  const mirror = m ? `\nmirror: ${m.compared} compared, ${m.differing} differing (${(100 * m.differingRatio).toFixed(1)}%), p50 primary ${m.primaryP50Ms?.toFixed(1) ?? '-'} ms / shadow ${m.shadowP50Ms?.toFixed(1) ?? '-'} ms` : '';
  return `${head}\n${backends}${mirror}`;
}

alias.command('create <name>').description('Create an alias, e.g. --backend model-v1=100')
  .requiredOption('--backend <node=weight>', 'a backend node and its weight (repeat)', collect)
  .option('--acl <folder>', 'folder allowed to call (repeat; default: its own folder)', collect)
  .option('--public', 'any valid token may call it')
  .option('--header <name=value>', 'header added to every call passed on (repeat)', collect)
  .option('--sticky-header <name>', 'calls with the same value in this header reach the same node and instance')
  .option('--folder <id>').option('--json', 'print JSON')
  .action(async (name, o) => {
    const c = client();
    const spec: Record<string, unknown> = { name, backends: await parseBackends(c, o.backend) };
    if (o.folder) spec.folderId = o.folder;
    if (o.acl || o.public) spec.executionAcl = { ...(o.acl ? { folders: o.acl } : {}), isPublic: !!o.public };
    if (o.header) spec.proxyMetadata = { headers: o.header.map((h: string) => ({ name: h.slice(0, h.indexOf('=')), value: h.slice(h.indexOf('=') + 1) })) };
    if (o.stickyHeader) spec.sticky = { header: o.stickyHeader };
    const a = await c.request('POST', '/v1/aliases', spec);
    out(o.json, a, () => aliasTable(a));
  });

alias.command('list').description('List aliases').option('--json', 'print JSON').action(async (o) => {
  const { aliases } = await client().request('GET', '/v1/aliases');
  out(o.json, aliases, () => table(['NAME', 'BACKENDS', 'ACL', 'CREATED'], aliases.map((a: any) => [a.name,
    a.backends.map((b: any) => `${b.nodeId}=${b.weight}`).join(' '), a.executionAcl.isPublic ? 'public' : a.executionAcl.folders.join(', '), ago(a.createdAt)])));
});

alias.command('get <name>').description('Show an alias, its backends and their status').option('--json', 'print JSON').action(async (name, o) => {
  const a = await client().request('GET', `/v1/aliases/${encodeURIComponent(name)}`);
  out(o.json, a, () => aliasTable(a));
});

alias.command('set <name>').description('Replace the backends at once, e.g. --backend v1=90 --backend v2=10')
  .requiredOption('--backend <node=weight>', 'a backend node and its weight (repeat)', collect).option('--json', 'print JSON')
  .action(async (name, o) => {
    const c = client();
    const a = await c.request('PATCH', `/v1/aliases/${encodeURIComponent(name)}`, { backends: await parseBackends(c, o.backend) });
    out(o.json, a, () => aliasTable(a));
  });

alias.command('shift <name> <node> <percent>').description('Send PERCENT% of calls to NODE (added if new); the other backends share the rest in their current proportions')
  .option('--json', 'print JSON')
  .action(async (name, nodeRef, percentText, o) => {
    const c = client();
    const percent = Number(String(percentText).replace('%', ''));
    if (!(percent >= 0 && percent <= 100)) throw new Error('percent must be between 0 and 100');
    const a = await c.request('GET', `/v1/aliases/${encodeURIComponent(name)}`);
    const [target] = await parseBackends(c, [nodeRef]);
    const others = a.backends.filter((b: any) => b.nodeId !== target!.nodeId);
    const rest = others.reduce((s: number, b: any) => s + b.weight, 0);
    if (percent < 100 && rest === 0) throw new Error(`${nodeRef} is the only backend: add another before moving weight away from it`);
    // weights out of 1000 keep one decimal of a percent
    const backends = [
      ...(percent > 0 ? [{ nodeId: target!.nodeId, weight: percent * 10 }] : []),
      ...(percent < 100 ? others.map((b: any) => ({ nodeId: b.nodeId, weight: Math.max(1e-6, ((100 - percent) * 10 * b.weight) / rest) })) : []),
    ];
    const updated = await c.request('PATCH', `/v1/aliases/${encodeURIComponent(name)}`, { backends });
    out(o.json, updated, () => aliasTable(updated));
  });

alias.command('delete <name>').description('Delete an alias (its nodes stay)').option('--json', 'print JSON').action(async (name, o) => {
  const r = await client().request('DELETE', `/v1/aliases/${encodeURIComponent(name)}`);
  out(o.json, r, () => `alias ${name} deleted`);
});

alias.command('execute <name>').description('Call an alias over cell nodes, like POST /datasphere/v1/aliases/{name}:execute')
  .requiredOption('--input <json>', 'the input variables as a JSON object').option('--folder <id>', 'the folder you call from')
  .option('--json', 'print the raw JSON answer')
  .action(async (name, o) => {
    const c = client();
    const input = parseInput(o.input);
    const folder = o.folder ?? (await c.request('GET', '/v1/whoami')).defaultFolder;
    printOutput(o.json, await c.request('POST', `/datasphere/v1/aliases/${encodeURIComponent(name)}:execute`, { folder_id: folder, input }));
  });

// ---- secrets ----
const sec = program.command('secret').alias('secrets').description('Encrypted values (registry passwords) referred to by name');
sec.command('create <name>').description('Store a secret in a folder; the value comes from --value or standard input')
  .option('--value <value>', 'the value (prefer stdin: it stays out of your shell history)').option('--folder <id>', "the secret's folder (default: the token's)").option('--json', 'print JSON')
  .action(async (name, o) => {
    const value = o.value ?? readFileSync(0, 'utf8').replace(/\n$/, '');
    const r = await client().request('POST', '/v1/secrets', { name, value, ...(o.folder ? { folderId: o.folder } : {}) });
    out(o.json, r, () => `secret ${r.name} stored in folder ${r.folderId}`);
  });
sec.command('list').description('List secrets (names only)').option('--folder <id>', 'only this folder').option('--json', 'print JSON').action(async (o) => {
  const { secrets } = await client().request('GET', `/v1/secrets${o.folder ? `?folderId=${encodeURIComponent(o.folder)}` : ''}`);
  out(o.json, secrets, () => table(['NAME', 'FOLDER', 'ID', 'CREATED'], secrets.map((s: any) => [s.name, s.folderId, s.id, ago(s.createdAt)])));
});
sec.command('delete <name>').description('Delete a secret no node uses').option('--folder <id>', "the secret's folder (default: the token's)").option('--json', 'print JSON').action(async (name, o) => {
  const r = await client().request('DELETE', `/v1/secrets/${encodeURIComponent(name)}${o.folder ? `?folderId=${encodeURIComponent(o.folder)}` : ''}`);
  out(o.json, r, () => `secret ${name} deleted`);
});

// ---- tokens ----
const tok = program.command('token').alias('tokens').description('Bearer tokens for callers (admin)');
const rolesText = (roles: Record<string, string>): string => Object.entries(roles).map(([f, r]) => `${f}=${r}`).join(', ');
tok.command('create').description('Create a token with a role in one or more folders')
  .requiredOption('--folder <id>', 'folder the token may act in (repeat; * for every folder)', collect)
  .addOption(new Option('--role <role>', 'admin: everything; editor: manage and call; executor: call only; viewer: read only').choices(['admin', 'editor', 'executor', 'viewer']).default('editor'))
  .option('--name <name>', 'label', 'token').option('--json', 'print JSON')
  .action(async (o) => {
    const r = await client().request('POST', '/v1/tokens', { name: o.name, folders: o.folder, role: o.role });
    out(o.json, r, () => `${r.token}\n(shown once; roles: ${rolesText(r.roles)})`);
  });
tok.command('list').description('List tokens').option('--json', 'print JSON').action(async (o) => {
  const { tokens } = await client().request('GET', '/v1/tokens');
  out(o.json, tokens, () => table(['ID', 'NAME', 'ROLES', 'CREATED'], tokens.map((t: any) => [t.id, t.name, rolesText(t.roles), ago(t.createdAt)])));
});
tok.command('delete <id>').description('Revoke a token').option('--json', 'print JSON').action(async (id, o) => {
  const r = await client().request('DELETE', `/v1/tokens/${id}`);
  out(o.json, r, () => `token ${id} revoked`);
});
// ---- folders: quotas and the audit log ----
const folder = program.command('folder').alias('folders').description("Folders' quotas and usage");
const folderTable = (f: any): string => table(['QUOTA', 'LIMIT', 'USED'], [
  ['maxNodes', f.quota.maxNodes, f.usage.nodes],
  ['maxInstances', f.quota.maxInstances, f.usage.instances],
  ['maxCheckpointBytes', bytes(f.quota.maxCheckpointBytes), bytes(f.usage.checkpointBytes)],
  ['maxUploadBytes', bytes(f.quota.maxUploadBytes), ''],
  ['maxCheckpointRuns', f.quota.maxCheckpointRuns, ''],
]);
folder.command('get <id>').description("A folder's quota and what it uses").option('--json', 'print JSON').action(async (id, o) => {
  const r = await client().request('GET', `/v1/folders/${encodeURIComponent(id)}`);
  out(o.json, r, () => `folder ${r.id}\n${folderTable(r)}`);
});
folder.command('set-quota <id>').description("Change a folder's quota (admin of every folder)")
  .option('--max-instances <n>', 'sum of maxInstances over its nodes').option('--max-nodes <n>', 'nodes')
  .option('--max-checkpoint-bytes <n>', 'bytes of checkpoints in all').option('--max-upload-bytes <n>', 'bytes of one checkpoint upload or run request')
  .option('--max-checkpoint-runs <n>', 'checkpoint runs at once').option('--json', 'print JSON')
  .action(async (id, o) => {
    const change: Record<string, number> = {};
    for (const k of ['maxInstances', 'maxNodes', 'maxCheckpointBytes', 'maxUploadBytes', 'maxCheckpointRuns']) if (o[k] !== undefined) change[k] = Number(o[k]);
    if (Object.keys(change).length === 0) throw new Error('name at least one quota to change, e.g. --max-instances 8');
    const r = await client().request('PATCH', `/v1/folders/${encodeURIComponent(id)}/quota`, change);
    out(o.json, r, () => `folder ${r.id}\n${folderTable(r)}`);
  });
program.command('audit').description('Control-plane changes, newest first (admins see their folders)')
  .option('--folder <id>', 'only this folder').option('--limit <n>', 'entries', '50').option('--json', 'print JSON')
  .action(async (o) => {
    const q = new URLSearchParams({ limit: o.limit, ...(o.folder ? { folderId: o.folder } : {}) });
    const { entries } = await client().request('GET', `/v1/audit?${q}`);
    out(o.json, entries, () => table(['WHEN', 'TOKEN', 'ACTION', 'FOLDER', 'RESOURCE', 'RESULT'],
      entries.map((e: any) => [ago(e.at), e.tokenName ?? '', e.action, e.folderId ?? '', e.resourceId ?? '', e.result])));
  });

tok.command('admin').description(`Print the admin token (from ${defaultHome()}/admin-token)`).action(() => console.log(findToken()));

program.parseAsync().catch((err: unknown) => {
  if (err instanceof ApiError) {
    console.error(`error: ${err.code}: ${err.message}`);
    const d = { ...err.details };
    if (Array.isArray(d.traceback)) { console.error((d.traceback as string[]).join('')); delete d.traceback; }
    if (Object.keys(d).length) console.error(JSON.stringify(d, null, 2));
  } else {
    console.error(`error: ${(err as Error).message}`);
  }
  process.exit(1);
});
