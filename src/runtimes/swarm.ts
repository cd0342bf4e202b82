// The Docker Swarm runtime (`berth up --runtime swarm`, DOCKER_HOST at a Swarm manager):
// instances run as Swarm tasks spread over the Swarm's machines (issue 13).
//
// - One Swarm service per Berth instance (`berth-<instanceId>`, replicas 1), labelled like
//   the Docker runtime's containers (node, instance, revision, home, kind, ports). Berth keeps
//   instance identity; Swarm keeps the task running: when a machine dies (or the container
//   exits) Swarm re-creates the task, on another machine if need be (restart condition any).
// - Endpoints: each port of the workload is published in host mode on a port Swarm picks;
//   the endpoint is the task's machine address (its Swarm node's Status.Addr) plus the
//   published port from the task's Status.PortStatus. Gateways on any machine reach it.
// - `exited` resolves when the task the handle stands for stops running: it failed or
//   completed, Swarm moved it (its desired state is no longer running), or its machine went
//   Down. The controller then restarts the instance in place (same id) by calling start()
//   again, which finds the service and waits for the task Swarm has already re-created:
//   the new handle carries the new endpoint. No controller change was needed for this.
// - Resources: reservations and limits (NanoCPUs, MemoryBytes) capped at the largest
//   machine of the Swarm, so a preset bigger than any machine still schedules (and says so).
// - Placement from the node spec: constraints as given, `spread: zone` as a spread
//   preference over `node.labels.zone`.
// - Registry credentials go with service creation (X-Registry-Auth): the manager hands them
//   to whichever machine pulls the image.
// - Cell instances: a service of the node's kernel image (python3 + dill) running Berth's
//   worker on TCP (port 7070 in the container, published in host mode like image ports; the
//   endpoint carries the instance secret, which every connection must present first). Nothing
//   of Berth's machine can be bind-mounted on another machine, so Swarm carries it: the worker
//   code (python/berth_worker.py and its two imports) as Swarm configs, the worker's config JSON
//   (with the secret) as a Swarm secret — never in env or labels. The worker FETCHES its
//   checkpoint from this Berth (GET /internal/v1/instances/{id}/checkpoint, the instance secret
//   as its token; sha256-verified by the worker), at a URL the machines reach (remoteBase()).
//   The secret is HMAC(server key, owner, instance, nonce): Swarm never gives a secret back,
//   and any server holding the key (servers sharing a store share it) recomputes it when it
//   adopts the service (docs/security.md). The configs and secret go with the service.
// - Logs come from Swarm's service logs (json-file, bounded like the Docker runtime's); when a
//   task ends, its tail is kept in <home>/logs/<nodeId>/<instanceId>.log as the Docker runtime does.
import Docker from 'dockerode';
import { createHmac, randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { existsSync } from 'node:fs';
import { appendFile, mkdir, readFile, rm } from 'node:fs/promises';
import { isIPv6 } from 'node:net';
import { join, resolve } from 'node:path';
import { PYTHON_DIR, loadConfig } from '../core/config.js';
import { loadSecretKey } from '../secrets/secrets.js';
import type { Endpoint } from '../worker/protocol.js';
import { CheckpointGrants } from './checkpoint-grants.js';
import type { CellWorkload, ExitInfo, InstanceSpec, LogQuery, Placement, RegistryAuth, Runtime, RuntimeInstance } from './runtime.js';
import { DEFAULT_LOG_LIMITS, MAX_TAIL_LINES, tailLines, type LogLimits } from './log-file.js';
import { registryServerAddress } from './docker.js';
import { demux, errorText, followLog, keepLog, sleep, statusOf, withLive, withTimeout, GB, PING_TIMEOUT_MS, memoryLimitBytes } from './engine-api.js';

const LABEL = {
  node: 'berth.node-id',
  instance: 'berth.instance-id',
  home: 'berth.home',
  kind: 'berth.kind',
  ports: 'berth.ports',
  revision: 'berth.revision',
  /** `<label>==<value>`: the spread label's value this instance was pinned to (see `spreadConstraint`). */
  spreadValue: 'berth.spread',
  /** Cells: the random part of the instance secret's derivation (not a secret without the server key). */
  nonce: 'berth.nonce',
  /** Cells: the Berth base URL the worker fetches its checkpoint from. */
  checkpointFrom: 'berth.checkpoint-from',
  /** Cells: the checkpoint blob (sha256, and its file on the Berth that made the service), to grant it again after adoption. */
  checkpointSha256: 'berth.checkpoint-sha256',
  checkpointPath: 'berth.checkpoint-path',
  /** Cells: a fingerprint of the key the secret was derived from (another key: the secret cannot be recomputed). */
  keyCheck: 'berth.key-check',
} as const;
/** The port a cell worker listens on inside its task's container (published in host mode). */
const WORKER_PORT = 7070;
/** Cell kernels run as nobody: never root in the container. */
const KERNEL_USER = '65534';
/** Berth's worker code, carried to every machine as Swarm configs (the worker imports the other two). */
const WORKER_FILES = ['berth_worker.py', 'berth_state.py', 'berth_types.py'] as const;
const WORKER_CODE_DIR = '/berth/python';
/** The worker's configuration, with the instance secret: a Swarm secret, under /run/secrets/. */
const WORKER_CONFIG_FILE = 'berth-worker.json';
const WORKER_BOOTSTRAP = `import sys; sys.stdin = open('/run/secrets/${WORKER_CONFIG_FILE}'); sys.path.insert(0, '${WORKER_CODE_DIR}'); import berth_worker; berth_worker.main()`;
/** Worker configs/secrets older than this with no service are a crashed Berth's leftovers (younger ones may be a start under way). */
const ORPHAN_FILES_MS = 60_000;
/** How often task states are read from the manager (one call for every tracked instance). */
const POLL_MS = 500;
/** How long start() waits for a running task with its ports published. */
const START_TIMEOUT_MS = 90_000;
/** How long a removal waits for the service's tasks to settle first (see quiesce()). */
const QUIESCE_MS = 10_000;
/** How long start() waits while no machine can take the task (constraints, resources) before saying so. */
const UNSCHEDULABLE_MS = 20_000;
/** Rejected tasks in a row (image missing everywhere, a bad spec) before start() gives up. */
const MAX_REJECTED = 3;
/** Swarm's grace between SIGTERM and SIGKILL when a service is removed. */
const STOP_GRACE_NS = 2e9;
const STOP_SLACK_MS = 15_000;
const ARCHIVE_LINES = 5000;
/** Task states after which a task never runs again. */
const FINAL_STATES = new Set(['complete', 'failed', 'shutdown', 'rejected', 'orphaned', 'remove']);

/** What Berth reads of a Swarm task (the Engine API's Task, trimmed). */
interface TaskInfo {
  ID: string;
  ServiceID: string;
  NodeID?: string;
  DesiredState: string;
  CreatedAt?: string;
  Status: {
    State: string;
    Err?: string;
    Message?: string;
    ContainerStatus?: { ExitCode?: number; PID?: number };
    PortStatus?: { Ports?: Array<{ TargetPort?: number; PublishedPort?: number; PublishMode?: string }> };
  };
}

interface NodeInfo {
  ID: string;
  Status: { State: string; Addr?: string };
  Spec?: { Labels?: Record<string, string>; Availability?: string; Role?: string };
  Description?: { Hostname?: string; Resources?: { NanoCPUs?: number; MemoryBytes?: number }; Engine?: { Labels?: Record<string, string> } };
}

interface ServiceInfo { ID: string; Spec: { Name: string; Labels?: Record<string, string> } }

class SwarmInstance implements RuntimeInstance {
  constructor(
    readonly nodeId: string,
    readonly instanceId: string,
    readonly endpoint: Endpoint,
    readonly ports: ReadonlyMap<number, Endpoint>,
    readonly pid: number | null,
    readonly exited: Promise<ExitInfo>,
    readonly serviceId: string,
    readonly taskId: string,
    readonly revision: number | undefined,
    /** The Swarm node (machine) the task runs on. */
    readonly machine: string,
  ) {}
}

interface Tracked {
  instance: SwarmInstance;
  resolve: (info: ExitInfo) => void;
  done: boolean;
  /** stop()/kill() kept the task's log before removing the service: the end adds only how it ended. */
  archived: boolean;
  /** kill()'s removal of the service: `exited` waits for it, so a restart never finds the service half removed. */
  removal?: Promise<void>;
}

export interface SwarmRuntimeOptions {
  docker?: Docker;
  logLimits?: LogLimits;
  /** Whose services these are (the berth.home label): the home by default; servers sharing a store share one owner (as in docker.ts). */
  owner?: string;
  /** The server key cell instances' secrets are derived from (--secret-key-file); default <home>/secret.key. */
  secretKeyFile?: string | null;
}

export class SwarmRuntime implements Runtime {
  readonly name = 'swarm';
  readonly supportsImages = true;
  /** Cell workers listen on TCP with a per-instance secret, and fetch their checkpoint from Berth. */
  readonly supportsCells = true;
  readonly supportsPlacement = true;
  /** Cell workers fetch their checkpoint from Berth (server.ts serves these grants and says where it listens). */
  readonly checkpointGrants = new CheckpointGrants();
  private readonly secretKeyFile: string | null;
  private instanceKeyCache: Buffer | null = null;
  private readonly home: string;
  private readonly owner: string;
  private readonly logDir: string;
  private readonly docker: Docker;
  private readonly logLimits: LogLimits;
  /** By task id: the handles whose `exited` the poller resolves. */
  private readonly tracked = new Map<string, Tracked>();
  private poller: NodeJS.Timeout | null = null;
  private polling = false;
  private pollErrorAt = 0;
  private readonly placing = new Map<string, Promise<void>>();
  /** The largest machine's CPU (nano) and memory (bytes), from the last read of the nodes. */
  private capacity: { nanoCpus: number; memoryBytes: number } | null = null;

  constructor(home: string, options: SwarmRuntimeOptions = {}) {
    this.home = resolve(home);
    this.owner = options.owner ?? this.home;
    this.logDir = join(this.home, 'logs');
    this.docker = options.docker ?? new Docker();
    this.logLimits = options.logLimits ?? DEFAULT_LOG_LIMITS;
    this.secretKeyFile = options.secretKeyFile ?? null;
  }

  get daemonAddress(): string {
    const m = this.docker.modem as { socketPath?: string; host?: string; port?: number | string; protocol?: string };
    if (typeof m.socketPath === 'string' && m.socketPath) return `unix://${m.socketPath}`;
    if (m.host) return `${m.protocol ?? 'http'}://${m.host}${m.port ? `:${m.port}` : ''}`;
    return process.env.DOCKER_HOST || 'unix:///var/run/docker.sock';
  }

  async check(): Promise<string | null> {
    let info: { Swarm?: { LocalNodeState?: string; ControlAvailable?: boolean } };
    try {
      await withTimeout(this.docker.ping(), PING_TIMEOUT_MS, 'no answer within 5s');
      info = await this.docker.info() as typeof info;
    } catch (err) {
      return `Docker daemon not reachable at ${this.daemonAddress} (${errorText(err)}): point DOCKER_HOST at a Swarm manager`;
    }
    if (info.Swarm?.LocalNodeState !== 'active') return `the Docker daemon at ${this.daemonAddress} is not part of a Swarm (docker swarm init, or point DOCKER_HOST at a manager)`;
    if (!info.Swarm.ControlAvailable) return `the Docker daemon at ${this.daemonAddress} is a Swarm worker, not a manager: point DOCKER_HOST at a manager`;
    await this.readCapacity().catch(() => undefined);
    return null;
  }

  unenforced(r: InstanceSpec['resources']): string[] {
    const out: string[] = [];
    const cap = this.capacity;
    if (cap) {
      const cores = cap.nanoCpus / 1e9;
      if (r.cores > cores) out.push(`CPU capped at ${cores} cores: the largest Swarm machine has ${cores} (requested ${r.cores})`);
      const gb = cap.memoryBytes / GB;
      if (r.memoryGb > gb) out.push(`memory capped at ${gb.toFixed(1)} GB: the largest Swarm machine has ${gb.toFixed(1)} GB (requested ${r.memoryGb})`);
    }
    if (r.gpus > 0) out.push(`GPUs cannot be given to Swarm tasks here (requested ${r.gpus}): the Swarm runtime does not reserve generic resources`);
    return out;
  }

  async start(spec: InstanceSpec): Promise<RuntimeInstance> {
    const w = spec.workload;
    const logFile = this.logPath(spec.nodeId, spec.instanceId);
    await mkdir(join(this.logDir, spec.nodeId), { recursive: true });
    let granted: string | null = null;
    try {
      const service = await this.ensureService(spec, logFile);
      if (w.kind === 'image') return await this.waitRunning(service, spec.nodeId, spec.instanceId, spec.revision, w.ports);
      // the grant lasts as long as the service: Swarm may restart the task (which fetches again) on its own
      const secret = this.secretOf(spec.instanceId, service.Spec.Labels?.[LABEL.nonce] ?? '');
      this.checkpointGrants.grant(spec.instanceId, secret, { path: w.checkpointPath, sha256: w.checkpointSha256! });
      granted = secret;
      return await this.waitRunning(service, spec.nodeId, spec.instanceId, spec.revision, [WORKER_PORT], secret);
    } catch (err) {
      if (granted) this.checkpointGrants.revoke(spec.instanceId, granted);
      await appendFile(logFile, `[berth] ${new Date().toISOString()} start failed: ${errorText(err)}\n`).catch(() => {});
      throw err;
    }
  }

  /** The instance secret of a cell service: recomputable from the server key and the service's nonce label. */
  private secretOf(instanceId: string, nonce: string): string {
    return createHmac('sha256', this.instanceKey()).update(`${this.owner}\n${instanceId}\n${nonce}`).digest('hex');
  }

  private instanceKey(): Buffer {
    this.instanceKeyCache ??= createHmac('sha256', loadSecretKey(this.home, this.secretKeyFile)).update('berth swarm instance secrets').digest();
    return this.instanceKeyCache;
  }

  /** Whether a cell service's secret can be recomputed here: made with the same server key. */
  private sameKey(labels: Record<string, string>): boolean {
    return !!labels[LABEL.nonce] && labels[LABEL.keyCheck] === this.keyCheck();
  }

  private keyCheck(): string {
    return createHmac('sha256', this.instanceKey()).update('key check').digest('hex').slice(0, 16);
  }

  /**
   * The base URL the machines of the Swarm fetch checkpoints from: --advertise-url when given;
   * with --host 0.0.0.0 (or ::), this machine's address on the route to the Swarm's manager;
   * else the address Berth listens on. Loopback reaches no other machine: refused, saying why.
   */
  private async remoteBase(): Promise<string> {
    const served = this.checkpointGrants.served;
    const how = '--host 0.0.0.0 (or an address the Swarm\'s machines reach) or --advertise-url http://ADDRESS:PORT';
    if (!served) throw new Error(`cell nodes on the Swarm runtime fetch their checkpoint from Berth over plain HTTP, which this Berth does not serve (with --tls-cert it cannot: the worker could not check the certificate); run cell nodes on a Berth without TLS, listening with ${how}`);
    const listen = served.listen;
    if (listen?.advertiseUrl) {
      let u: URL;
      try { u = new URL(listen.advertiseUrl); } catch { throw new Error(`--advertise-url ${listen.advertiseUrl} is not a URL`); }
      if (u.protocol !== 'http:') throw new Error(`cell workers on the Swarm runtime fetch their checkpoint over plain HTTP: --advertise-url ${listen.advertiseUrl} is not http://`);
      if (isLoopback(u.hostname)) throw new Error(`cell nodes on the Swarm runtime fetch their checkpoint from Berth, but --advertise-url ${listen.advertiseUrl} is a loopback address no other machine reaches: give ${how}`);
      return u.origin;
    }
    if (listen && (listen.host === '0.0.0.0' || listen.host === '::' || listen.host === '')) {
      const addr = await this.addressTowardsSwarm();
      if (!addr || isLoopback(addr)) throw new Error(`cell nodes on the Swarm runtime fetch their checkpoint from Berth: Berth listens on ${listen.host}, but no address of this machine faces the Swarm's machines${addr ? ` (only ${addr})` : ''}; give --advertise-url http://ADDRESS:PORT`);
      return `http://${isIPv6(addr) ? `[${addr}]` : addr}:${listen.port}`;
    }
    const host = new URL(served.base).hostname.replace(/^\[|\]$/g, '');
    if (isLoopback(host)) throw new Error(`cell nodes on the Swarm runtime fetch their checkpoint from Berth over the network, but Berth listens on ${listen?.host ?? host} only (loopback): start it with ${how}`);
    return served.base;
  }

  /** This machine's source address on the route to a ready manager (a UDP connect sends nothing). */
  private async addressTowardsSwarm(): Promise<string | null> {
    const nodes = [...(await this.nodes()).values()].filter((n) => n.Status.State === 'ready' && n.Status.Addr && n.Status.Addr !== '0.0.0.0');
    nodes.sort((a, b) => Number(b.Spec?.Role === 'manager') - Number(a.Spec?.Role === 'manager'));
    const target = nodes[0]?.Status.Addr;
    if (!target) return null;
    return await new Promise<string | null>((res) => {
      const sock = createSocket(isIPv6(target) ? 'udp6' : 'udp4');
      sock.once('error', () => { sock.close(); res(null); });
      sock.connect(9, target, () => {
        let a: string | null = null;
        try { a = sock.address().address; } catch { /* not connected */ }
        sock.close();
        res(a);
      });
    });
  }

  /** The instance's service: the existing one when it is this home's and of this revision (Swarm re-creates its task), else a new one. */
  private async ensureService(spec: InstanceSpec, logFile: string): Promise<ServiceInfo> {
    // one placement decision at a time per node: concurrent starts would all pick the same zone
    const before = this.placing.get(spec.nodeId) ?? Promise.resolve();
    const mine = before.then(() => this.placeService(spec, logFile));
    const settled = mine.then(() => undefined, () => undefined);
    this.placing.set(spec.nodeId, settled);
    void settled.then(() => { if (this.placing.get(spec.nodeId) === settled) this.placing.delete(spec.nodeId); });
    return mine;
  }

  private async placeService(spec: InstanceSpec, logFile: string): Promise<ServiceInfo> {
    const name = serviceName(spec.instanceId);
    const w = spec.workload;
    // cells: where the worker fetches its checkpoint, decided (or refused) before anything is made
    const base = w.kind === 'cell' ? await this.cellPreflight(spec, w) : null;
    const existing = await this.inspectService(name);
    if (existing) {
      const labels = existing.Spec.Labels ?? {};
      if (labels[LABEL.home] !== this.owner) throw new Error(`a Swarm service named ${name} already exists and does not belong to this Berth (home ${labels[LABEL.home] ?? 'unlabelled'})`);
      // a cell's worker fetches from the URL it was given: another Berth's (a leader since gone) means a new service
      const sameSource = w.kind === 'image' || (labels[LABEL.checkpointFrom] === base && this.sameKey(labels));
      if (labels[LABEL.revision] === String(spec.revision) && labels[LABEL.kind] === w.kind && sameSource && await this.canStillRun(existing)) {
        await appendFile(logFile, `[berth] ${new Date().toISOString()} instance ${spec.instanceId}: waiting for Swarm's task of service ${name}\n`);
        return existing;
      }
      await this.removeService(existing.ID, 0);
    }
    const image = w.kind === 'image' ? w.image : w.kernelImage!;
    await appendFile(logFile, `[berth] ${new Date().toISOString()} starting instance ${spec.instanceId} as Swarm service ${name} from ${image}\n`);
    const ports = w.kind === 'image' ? [...new Set(w.ports)] : [WORKER_PORT];
    const labels: Record<string, string> = {
      [LABEL.node]: spec.nodeId, [LABEL.instance]: spec.instanceId, [LABEL.home]: this.owner,
      [LABEL.kind]: w.kind, [LABEL.revision]: String(spec.revision), [LABEL.ports]: ports.join(','),
    };
    const cell = w.kind === 'cell' ? await this.createWorkerFiles(spec, w, base!) : null;
    if (cell) Object.assign(labels, cell.labels);
    const { limits, reservations } = await this.resources(spec.resources);
    const placement = placementOf(spec.placement);
    const spread = await this.spreadConstraint(spec.nodeId, spec.placement);
    if (spread) {
      placement.Constraints = [...(placement.Constraints ?? []), spread.constraint];
      labels[LABEL.spreadValue] = `${spread.key}==${spread.value}`;
    }
    const createSpec = {
      Name: name,
      Labels: labels,
      TaskTemplate: {
        ContainerSpec: {
          Image: image,
          Labels: labels,
          Init: true,
          StopGracePeriod: STOP_GRACE_NS,
          // the sandbox's guarantees that Swarm can carry (no-new-privileges it cannot, in Engine 20.10)
          CapabilityDrop: ['ALL'],
          ...(w.kind === 'image' ? {
            Env: Object.entries(w.env).map(([k, v]) => `${k}=${v}`),
            ...(w.capabilities?.length ? { CapabilityAdd: [...w.capabilities] } : {}),
          } : {
            // as on the Docker runtime: not root, nothing of the image writable, a private /tmp
            Command: ['python3'], Args: ['-u', '-c', WORKER_BOOTSTRAP],
            Env: ['PYTHONUNBUFFERED=1', 'PYTHONDONTWRITEBYTECODE=1', 'HOME=/tmp'],
            User: `${KERNEL_USER}:${KERNEL_USER}`,
            ReadOnly: true,
            Mounts: [{ Type: 'tmpfs', Target: '/tmp', TmpfsOptions: { Mode: 0o1777 } }],
            Secrets: cell!.secrets, Configs: cell!.configs,
          }),
        },
        Resources: { Limits: { ...limits, Pids: loadConfig({ home: this.home }).pidsLimit }, Reservations: reservations },
        RestartPolicy: { Condition: 'any', Delay: 1e9, MaxAttempts: 0 },
        Placement: placement,
        LogDriver: { Name: 'json-file', Options: { 'max-size': String(this.logLimits.maxBytes), 'max-file': String(this.logLimits.files) } },
      },
      Mode: { Replicated: { Replicas: 1 } },
      EndpointSpec: { Ports: ports.map((p) => ({ Protocol: 'tcp', TargetPort: p, PublishMode: 'host' })) },
    };
    try {
      const auth = authOf(image, w.registryAuth);
      const service = auth
        ? await this.docker.createService(auth, createSpec as unknown as Docker.ServiceSpec)
        : await this.docker.createService(createSpec as unknown as Docker.CreateServiceOptions);
      return { ID: service.id, Spec: { Name: name, Labels: labels } };
    } catch (err) {
      if (cell) {
        this.checkpointGrants.revoke(spec.instanceId, this.secretOf(spec.instanceId, cell.labels[LABEL.nonce]!));
        await this.removeWorkerFiles(spec.instanceId, cell.labels[LABEL.nonce]!);
      }
      throw new Error(`create Swarm service ${name} from ${image}: ${errorText(err)}`);
    }
  }

  /** What a cell instance needs before its service is made; returns the checkpoint base URL. */
  private async cellPreflight(spec: InstanceSpec, w: CellWorkload): Promise<string> {
    if (!w.kernelImage) throw new Error('cell nodes on the Swarm runtime need a kernel image (an image with python3 and dill: --kernel-image or the node\'s environment.image)');
    if (spec.network === 'none') throw new Error('network: none cannot be honoured on the Swarm runtime for cell nodes: their worker is reached over the network from other machines');
    if (!w.checkpointSha256) throw new Error('cell nodes on the Swarm runtime fetch their checkpoint, and this one has no recorded sha256 to verify it with');
    return await this.remoteBase();
  }

  /**
   * The worker's files on whichever machine runs the task: its code as Swarm configs (mounted
   * read-only under /berth/python) and its configuration, secret included, as a Swarm secret
   * (/run/secrets/berth-worker.json, readable by the kernel's user only). Named and labelled per
   * service (instance + nonce), so they go with it and a crashed Berth's leftovers are found.
   */
  private async createWorkerFiles(spec: InstanceSpec, w: CellWorkload, base: string): Promise<{ labels: Record<string, string>; secrets: unknown[]; configs: unknown[] }> {
    const nonce = randomBytes(6).toString('hex');
    const secret = this.secretOf(spec.instanceId, nonce);
    const fileLabels = { [LABEL.home]: this.owner, [LABEL.node]: spec.nodeId, [LABEL.instance]: spec.instanceId, [LABEL.nonce]: nonce };
    const config = {
      listen: { tcp: { host: '0.0.0.0', port: WORKER_PORT } }, secret,
      checkpoint: { url: `${base}/internal/v1/instances/${encodeURIComponent(spec.instanceId)}/checkpoint`, sha256: w.checkpointSha256!, token: secret },
      code: w.code, requires: w.requires, inputs: w.inputs, outputs: w.outputs, maxResponseBytes: w.maxResponseBytes,
    };
    const prefix = `berth-${spec.instanceId}-${nonce}`;
    // granted before the task can exist (start() grants again; removeService revokes)
    this.checkpointGrants.grant(spec.instanceId, secret, { path: w.checkpointPath, sha256: w.checkpointSha256! });
    try {
      const s = await this.docker.createSecret({ Name: `${prefix}-worker`, Labels: fileLabels, Data: Buffer.from(JSON.stringify(config)).toString('base64') }) as { id: string };
      const secrets = [{ SecretID: s.id, SecretName: `${prefix}-worker`, File: { Name: WORKER_CONFIG_FILE, UID: KERNEL_USER, GID: KERNEL_USER, Mode: 0o400 } }];
      const configs: unknown[] = [];
      for (const f of WORKER_FILES) {
        const name = `${prefix}-${f.replace(/[^A-Za-z0-9]/g, '-')}`;
        const data = await readFile(join(PYTHON_DIR, f));
        const c = await this.docker.createConfig({ Name: name, Labels: fileLabels, Data: data.toString('base64') }) as { id: string };
        configs.push({ ConfigID: c.id, ConfigName: name, File: { Name: `${WORKER_CODE_DIR}/${f}`, UID: '0', GID: '0', Mode: 0o444 } });
      }
      return {
        labels: { [LABEL.nonce]: nonce, [LABEL.keyCheck]: this.keyCheck(), [LABEL.checkpointFrom]: base, [LABEL.checkpointSha256]: w.checkpointSha256!, [LABEL.checkpointPath]: resolve(w.checkpointPath) },
        secrets, configs,
      };
    } catch (err) {
      this.checkpointGrants.revoke(spec.instanceId, secret);
      await this.removeWorkerFiles(spec.instanceId, nonce);
      throw new Error(`create the worker's Swarm config and secret for instance ${spec.instanceId}: ${errorText(err)}`);
    }
  }

  /** Removes a cell service's configs and secret (of this owner, instance and nonce). */
  private async removeWorkerFiles(instanceId: string, nonce: string): Promise<void> {
    const filters = { label: [`${LABEL.home}=${this.owner}`, `${LABEL.instance}=${instanceId}`, `${LABEL.nonce}=${nonce}`] };
    const [secrets, configs] = await Promise.all([
      this.docker.listSecrets({ filters }).catch(() => []) as Promise<Array<{ ID: string }>>,
      this.docker.listConfigs({ filters }).catch(() => []) as Promise<Array<{ ID: string }>>,
    ]);
    for (const s of secrets) await this.docker.getSecret(s.ID).remove().catch(() => undefined);
    for (const c of configs) await this.docker.getConfig(c.ID).remove().catch(() => undefined);
  }

  /**
   * Worker configs and secrets of this owner whose service is gone (a Berth that died between
   * making them and removing them), older than a minute: younger ones may be a start under way.
   */
  private async pruneWorkerFiles(nodeId?: string): Promise<void> {
    const filters = { label: [`${LABEL.home}=${this.owner}`, ...(nodeId ? [`${LABEL.node}=${nodeId}`] : [])] };
    try {
      const [secrets, configs, services] = await Promise.all([
        this.docker.listSecrets({ filters }) as Promise<Array<{ ID: string; CreatedAt?: string; Spec?: { Labels?: Record<string, string> } }>>,
        this.docker.listConfigs({ filters }) as unknown as Promise<Array<{ ID: string; CreatedAt?: string; Spec?: { Labels?: Record<string, string> } }>>,
        this.docker.listServices({ filters: { label: [`${LABEL.home}=${this.owner}`] } }) as unknown as Promise<ServiceInfo[]>,
      ]);
      const live = new Set(services.map((s) => s.Spec.Labels?.[LABEL.nonce]).filter(Boolean));
      const orphan = (x: { CreatedAt?: string; Spec?: { Labels?: Record<string, string> } }): boolean => {
        const nonce = x.Spec?.Labels?.[LABEL.nonce];
        return !!nonce && !live.has(nonce) && Date.now() - Date.parse(x.CreatedAt ?? '') > ORPHAN_FILES_MS;
      };
      for (const s of secrets.filter(orphan)) await this.docker.getSecret(s.ID).remove().catch(() => undefined);
      for (const c of configs.filter(orphan)) await this.docker.getConfig(c.ID).remove().catch(() => undefined);
    } catch { /* the manager unreachable: the next cleanup tries again */ }
  }

  /** Waits for the service's running task with every port published; gives up on repeated rejections or after START_TIMEOUT_MS. */
  private async waitRunning(service: ServiceInfo, nodeId: string, instanceId: string, revision: number, wanted: number[], secret?: string): Promise<SwarmInstance> {
    const deadline = Date.now() + START_TIMEOUT_MS;
    let last = '';
    let unschedulableSince = 0;
    for (;;) {
      const tasks = await this.tasksOf(service.ID);
      const rejected = tasks.filter((t) => t.Status.State === 'rejected' || (t.Status.State === 'failed' && !t.Status.ContainerStatus?.PID));
      const running = tasks.find((t) => t.DesiredState === 'running' && t.Status.State === 'running' && !this.tracked.has(t.ID));
      if (running) {
        const nodes = await this.nodes();
        const machine = nodes.get(running.NodeID ?? '');
        const ports = endpointsOf(running, machine?.Status.Addr, wanted);
        if (ports.size === new Set(wanted).size && machine?.Status.State === 'ready') return this.track(service.ID, running, nodeId, instanceId, revision, ports, secret);
      }
      const pending = tasks.find((t) => t.DesiredState === 'running' && !FINAL_STATES.has(t.Status.State));
      if (pending) last = `task ${pending.Status.State}${pending.Status.Err ? `: ${pending.Status.Err}` : ''}`;
      if (pending?.Status.State === 'pending' && /no suitable node/.test(pending.Status.Err ?? '')) {
        unschedulableSince ||= Date.now();
        if (Date.now() - unschedulableSince > UNSCHEDULABLE_MS) {
          await this.removeService(service.ID, 0);
          throw new Error(`Swarm has no machine for service ${service.Spec.Name}: ${pending.Status.Err} (check the node's placement and resources)`);
        }
      } else unschedulableSince = 0;
      if (rejected.length >= MAX_REJECTED) {
        const why = rejected[0]!.Status.Err ?? rejected[0]!.Status.Message ?? 'rejected';
        await this.removeService(service.ID, 0);
        throw new Error(`Swarm could not start service ${service.Spec.Name}: ${why}`);
      }
      if (Date.now() > deadline) {
        await this.removeService(service.ID, 0);
        throw new Error(`Swarm did not run service ${service.Spec.Name} within ${START_TIMEOUT_MS / 1000}s${last ? ` (${last})` : ''}`);
      }
      await sleep(200);
    }
  }

  /**
   * Swarm spreads the tasks of one service; Berth's instances are one service each, so the
   * spread is Berth's: a new instance is pinned to the value of the spread label (a zone)
   * that has the fewest of its node's instances among the zones with a ready machine.
   */
  private async spreadConstraint(nodeId: string, p: Placement | undefined): Promise<{ constraint: string; key: string; value: string } | null> {
    const key = spreadKey(p);
    if (!key) return null;
    const nodes = [...(await this.nodes()).values()];
    // only machines the node's own constraints allow: a zone none of them is in would never schedule
    const ready = new Set(nodes.filter((n) => n.Status.State === 'ready' && (n.Spec?.Availability ?? 'active') === 'active' && (p?.constraints ?? []).every((c) => satisfies(n, c)))
      .map((n) => n.Spec?.Labels?.[key]).filter((v): v is string => !!v));
    if (!ready.size) return null; // no machine carries the label: Swarm places freely
    const counts = new Map([...ready].map((v) => [v, 0]));
    const services = await this.docker.listServices({ filters: { label: [`${LABEL.home}=${this.owner}`, `${LABEL.node}=${nodeId}`] } }) as unknown as ServiceInfo[];
    for (const s of services) {
      const [k, v] = (s.Spec.Labels?.[LABEL.spreadValue] ?? '').split('==');
      if (k === key && v !== undefined && counts.has(v)) counts.set(v, counts.get(v)! + 1);
    }
    const [value] = [...counts.entries()].sort((a, b) => a[1] - b[1] || a[0].localeCompare(b[0]))[0]!;
    return { constraint: `node.labels.${key}==${value}`, key, value };
  }

  /** A service pinned to a zone whose machines are all gone cannot run again there: it is re-placed. */
  private async canStillRun(service: ServiceInfo): Promise<boolean> {
    const [key, value] = (service.Spec.Labels?.[LABEL.spreadValue] ?? '').split('==');
    if (!key || value === undefined) return true;
    const nodes = [...(await this.nodes()).values()];
    return nodes.some((n) => n.Status.State === 'ready' && (n.Spec?.Availability ?? 'active') === 'active' && n.Spec?.Labels?.[key] === value);
  }

  async stop(instance: RuntimeInstance, graceMs: number): Promise<void> {
    const serviceId = this.serviceIdOf(instance);
    await this.keepLogBeforeRemoval(instance);
    // Scaled to zero first: the task stops gracefully and stays listed with its exit code
    // (a removed service's tasks vanish from the API at once), then the service goes.
    const scaled = await this.scaleToZero(serviceId).then(() => true, () => false);
    if (scaled) await this.watchStop(instance, STOP_GRACE_NS / 1e6 + STOP_SLACK_MS);
    await this.removeService(serviceId, graceMs + STOP_SLACK_MS);
    await withTimeout(instance.exited, 5000, 'timeout').catch(() => undefined);
  }

  /**
   * Reads the stopping task closely (Swarm's reaper deletes a scaled-down task about 250 ms
   * after it stopped, sooner than the shared poll may look) and ends the handle with its exit.
   */
  private async watchStop(instance: RuntimeInstance, ms: number): Promise<void> {
    const t = instance instanceof SwarmInstance ? this.tracked.get(instance.taskId) : undefined;
    if (!t) { await withTimeout(instance.exited, ms, 'timeout').catch(() => undefined); return; }
    const deadline = Date.now() + ms;
    while (!t.done && Date.now() < deadline) {
      let task: TaskInfo;
      try {
        task = await this.docker.getTask(t.instance.taskId).inspect() as unknown as TaskInfo;
      } catch (err) {
        if (statusOf(err) === 404) { this.finish(t, { code: null, signal: null, error: 'stopped; Swarm removed the task before its exit code was read' }); break; }
        await sleep(100);
        continue;
      }
      if (FINAL_STATES.has(task.Status.State)) { this.finish(t, exitOf(task)); break; }
      await sleep(50);
    }
    await withTimeout(instance.exited, 5000, 'timeout').catch(() => undefined);
  }

  private async scaleToZero(serviceId: string): Promise<void> {
    const service = this.docker.getService(serviceId);
    const info = await service.inspect() as { Version: { Index: number }; Spec: { Mode?: { Replicated?: { Replicas?: number } } } & Record<string, unknown> };
    if (info.Spec.Mode?.Replicated?.Replicas === 0) return;
    await service.update({ version: info.Version.Index, ...info.Spec, Mode: { Replicated: { Replicas: 0 } } } as never);
  }

  /**
   * Before a service is removed: scaled to zero, and no task of it still on its way to
   * deletion. Engine 20.10's manager dereferences a task that its reaper deleted while the
   * service removal was marking the tasks (SetServiceTasksRemove) and the daemon panics;
   * a removal that starts once the reaper is done with the service's tasks avoids the race.
   * Tasks on machines that are down never settle and are not waited for.
   */
  private async quiesce(serviceId: string, ms: number): Promise<void> {
    try {
      await this.scaleToZero(serviceId);
    } catch (err) {
      if (statusOf(err) === 404) return;
    }
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      const [tasks, nodes] = await Promise.all([this.tasksOfMany([serviceId]).catch(() => [] as TaskInfo[]), this.nodes().catch(() => new Map<string, NodeInfo>())]);
      const unsettled = tasks.filter((t) => nodes.get(t.NodeID ?? '')?.Status.State === 'ready' && (!FINAL_STATES.has(t.Status.State) || t.DesiredState === 'remove'));
      if (!unsettled.length) return;
      await sleep(100);
    }
  }

  kill(instance: RuntimeInstance): void {
    // Swarm cannot signal a task; removing the service ends it (SIGTERM, then SIGKILL after 2 s)
    const id = this.serviceIdOf(instance);
    const removal = this.keepLogBeforeRemoval(instance)
      .then(() => this.removeService(id, 0))
      .catch((err: unknown) => console.error(`[berth] kill ${serviceName(instance.instanceId)}: ${errorText(err)}`));
    const t = instance instanceof SwarmInstance ? this.tracked.get(instance.taskId) : undefined;
    if (t) t.removal = removal;
  }

  async list(): Promise<RuntimeInstance[]> {
    const services = await this.docker.listServices({ filters: { label: [`${LABEL.home}=${this.owner}`] } }) as unknown as ServiceInfo[];
    const out: RuntimeInstance[] = [];
    const nodes = await this.nodes(); // once: adoption at takeover lists many services
    for (const s of services) {
      const labels = s.Spec.Labels ?? {};
      const nodeId = labels[LABEL.node];
      const instanceId = labels[LABEL.instance];
      if (!nodeId || !instanceId || labels[LABEL.home] !== this.owner) continue;
      const known = [...this.tracked.values()].find((t) => t.instance.serviceId === s.ID && !t.done);
      if (known) { out.push(known.instance); continue; }
      const revision = Number(labels[LABEL.revision]);
      const cell = labels[LABEL.kind] === 'cell';
      const ports = cell ? [WORKER_PORT] : (labels[LABEL.ports] ?? '').split(',').filter(Boolean).map(Number);
      const secret = cell ? this.secretOf(instanceId, labels[LABEL.nonce] ?? '') : undefined;
      const tasks = await this.tasksOf(s.ID);
      const running = tasks.find((t) => t.DesiredState === 'running' && t.Status.State === 'running');
      const addr = nodes.get(running?.NodeID ?? '')?.Status;
      const endpoints = running && addr?.State === 'ready' ? endpointsOf(running, addr.Addr, ports) : new Map<number, Endpoint>();
      if (cell && !this.sameKey(labels)) {
        // made with another server key: its secret cannot be recomputed, so no gateway could call it
        await this.archiveLogs(nodeId, instanceId, s.ID, 'cell service made with another server key (its secret cannot be recomputed); removed');
        await this.removeService(s.ID, 0);
      } else if (running && endpoints.size === new Set(ports).size) {
        // a Swarm restart of the task fetches the checkpoint again: granted while the service lives (when its blob is here)
        const path = labels[LABEL.checkpointPath];
        const sha256 = labels[LABEL.checkpointSha256];
        if (secret && path && sha256 && existsSync(path)) this.checkpointGrants.grant(instanceId, secret, { path, sha256 });
        out.push(this.track(s.ID, running, nodeId, instanceId, Number.isInteger(revision) && revision > 0 ? revision : undefined, endpoints, secret));
      } else {
        // no running task to adopt: the controller starts the instance afresh (start() re-uses or replaces the service)
        await this.archiveLogs(nodeId, instanceId, s.ID, 'service found without a running task; removed');
        await this.removeService(s.ID, 0);
      }
    }
    await this.pruneWorkerFiles();
    return out;
  }

  async logs(nodeId: string, instanceId: string, lines: number, query: LogQuery = {}): Promise<string> {
    const kept = (await tailLines([this.logPath(nodeId, instanceId)], lines, query)).text;
    const live = await this.serviceLog(serviceName(instanceId), nodeId, query.search ? MAX_TAIL_LINES : lines);
    return withLive(kept, live, lines, query.search);
  }

  follow(nodeId: string, instanceId: string, onData: (chunk: Buffer) => void, onEnd: () => void): () => void {
    const tracked = [...this.tracked.values()].find((t) => t.instance.instanceId === instanceId && t.instance.nodeId === nodeId && !t.done);
    if (!tracked) { queueMicrotask(onEnd); return () => undefined; }
    const open = async (): Promise<NodeJS.ReadableStream> => await logsOf(this.docker.getService(tracked.instance.serviceId)).logs({ follow: true, stdout: true, stderr: true, tail: 0 }) as NodeJS.ReadableStream;
    return followLog(this.docker, open, onData, onEnd, tracked.instance.exited);
  }

  async cleanup(nodeId: string): Promise<void> {
    await rm(join(this.logDir, nodeId), { recursive: true, force: true });
    await this.pruneWorkerFiles(nodeId);
  }

  async close(): Promise<void> {
    if (this.poller) clearInterval(this.poller);
    this.poller = null;
  }

  // ---- tracking ----

  /** `secret`: a cell's worker, reached at its published port with the handshake (no image ports then). */
  private track(serviceId: string, task: TaskInfo, nodeId: string, instanceId: string, revision: number | undefined, ports: Map<number, Endpoint>, secret?: string): SwarmInstance {
    let resolveExit!: (info: ExitInfo) => void;
    const exited = new Promise<ExitInfo>((r) => { resolveExit = r; });
    const wanted = [...ports.keys()];
    let endpoint: Endpoint = (wanted[0] !== undefined ? ports.get(wanted[0]) : undefined) ?? { host: '127.0.0.1', port: 0 };
    if (secret !== undefined) { endpoint = { ...endpoint, secret }; ports = new Map(); }
    const instance = new SwarmInstance(nodeId, instanceId, endpoint, ports, task.Status.ContainerStatus?.PID ?? null, exited, serviceId, task.ID, revision, task.NodeID ?? '');
    this.tracked.set(task.ID, { instance, resolve: resolveExit, done: false, archived: false });
    this.poller ??= setInterval(() => void this.poll(), POLL_MS);
    this.poller.unref();
    return instance;
  }

  /** One read of the tracked services' tasks and of the machines; resolves `exited` of tasks that stopped running. */
  private async poll(): Promise<void> {
    if (this.polling) return;
    this.polling = true;
    try {
      const live = [...this.tracked.values()].filter((t) => !t.done);
      if (!live.length) return;
      const serviceIds = [...new Set(live.map((t) => t.instance.serviceId))];
      const [tasks, nodes] = await Promise.all([this.tasksOfMany(serviceIds), this.nodes()]);
      const byId = new Map(tasks.map((t) => [t.ID, t]));
      for (const t of live) {
        const task = byId.get(t.instance.taskId);
        const machine = nodes.get(t.instance.machine);
        let info: ExitInfo | null = null;
        if (!task) info = { code: null, signal: null, error: 'the Swarm task is gone' };
        else if (machine && machine.Status.State !== 'ready') info = { code: null, signal: null, error: `its machine ${machine.Status.Addr ?? machine.ID} is ${machine.Status.State}; Swarm re-creates the task elsewhere` };
        // a task told to stop (desired state shutdown) counts once its container has: its exit code is known then
        else if (FINAL_STATES.has(task.Status.State)) info = exitOf(task);
        if (info) this.finish(t, info);
      }
    } catch (err) {
      // the manager unreachable for a moment: the next poll tries again (said once a minute at most)
      if (Date.now() - this.pollErrorAt > 60_000) {
        this.pollErrorAt = Date.now();
        console.error(`[berth] reading Swarm tasks from ${this.daemonAddress}: ${errorText(err)}`);
      }
    } finally {
      this.polling = false;
    }
  }

  private finish(t: Tracked, info: ExitInfo): void {
    if (t.done) return;
    t.done = true;
    this.tracked.delete(t.instance.taskId);
    const i = t.instance;
    const how = info.error ?? (info.signal ? `was killed by ${info.signal} (exit code ${info.code})` : `exited with code ${info.code}`);
    void this.archiveLogs(i.nodeId, i.instanceId, i.serviceId, `task ${i.taskId} ${how}`, t.archived ? null : i.taskId)
      .then(() => t.removal)
      .finally(() => t.resolve(info));
  }

  /** The log of the handle's task, kept while the service still exists (its removal takes the log along). */
  private async keepLogBeforeRemoval(instance: RuntimeInstance): Promise<void> {
    const t = instance instanceof SwarmInstance ? this.tracked.get(instance.taskId) : undefined;
    if (!t || t.done || t.archived) return;
    t.archived = true;
    await this.archiveLogs(instance.nodeId, instance.instanceId, t.instance.serviceId, null, t.instance.taskId);
  }

  // ---- helpers ----

  private async resources(r: InstanceSpec['resources']): Promise<{ limits: { NanoCPUs?: number; MemoryBytes?: number }; reservations: { NanoCPUs?: number; MemoryBytes?: number } }> {
    const cap = this.capacity ?? await this.readCapacity().catch(() => null);
    let nano = Math.round(r.cores * 1e9);
    let mem = r.memoryGb > 0 ? memoryLimitBytes(r.memoryGb) : 0;
    if (cap) { nano = Math.min(nano, cap.nanoCpus); mem = Math.min(mem, cap.memoryBytes); }
    const both = { ...(nano > 0 ? { NanoCPUs: nano } : {}), ...(mem > 0 ? { MemoryBytes: mem } : {}) };
    return { limits: both, reservations: { ...both } };
  }

  private async readCapacity(): Promise<{ nanoCpus: number; memoryBytes: number }> {
    const nodes = await this.docker.listNodes() as unknown as NodeInfo[];
    let nanoCpus = 0;
    let memoryBytes = 0;
    for (const n of nodes) {
      nanoCpus = Math.max(nanoCpus, n.Description?.Resources?.NanoCPUs ?? 0);
      memoryBytes = Math.max(memoryBytes, n.Description?.Resources?.MemoryBytes ?? 0);
    }
    this.capacity = { nanoCpus, memoryBytes };
    return this.capacity;
  }

  private async nodes(): Promise<Map<string, NodeInfo>> {
    const nodes = await this.docker.listNodes() as unknown as NodeInfo[];
    return new Map(nodes.map((n) => [n.ID, n]));
  }

  private async tasksOf(serviceId: string): Promise<TaskInfo[]> {
    return await this.docker.listTasks({ filters: { service: [serviceId] } }) as unknown as TaskInfo[];
  }

  /**
   * Tasks of several services in one call. The manager refuses a filter naming a removed
   * service (404), yet that service's tasks live on until their containers have stopped:
   * then all tasks are read and picked by service id.
   */
  private async tasksOfMany(serviceIds: string[]): Promise<TaskInfo[]> {
    try {
      return await this.docker.listTasks({ filters: { service: serviceIds } }) as unknown as TaskInfo[];
    } catch (err) {
      if (statusOf(err) !== 404) throw err;
    }
    const ids = new Set(serviceIds);
    return (await this.docker.listTasks() as unknown as TaskInfo[]).filter((t) => ids.has(t.ServiceID));
  }

  private async inspectService(name: string): Promise<ServiceInfo | null> {
    try {
      return await this.docker.getService(name).inspect() as ServiceInfo;
    } catch (err) {
      if (statusOf(err) === 404) return null;
      throw new Error(`inspect Swarm service ${name}: ${errorText(err)}`);
    }
  }

  /** Removes the service; with waitMs, also waits (that long at most) until its tasks are gone. */
  private async removeService(id: string, waitMs: number): Promise<void> {
    const labels = (await this.docker.getService(id).inspect().catch(() => null) as ServiceInfo | null)?.Spec.Labels ?? {};
    await this.quiesce(id, QUIESCE_MS);
    try {
      await this.docker.getService(id).remove();
    } catch (err) {
      if (statusOf(err) !== 404) throw new Error(`remove Swarm service ${id}: ${errorText(err)}`);
    }
    // a cell's worker files and checkpoint grant go with its service (a secret in use cannot be removed: after it)
    const instanceId = labels[LABEL.instance];
    const nonce = labels[LABEL.nonce];
    if (labels[LABEL.kind] === 'cell' && instanceId && nonce) {
      this.checkpointGrants.revoke(instanceId, this.secretOf(instanceId, nonce));
      await this.removeWorkerFiles(instanceId, nonce);
    }
    const deadline = Date.now() + waitMs;
    while (Date.now() < deadline) {
      const tasks = await this.tasksOfMany([id]).catch(() => []);
      if (!tasks.some((t) => !FINAL_STATES.has(t.Status.State))) return;
      await sleep(200);
    }
  }

  private serviceIdOf(instance: RuntimeInstance): string {
    return instance instanceof SwarmInstance ? instance.serviceId : serviceName(instance.instanceId);
  }

  /** Appends the task's (or service's) last log lines, and how it ended, to the instance log. */
  private async archiveLogs(nodeId: string, instanceId: string, serviceId: string, ending: string | null, taskId?: string | null): Promise<void> {
    let text = '';
    if (taskId !== null) try {
      const opts = { stdout: true, stderr: true, follow: false, tail: ARCHIVE_LINES };
      const raw = await logsOf(taskId ? this.docker.getTask(taskId) : this.docker.getService(serviceId)).logs(opts);
      text = withoutLogErrors(demux(raw as Buffer));
    } catch { /* its machine is gone, or the service: no log to keep */ }
    await keepLog(this.logPath(nodeId, instanceId), this.logLimits, text, ending);
  }

  /** The live service's log tail: only while a task of ours runs (archived lines are in the file). */
  private async serviceLog(name: string, nodeId: string, lines: number): Promise<string> {
    const live = [...this.tracked.values()].find((t) => !t.done && serviceName(t.instance.instanceId) === name && t.instance.nodeId === nodeId);
    if (!live) return '';
    try {
      const raw = await logsOf(this.docker.getTask(live.instance.taskId)).logs({ stdout: true, stderr: true, follow: false, tail: Math.max(1, lines) });
      return withoutLogErrors(demux(raw as Buffer));
    } catch {
      return '';
    }
  }

  private logPath(nodeId: string, instanceId: string): string {
    return join(this.logDir, nodeId, `${instanceId}.log`);
  }
}

