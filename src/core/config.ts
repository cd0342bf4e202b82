import { availableParallelism, homedir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** Everything `berth up` can be told, from the environment or flags; embedded defaults otherwise. */
export interface Config {
  home: string;              // BERTH_HOME: database, checkpoint blobs, instance logs, admin token
  /** `--store` / BERTH_STORE: a postgres:// URL (servers sharing one database: src/peers/); null: SQLite in the home. */
  store: string | null;
  host: string;
  port: number;
  python: string;            // default Python for checkpoints and cell instances
  /**
   * The interpreters a node or checkpoint run may name (`environment.python`, `python`):
   * Berth starts them itself, so a tenant may not pick an arbitrary host program.
   * `python` plus `--allow-python` / BERTH_ALLOWED_PYTHONS (colon-separated).
   */
  allowedPythons: string[];
  /** process: local Python processes (embedded default); docker: containers through the Docker Engine API. */
  runtime: 'process' | 'docker' | 'swarm';
  defaultFolder: string;
  defaultProject: string;
  maxRequestBytes: number;
  maxResponseBytes: number;
  /** How long SIGTERM waits for running calls before stopping instances. */
  drainSeconds: number;
  /** Container runtimes: the image cell nodes run in when they name none (Python 3 with dill). */
  kernelImage: string | null;
  /** How often image nodes' own Prometheus endpoints are scraped. */
  telemetryIntervalMs: number;
  /** Controller tick: health checks, scaling and replacement are evaluated this often. */
  reconcileIntervalMs: number;
  /** host:port of a separate listener serving /metrics without a token; null: only the main port, with one. */
  metricsListen: string | null;
  /** Instance logs: rotated past this size (`--log-max-bytes`, BERTH_LOG_MAX_BYTES; also Docker's json-file max-size). */
  logMaxBytes: number;
  /** Instance logs: files kept per instance, the current one included (`--log-files`, BERTH_LOG_FILES). */
  logFiles: number;
  /** Front door: connections open at once; past it, 503 + Retry-After (HTTP/1.1) or GOAWAY (h2). Default: from the fd limit. */
  maxConnections: number;
  /** Front door: from accept to a complete request head (HTTP/1.1) or first stream (h2), TLS handshake included. */
  headersTimeoutMs: number;
  /** Front door: a connection with no call running, or a request body, silent this long is closed. */
  idleTimeoutMs: number;
  /** HTTPS, h2 (ALPN) and gRPC over TLS on the same port: PEM certificate chain and key files; null = cleartext. */
  tls: { certFile: string; keyFile: string } | null;
  /** bubblewrap: cells and checkpoint runs in a sandbox (docs/sandbox.md); none: unsandboxed, for laptops without bwrap. */
  sandbox: 'bubblewrap' | 'none';
  /** Sandboxes run as uids from this range, one each (BERTH_SANDBOX_UIDS=first-last). */
  sandboxUidFirst: number;
  sandboxUidCount: number;
  /** Processes and threads one sandbox may have. */
  pidsLimit: number;
  /** Checkpoint runs: wall-clock limit, memory limit, how many at once and how many may wait. */
  checkpointRunSeconds: number;
  checkpointRunMemoryGb: number;
  maxCheckpointRuns: number;
  checkpointRunQueue: number;
  /**
   * How Berth reaches cell workers (`--worker-transport`, BERTH_WORKER_TRANSPORT): a Unix socket in
   * the instance's run directory, or TCP (process runtime: 127.0.0.1; docker: a published port), the
   * way to instances on other machines. Either way every connection starts with the instance's secret.
   */
  workerTransport: 'unix' | 'tcp';
  /** Gateway processes serving the port (`--gateway-workers N|auto`, BERTH_GATEWAY_WORKERS); default auto (one per core); 1: everything in one process. */
  gatewayWorkers: number;
  /** With a shared store: the URL other Berth servers reach this one's control API at (`--advertise-url`, BERTH_ADVERTISE_URL); default: the URL it listens on. */
  advertiseUrl: string | null;
  /** The key secrets are encrypted with (`--secret-key-file`, BERTH_SECRET_KEY_FILE); servers sharing a store share it. Default: <home>/secret.key. */
  secretKeyFile: string | null;
}

export const MB = 1024 * 1024;

/** The repository root (holds python/), whether running from src/ via tsx or from dist/. */
export const PACKAGE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const PYTHON_DIR = join(PACKAGE_ROOT, 'python');

export function defaultHome(): string {
  return process.env.BERTH_HOME ?? join(homedir(), '.berth');
}

/** Debian's interpreter sees Debian's python3-dill; prefer it when present. */
export function defaultPython(): string {
  if (process.env.BERTH_PYTHON) return process.env.BERTH_PYTHON;
  return existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
}

/**
 * Connections the front door keeps open by default: half the open-file limit (`ulimit -n`,
 * which Node raises to the hard limit at start) less room for the database, logs, worker
 * sockets and upstream connections; between 64 and 10,000.
 */
export function defaultMaxConnections(): number {
  let limit = 1024;
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    if (m) limit = Number(m[1]);
  } catch { /* not Linux: assume the common 1024 */ }
  return Math.max(64, Math.min(10_000, Math.floor((limit - 256) / 2)));
}

