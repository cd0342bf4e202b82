// `berth up` (the server in this process) and `berth status` (is it up, what does it run).
import { Option, type Command } from 'commander';
import { join, resolve } from 'node:path';
import { autoGatewayWorkers, loadConfig, parseByteSize, type Config } from '../../core/config.js';
import { clientFor, collect, out, type JsonOption } from '../shared.js';
import { ago, table } from '../format.js';
import type { CheckpointList, NodeList } from '../views.js';

interface UpOptions {
  host: string; port: string; home?: string; python?: string; allowPython?: string[]; runtime: Config['runtime']; kernelImage?: string; metricsListen?: string;
  logMaxBytes?: string; logFiles?: string; tlsCert?: string; tlsKey?: string; maxConnections?: string; headersTimeout?: string;
  maxRequestBytes?: string; maxResponseBytes?: string; idleTimeout?: string; sandbox: Config['sandbox']; gatewayWorkers?: string; store?: string; advertiseUrl?: string; secretKeyFile?: string;
  workerTransport: Config['workerTransport'];
}

export function registerServer(cli: Command): void {
  const client = clientFor(cli);

  cli.command('up').description('Run the control API, controller and gateway (in N gateway processes with --gateway-workers)')
    .option('--host <host>', 'address to listen on', process.env.BERTH_HOST ?? '127.0.0.1')
    .option('--port <port>', 'port to listen on (0 picks a free one)', process.env.BERTH_PORT ?? '7700')
    .option('--home <dir>', 'data directory (default: $BERTH_HOME or ~/.berth)')
    .option('--store <url>', 'keep resources in PostgreSQL (postgres://user:pass@host/db), shared by every server using it (default: $BERTH_STORE, or SQLite in the home)')
    .option('--python <path>', 'Python for checkpoints and cell instances (default: $BERTH_PYTHON or /usr/bin/python3)')
    .option('--allow-python <path>', 'another interpreter nodes and checkpoint runs may name (repeat; default: only --python, or $BERTH_ALLOWED_PYTHONS)', collect)
    .addOption(new Option('--runtime <name>', 'where instances run: local processes, Docker containers (needed for image nodes), or Swarm tasks over a Swarm\'s machines (DOCKER_HOST at a manager; image nodes)').choices(['process', 'docker', 'swarm']).default(process.env.BERTH_RUNTIME ?? 'process'))
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
    .option('--gateway-workers <n>', 'gateway processes serving the port; 1: everything in one process (default auto: one per core, at most 16; or $BERTH_GATEWAY_WORKERS)')
    .option('--secret-key-file <file>', 'the key secrets are encrypted with; every server sharing a store needs the same one (default: <home>/secret.key, or $BERTH_SECRET_KEY_FILE)')
    .option('--advertise-url <url>', 'with a shared store: where the other Berth servers reach this one (default: the URL it listens on, or $BERTH_ADVERTISE_URL)')
    .addOption(new Option('--sandbox <mode>', 'run cells and checkpoint runs in bubblewrap, or unsandboxed (none: a machine only you use)').choices(['bubblewrap', 'none']).default(process.env.BERTH_SANDBOX ?? 'bubblewrap'))
    .addOption(new Option('--worker-transport <t>', 'how Berth reaches cell workers: a Unix socket, or TCP (127.0.0.1 / a published container port), each connection authenticated by the instance\'s secret').choices(['unix', 'tcp']).default(process.env.BERTH_WORKER_TRANSPORT ?? 'unix'))
    .action(async (o: UpOptions) => {
      // loaded only here: the other commands never need the server's dependencies
      const { startBerth, checkPython } = await import('../../server.js');
      const { storeProblem } = await import('../../store/index.js');
      const { redactUrl } = await import('../../store/postgres.js');
      if (Boolean(o.tlsCert) !== Boolean(o.tlsKey)) { console.error('berth: --tls-cert and --tls-key go together'); process.exit(2); }
      const positive = (flag: string, v: unknown): number => {
        const n = Number(v);
        if (!Number.isFinite(n) || n <= 0) { console.error(`berth: ${flag} takes a positive number, got ${String(v)}`); process.exit(2); }
        return n;
      };
      const config = loadConfig({
        host: o.host, port: Number(o.port), ...(o.store !== undefined ? { store: o.store || null } : {}), runtime: o.runtime, ...(o.allowPython ? { allowedPythons: o.allowPython } : {}), ...(o.home ? { home: o.home } : {}), ...(o.python ? { python: o.python } : {}),
        ...(o.kernelImage ? { kernelImage: o.kernelImage } : {}), ...(o.metricsListen ? { metricsListen: o.metricsListen } : {}),
        ...(o.logMaxBytes !== undefined ? { logMaxBytes: parseByteSize(o.logMaxBytes) ?? NaN } : {}),
        ...(o.logFiles !== undefined ? { logFiles: Number(o.logFiles) } : {}), sandbox: o.sandbox, workerTransport: o.workerTransport,
        ...(o.tlsCert ? { tls: { certFile: resolve(o.tlsCert), keyFile: resolve(o.tlsKey!) } } : {}),
        ...(o.maxConnections !== undefined ? { maxConnections: Math.floor(positive('--max-connections', o.maxConnections)) } : {}),
        ...(o.headersTimeout !== undefined ? { headersTimeoutMs: positive('--headers-timeout', o.headersTimeout) * 1000 } : {}),
        ...(o.idleTimeout !== undefined ? { idleTimeoutMs: positive('--idle-timeout', o.idleTimeout) * 1000 } : {}),
        ...(o.maxRequestBytes !== undefined ? { maxRequestBytes: positive('--max-request-bytes', parseByteSize(o.maxRequestBytes) ?? NaN) } : {}),
        ...(o.maxResponseBytes !== undefined ? { maxResponseBytes: positive('--max-response-bytes', parseByteSize(o.maxResponseBytes) ?? NaN) } : {}),
        ...(o.gatewayWorkers !== undefined ? { gatewayWorkers: o.gatewayWorkers === 'auto' ? autoGatewayWorkers() : positive('--gateway-workers', o.gatewayWorkers) } : {}),
        ...(o.advertiseUrl !== undefined ? { advertiseUrl: o.advertiseUrl } : {}), ...(o.secretKeyFile !== undefined ? { secretKeyFile: resolve(o.secretKeyFile) } : {}),
      });
      if (!Number.isInteger(config.gatewayWorkers) || config.gatewayWorkers < 1 || config.gatewayWorkers > 256) {
        console.error(`berth: --gateway-workers takes a whole number from 1 to 256, got ${config.gatewayWorkers}`); process.exit(2);
      }
      // gateway workers talk to the primary and to each other over unix sockets in the home
      // (control.sock, gateway-<pid>.sock): past 107 bytes Linux cannot bind the path
      const longest = join(config.home, 'gateway-4194304.sock');
      if (config.gatewayWorkers > 1 && Buffer.byteLength(longest) > 107) {
        const why = `the gateway processes talk over unix sockets in the home, and its path is too long for one (${Buffer.byteLength(longest)} bytes with the socket's name, the limit is 107)`;
        if (o.gatewayWorkers !== undefined || process.env.BERTH_GATEWAY_WORKERS) {
          console.error(`berth: with --gateway-workers ${config.gatewayWorkers} ${why}: use a shorter --home (or BERTH_HOME), or --gateway-workers 1`);
          process.exit(2);
        }
        // the default, not a choice: serve from one process, and say so
        console.error(`berth: serving from one gateway process, not ${config.gatewayWorkers}: ${why}; a shorter --home (or BERTH_HOME) lets every core serve`);
        config.gatewayWorkers = 1;
      }
      for (const [flag, v] of [['--max-request-bytes', config.maxRequestBytes], ['--max-response-bytes', config.maxResponseBytes]] as const) {
        if (!Number.isInteger(v) || v < 1024) { console.error(`berth: ${flag} must be a size of at least 1k, e.g. 16m (got ${v})`); process.exit(2); }
      }
      const storeBad = storeProblem(config.store);
      if (storeBad) { console.error(`berth: ${storeBad}`); process.exit(2); }
      const problem = checkPython(config.python);
      if (problem) { console.error(`berth: ${problem}`); process.exit(2); }
      let berth;
      try {
        berth = await startBerth(config);
      } catch (err) {
        console.error(`berth: ${(err as Error).message}`);
        process.exit(2);
      }
      console.log(`Berth listening on ${berth.url} (home ${config.home}, store ${config.store ? redactUrl(config.store) : 'sqlite'}, runtime ${config.runtime}, python ${config.python}, sandbox ${config.sandbox}${config.workerTransport === 'tcp' ? ', cell workers over TCP' : ''}, gateway workers ${config.gatewayWorkers})`);
      console.log(`admin token: ${config.home}/admin-token`);
      let stopping = false;
      const stop = (signal: string): void => {
        if (stopping) return;
        stopping = true;
        console.log(`${signal}: letting running calls finish, then stopping instances…`);
        berth.close().then(() => { console.log('stopped'); process.exit(0); }, (err: unknown) => { console.error(err); process.exit(1); });
      };
      process.on('SIGTERM', () => stop('SIGTERM'));
      process.on('SIGINT', () => stop('SIGINT'));
    });

  cli.command('servers').description('The Berth servers sharing this store, and which one leads (admin)')
    .option('--json', 'print JSON')
    .action(async (o: JsonOption) => {
      const { servers } = await client().request<{ servers: Array<{ id: string; url: string; leader: boolean; seenAt: string }> }>('GET', '/v1/servers');
      out(o.json, servers, () => table(['SERVER', 'URL', 'ROLE', 'SEEN'], servers.map((x) => [x.id.slice(0, 8), x.url, x.leader ? 'leader' : 'follower', ago(x.seenAt)])));
    });

  cli.command('status').description('Is the server up? Shows where it is and what it runs')
    .option('--wait [seconds]', 'wait until it answers (default 30s)').option('--json', 'print JSON')
    .action(async (o: { wait?: string | true; json?: boolean }) => {
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
      const { nodes } = await c.request<NodeList>('GET', '/v1/nodes');
      const { checkpoints } = await c.request<CheckpointList>('GET', '/v1/checkpoints');
      const data = { url: c.url, nodes: nodes.length, healthyNodes: nodes.filter((n) => n.status === 'Healthy').length, checkpoints: checkpoints.length };
      out(o.json, data, () => `Berth at ${data.url}: ${data.nodes} node(s), ${data.healthyNodes} healthy; ${data.checkpoints} checkpoint(s)`);
    });
}