function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\./.test(h) || h === '::ffff:127.0.0.1';
}

export function serviceName(instanceId: string): string {
  return `berth-${instanceId}`;
}

/**
 * Whether a machine meets a Swarm constraint, for the attributes Berth can read (node.id,
 * node.hostname, node.role, node.labels.*, engine.labels.*); others count as met (Swarm decides).
 */
export function satisfies(n: { ID: string; Spec?: { Labels?: Record<string, string>; Role?: string }; Description?: { Hostname?: string; Engine?: { Labels?: Record<string, string> } } }, constraint: string): boolean {
  const m = /^\s*([A-Za-z0-9_.-]+)\s*(==|!=)\s*(.+?)\s*$/.exec(constraint);
  if (!m) return true;
  const [, attr, op, want] = m as unknown as [string, string, string, string];
  let have: string | undefined;
  if (attr === 'node.id') have = n.ID;
  else if (attr === 'node.hostname') have = n.Description?.Hostname;
  else if (attr === 'node.role') have = n.Spec?.Role;
  else if (attr.startsWith('node.labels.')) have = n.Spec?.Labels?.[attr.slice('node.labels.'.length)];
  else if (attr.startsWith('engine.labels.')) have = n.Description?.Engine?.Labels?.[attr.slice('engine.labels.'.length)];
  else return true;
  return op === '==' ? have === want : have !== want;
}