/** Parses `10485760`, `512k`, `10m`, `1g` (binary units). */
export function parseByteSize(text: string): number | null {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmg]?)i?b?\s*$/i.exec(text);
  if (!m) return null;
  const unit = { '': 1, k: 1024, m: MB, g: 1024 * MB }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Math.floor(Number(m[1]) * unit);
}

/** A size from the environment; unset gives undefined, a wrong one NaN (refused at start). */
function sizeFromEnv(v: string | undefined): number | undefined {
  return v === undefined ? undefined : parseByteSize(v) ?? NaN;
}

function envNumber(name: string): number | undefined {
  const v = process.env[name];
  return v === undefined || v === '' ? undefined : Number(v);
}

export function loadConfig(overrides: Partial<Config> = {}): Config {
  const env = process.env;
  return {
    home: resolve(overrides.home ?? defaultHome()),
    store: overrides.store !== undefined ? overrides.store : env.BERTH_STORE || null,
    host: overrides.host ?? env.BERTH_HOST ?? '127.0.0.1',
    port: overrides.port ?? (env.BERTH_PORT ? Number(env.BERTH_PORT) : 7700),
    python: overrides.python ?? defaultPython(),
    allowedPythons: [...new Set([overrides.python ?? defaultPython(), ...(overrides.allowedPythons ?? []), ...(env.BERTH_ALLOWED_PYTHONS ?? '').split(':').filter(Boolean)])],
    runtime: overrides.runtime ?? (env.BERTH_RUNTIME === 'docker' || env.BERTH_RUNTIME === 'swarm' ? env.BERTH_RUNTIME : 'process'),
    kernelImage: overrides.kernelImage ?? env.BERTH_KERNEL_IMAGE ?? null,
    telemetryIntervalMs: overrides.telemetryIntervalMs ?? (env.BERTH_TELEMETRY_INTERVAL_MS ? Number(env.BERTH_TELEMETRY_INTERVAL_MS) : 5000),
    defaultFolder: overrides.defaultFolder ?? env.BERTH_FOLDER ?? 'default',
    defaultProject: overrides.defaultProject ?? 'default',
    maxRequestBytes: overrides.maxRequestBytes ?? sizeFromEnv(env.BERTH_MAX_REQUEST_BYTES) ?? 16 * MB,
    maxResponseBytes: overrides.maxResponseBytes ?? sizeFromEnv(env.BERTH_MAX_RESPONSE_BYTES) ?? 16 * MB,
    drainSeconds: overrides.drainSeconds ?? 30,
    reconcileIntervalMs: overrides.reconcileIntervalMs ?? 500,
    metricsListen: overrides.metricsListen ?? env.BERTH_METRICS_LISTEN ?? null,
    logMaxBytes: overrides.logMaxBytes ?? (env.BERTH_LOG_MAX_BYTES ? parseByteSize(env.BERTH_LOG_MAX_BYTES) ?? NaN : 10 * MB),
    logFiles: overrides.logFiles ?? (env.BERTH_LOG_FILES ? Number(env.BERTH_LOG_FILES) : 2),
    maxConnections: overrides.maxConnections ?? envNumber('BERTH_MAX_CONNECTIONS') ?? defaultMaxConnections(),
    headersTimeoutMs: overrides.headersTimeoutMs ?? (envNumber('BERTH_HEADERS_TIMEOUT') ?? 20) * 1000,
    idleTimeoutMs: overrides.idleTimeoutMs ?? (envNumber('BERTH_IDLE_TIMEOUT') ?? 300) * 1000,
    tls: overrides.tls !== undefined ? overrides.tls
      : env.BERTH_TLS_CERT && env.BERTH_TLS_KEY ? { certFile: env.BERTH_TLS_CERT, keyFile: env.BERTH_TLS_KEY } : null,
    sandbox: overrides.sandbox ?? (env.BERTH_SANDBOX === 'none' ? 'none' : 'bubblewrap'),
    ...sandboxUids(env.BERTH_SANDBOX_UIDS, overrides),
    pidsLimit: overrides.pidsLimit ?? numberEnv('BERTH_PIDS_LIMIT', 1024),
    checkpointRunSeconds: overrides.checkpointRunSeconds ?? numberEnv('BERTH_CHECKPOINT_RUN_SECONDS', 600),
    checkpointRunMemoryGb: overrides.checkpointRunMemoryGb ?? numberEnv('BERTH_CHECKPOINT_RUN_MEMORY_GB', 4),
    maxCheckpointRuns: overrides.maxCheckpointRuns ?? numberEnv('BERTH_MAX_CHECKPOINT_RUNS', 2),
    checkpointRunQueue: overrides.checkpointRunQueue ?? numberEnv('BERTH_CHECKPOINT_RUN_QUEUE', 4),
    // one per core unless told (docs/architecture.md, "How many gateway workers")
    gatewayWorkers: overrides.gatewayWorkers ?? (process.env.BERTH_GATEWAY_WORKERS === 'auto' ? autoGatewayWorkers() : numberEnv('BERTH_GATEWAY_WORKERS', autoGatewayWorkers())),
    advertiseUrl: overrides.advertiseUrl !== undefined ? overrides.advertiseUrl : env.BERTH_ADVERTISE_URL || null,
    secretKeyFile: overrides.secretKeyFile !== undefined ? overrides.secretKeyFile : env.BERTH_SECRET_KEY_FILE || null,
    workerTransport: overrides.workerTransport ?? (env.BERTH_WORKER_TRANSPORT === 'tcp' ? 'tcp' : 'unix'),
  };
}