/** The machine label a placement spreads over (`zone` or `node.labels.zone` → `zone`). */
function spreadKey(p: Placement | undefined): string | null {
  if (!p?.spread) return null;
  return p.spread.startsWith('node.labels.') ? p.spread.slice('node.labels.'.length) : p.spread;
}

/** The node spec's placement as Swarm's: constraints as given, `spread: zone` → spread over node.labels.zone. */
export function placementOf(p: Placement | undefined): { Constraints?: string[]; Preferences?: Array<{ Spread: { SpreadDescriptor: string } }> } {
  if (!p) return {};
  const key = spreadKey(p);
  const spread = key ? `node.labels.${key}` : null;
  return {
    ...(p.constraints.length ? { Constraints: [...p.constraints] } : {}),
    ...(spread ? { Preferences: [{ Spread: { SpreadDescriptor: spread } }] } : {}),
  };
}

/** Services' and tasks' logs (dockerode has both; its typings lack the task's and the promise form). */
function logsOf(x: Docker.Service | Docker.Task): { logs(opts: { stdout: boolean; stderr: boolean; follow: boolean; tail: number }): Promise<Buffer | NodeJS.ReadableStream> } {
  return x as unknown as { logs(opts: { stdout: boolean; stderr: boolean; follow: boolean; tail: number }): Promise<Buffer | NodeJS.ReadableStream> };
}

function exitOf(task: TaskInfo): ExitInfo {
  const raw = task.Status.ContainerStatus?.ExitCode;
  const code = raw === undefined || raw < 0 ? null : raw; // -1: Swarm never learnt it
  const error = task.Status.Err || undefined;
  return { code, signal: code === 137 ? 'SIGKILL' : code === 143 ? 'SIGTERM' : null, ...(error ? { error } : {}) };
}

function endpointsOf(task: TaskInfo, addr: string | undefined, wanted: number[]): Map<number, Endpoint> {
  const out = new Map<number, Endpoint>();
  if (!addr) return out;
  for (const p of wanted) {
    const published = task.Status.PortStatus?.Ports?.find((x) => x.TargetPort === p && x.PublishedPort)?.PublishedPort;
    if (published) out.set(p, { host: addr, port: published });
  }
  return out;
}

function authOf(image: string, auth: RegistryAuth | null): Record<string, string> | undefined {
  return auth ? { username: auth.username, password: auth.password, serveraddress: registryServerAddress(image) } : undefined;
}

/** Swarm writes "Error grabbing logs: … node … is not available" into the stream itself: not the instance's output. */
function withoutLogErrors(text: string): string {
  return text.split('\n').filter((l) => !/^\W*Error grabbing logs: /.test(l)).join('\n');
}