/** `--gateway-workers auto` stops here: past it a worker mostly adds leases to share and snapshots to send (name more with a number). */
export const MAX_AUTO_GATEWAY_WORKERS = 16;

/** `--gateway-workers auto`, the default: one gateway process per core, at most MAX_AUTO_GATEWAY_WORKERS. */
export function autoGatewayWorkers(): number {
  return Math.max(1, Math.min(availableParallelism(), MAX_AUTO_GATEWAY_WORKERS));
}

function numberEnv(name: string, dflt: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name}=${v}: expected a non-negative number`);
  return n;
}

/** BERTH_SANDBOX_UIDS=200000-203999 (default): the uids sandboxes run as. */
function sandboxUids(spec: string | undefined, o: Partial<Config>): { sandboxUidFirst: number; sandboxUidCount: number } {
  let first = 200_000;
  let count = 4000;
  if (spec) {
    const m = /^(\d+)-(\d+)$/.exec(spec);
    if (!m || Number(m[2]) < Number(m[1])) throw new Error(`BERTH_SANDBOX_UIDS=${spec}: expected first-last, e.g. 200000-203999`);
    first = Number(m[1]);
    count = Number(m[2]) - first + 1;
  }
  return { sandboxUidFirst: o.sandboxUidFirst ?? first, sandboxUidCount: o.sandboxUidCount ?? count };
}
