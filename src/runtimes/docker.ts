// The container runtime: each instance is a Docker container, driven through the Docker
// Engine API (dockerode; the socket /var/run/docker.sock or DOCKER_HOST).
//
// - Containers are named `berth-<instanceId>` and labelled with the node, the instance and
//   the Berth home, so several Berth servers can share one daemon without ever touching
//   each other's containers, and a restarted `berth up` can adopt its own (`list()`).
// - Image workloads publish each container port on 127.0.0.1 with a port Docker picks.
// - Cell workloads run Berth's Python worker inside the node's kernel image: the worker code
//   (python/), the checkpoint and a per-instance run directory are bind-mounted, and Berth
//   reaches the worker's Unix socket through the run directory on the host, or, with
//   `--worker-transport tcp`, the worker's TCP port published on 127.0.0.1 as image nodes'
//   ports are (the step towards a remote daemon serving cell nodes). Either way every connection
//   starts with the instance's secret, which is in the worker's config file only (0600).
// - A container's log is copied into <home>/logs/<nodeId>/<instanceId>.log when it exits,
//   then the container is removed; `logs()` shows that file plus the live container's log.
//   Containers' own logs are capped by the json-file driver (`max-size`/`max-file` from
//   `--log-max-bytes`/`--log-files`), and reads ask Docker for the tail only.
import Docker from 'dockerode';
import { appendFile, chmod, chown, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { createHash } from 'node:crypto';
import { availableParallelism, constants as osConstants, tmpdir, totalmem } from 'node:os';
import { PYTHON_DIR, loadConfig } from '../core/config.js';
import type { Endpoint } from '../worker/protocol.js';
import type { ExitInfo, InstanceSpec, LogQuery, RegistryAuth, Runtime, RuntimeInstance } from './runtime.js';
import { DEFAULT_LOG_LIMITS, MAX_TAIL_LINES, tailLines, type LogLimits } from './log-file.js';
import { demux, errorText, followLog, keepLog, sleep, statusOf, withLive, withTimeout, GB, PING_TIMEOUT_MS, memoryLimitBytes } from './engine-api.js';
import { newInstanceSecret, type WorkerTransport } from './worker-endpoint.js';

/** sockaddr_un.sun_path is 108 bytes; fall back to a short directory when home is deep. */
const MAX_SOCKET_PATH = 100;
const LABEL = {
  node: 'berth.node-id',
  instance: 'berth.instance-id',
  home: 'berth.home',
  kind: 'berth.kind',
  ports: 'berth.ports',
  revision: 'berth.revision',
  transport: 'berth.worker-transport',
} as const;
/** The port a cell worker listens on inside its container with TCP workers (published on 127.0.0.1). */
const WORKER_PORT = 7070;
/** Lines of a container's log kept in the instance log file when the container goes away. */
const ARCHIVE_LINES = 5000;
/** After `stop`'s grace period and Docker's own kill, how long to wait for the container to go. */
const STOP_SLACK_MS = 15_000;
/** How long a removal another caller started may take before we stop waiting for it. */
const REMOVE_WAIT_MS = 15_000;

/** Cell kernels run as this user when Berth is root (nobody): never root in the container. */
const KERNEL_USER = 65534;

// the worker's configuration is a file in its run directory, read as its stdin: no BERTH_* variables
const WORKER_BOOTSTRAP = "import sys; sys.stdin = open('/berth/run/config.json'); sys.path.insert(0, '/berth/python'); import berth_worker; berth_worker.main()";

export interface DockerRuntimeOptions {
  /** A configured client; default: from DOCKER_HOST, else /var/run/docker.sock. */
  docker?: Docker;
  /** Caps of containers' logs (json-file driver) and of the archived copy. */
  logLimits?: LogLimits;
  /**
   * Whose containers these are (the berth.home label): the home by default; Berth servers
   * sharing a PostgreSQL store share one owner, so whichever leads adopts the others' containers.
   */
  owner?: string;
  /** How Berth reaches cell workers; default from the environment (BERTH_WORKER_TRANSPORT). */
  workerTransport?: WorkerTransport;
}

class DockerInstance implements RuntimeInstance {
  constructor(
    readonly nodeId: string,
    readonly instanceId: string,
    readonly endpoint: Endpoint,
    readonly ports: ReadonlyMap<number, Endpoint>,
    readonly pid: number | null,
    readonly exited: Promise<ExitInfo>,
    readonly containerId: string,
    readonly revision: number | undefined,
  ) {}
}

interface Tracked {
  instance: DockerInstance;
  /** Set once the container's log has been copied to the log file (the container is going). */
  archived: boolean;
}

export class DockerRuntime implements Runtime {
  readonly name = 'docker';
  readonly supportsImages = true;
  private readonly home: string;
  private readonly owner: string;
  private readonly logDir: string;
  private readonly runRoot: string;
  private readonly docker: Docker;
  private readonly tracked = new Map<string, Tracked>();
  private readonly pulls = new Map<string, Promise<void>>();
  private readonly logLimits: LogLimits;
  private readonly transport: WorkerTransport;

  constructor(home: string, options: DockerRuntimeOptions = {}) {
    this.home = resolve(home);
    this.owner = options.owner ?? this.home;
    this.logDir = join(this.home, 'logs');
    let runRoot = join(this.home, 'run');
    // <runRoot>/<20-char instance id>/worker.sock
    if (runRoot.length + 1 + 20 + '/worker.sock'.length > MAX_SOCKET_PATH) {
      runRoot = join(tmpdir(), 'berth-' + createHash('sha256').update(this.home).digest('hex').slice(0, 12));
    }
    this.runRoot = runRoot;
    this.docker = options.docker ?? new Docker();
    this.logLimits = options.logLimits ?? DEFAULT_LOG_LIMITS;
    this.transport = options.workerTransport ?? loadConfig({ home }).workerTransport;
  }

  /** Where the daemon is expected, for messages. */
  get daemonAddress(): string {
    const m = this.docker.modem as { socketPath?: string; host?: string; port?: number | string; protocol?: string };
    if (typeof m.socketPath === 'string' && m.socketPath) return `unix://${m.socketPath}`;
    if (m.host) return `${m.protocol ?? 'http'}://${m.host}${m.port ? `:${m.port}` : ''}`;
    return process.env.DOCKER_HOST || 'unix:///var/run/docker.sock';
  }

  async check(): Promise<string | null> {
    try {
      await withTimeout(this.docker.ping(), PING_TIMEOUT_MS, 'no answer within 5s');
      return null;
    } catch (err) {
      return `Docker daemon not reachable at ${this.daemonAddress} (${errorText(err)}): install docker.io and start dockerd`;
    }
  }

  unenforced(r: InstanceSpec['resources']): string[] {
    const out: string[] = [];
    const cpus = availableParallelism();
    if (r.cores > cpus) out.push(`CPU capped at ${cpus} cores: this machine has ${cpus} (requested ${r.cores})`);
    const totalGb = totalmem() / GB;
    if (r.memoryGb > totalGb) out.push(`memory limit of ${r.memoryGb} GB cannot be reached: this machine has ${totalGb.toFixed(1)} GB`);
    if (r.gpus > 0) out.push(`GPUs cannot be given to containers here (requested ${r.gpus}): the Docker runtime does not pass GPUs through`);
    return out;
  }

  async start(spec: InstanceSpec): Promise<RuntimeInstance> {
    const w = spec.workload;
    const image = w.kind === 'cell' ? w.kernelImage : w.image;
    if (!image) throw new Error('cell nodes on the Docker runtime need a kernel image (an image with python3 and dill)');
    const logFile = this.logPath(spec.nodeId, spec.instanceId);
    await mkdir(join(this.logDir, spec.nodeId), { recursive: true });
    await appendFile(logFile, `[berth] ${new Date().toISOString()} starting instance ${spec.instanceId} in container ${containerName(spec.instanceId)} from ${image}\n`);
    try {
      return await this.createAndStart(spec, image);
    } catch (err) {
      // the user reads why in the instance log too (a pull refused, a bad mount…)
      await appendFile(logFile, `[berth] ${new Date().toISOString()} start failed: ${errorText(err)}\n`).catch(() => {});
      if (w.kind === 'cell') await rm(this.runDir(spec.instanceId), { recursive: true, force: true }).catch(() => {});
      throw err;
    }
  }

  private async createAndStart(spec: InstanceSpec, image: string): Promise<RuntimeInstance> {
    const w = spec.workload;
    const name = containerName(spec.instanceId);
    await this.removeLeftover(name);
    await this.ensureImage(image, w.registryAuth);

    const labels: Record<string, string> = {
      [LABEL.node]: spec.nodeId,
      [LABEL.instance]: spec.instanceId,
      [LABEL.home]: this.owner,
      [LABEL.kind]: w.kind,
      [LABEL.revision]: String(spec.revision),
    };
    const hostConfig: Docker.HostConfig = {
      Init: true, // tini as PID 1: signals reach the service with their default meaning
      // Docker rotates the container's own log: bounded like the process runtime's files
      LogConfig: { Type: 'json-file', Config: { 'max-size': String(this.logLimits.maxBytes), 'max-file': String(this.logLimits.files) } },
      ...this.limits(spec.resources),
      // the sandbox's guarantees, from container options (docs/sandbox.md)
      SecurityOpt: ['no-new-privileges:true'],
      CapDrop: ['ALL'],
      ...(w.kind === 'image' && w.capabilities?.length ? { CapAdd: w.capabilities } : {}),
      PidsLimit: loadConfig({ home: this.home }).pidsLimit,
      ...(spec.network === 'none' ? { NetworkMode: 'none' } : {}),
    };
    const create: Docker.ContainerCreateOptions = { name, Image: image, Labels: labels, HostConfig: hostConfig };

    if (w.kind === 'image') {
      const ports = [...new Set(w.ports)];
      labels[LABEL.ports] = ports.join(',');
      create.Env = Object.entries(w.env).map(([k, v]) => `${k}=${v}`);
      create.ExposedPorts = Object.fromEntries(ports.map((p) => [`${p}/tcp`, {}]));
      hostConfig.PortBindings = Object.fromEntries(ports.map((p) => [`${p}/tcp`, [{ HostIp: '127.0.0.1', HostPort: '' }]]));
    } else {
      const runDir = this.runDir(spec.instanceId);
      await rm(runDir, { recursive: true, force: true });
      await mkdir(runDir, { recursive: true });
      const root = (process.getuid?.() ?? 0) === 0;
      // only the container's user may create (and reach) things in it; root reaches any socket
      if (root) { await chown(runDir, KERNEL_USER, KERNEL_USER); await chmod(runDir, 0o700); } else await chmod(runDir, 0o777);
      // TCP: the worker's port published like an image node's (not with network none: nothing to publish on)
      const tcp = this.transport === 'tcp' && spec.network !== 'none';
      const config = {
        ...(tcp ? { listen: { tcp: { host: '0.0.0.0', port: WORKER_PORT } } } : { socket: '/berth/run/worker.sock' }),
        secret: newInstanceSecret(), checkpoint: '/berth/checkpoint.dill', code: w.code, requires: w.requires,
        inputs: w.inputs, outputs: w.outputs, maxResponseBytes: w.maxResponseBytes,
      };
      if (tcp) {
        labels[LABEL.transport] = 'tcp';
        create.ExposedPorts = { [`${WORKER_PORT}/tcp`]: {} };
        hostConfig.PortBindings = { [`${WORKER_PORT}/tcp`]: [{ HostIp: '127.0.0.1', HostPort: '' }] };
      }
      create.Entrypoint = ['python3'];
      create.Cmd = ['-u', '-c', WORKER_BOOTSTRAP];
      // it holds the instance's secret: readable by the container's user only (Berth's uid when
      // Berth is not root, else nobody's, which the file is given to)
      await writeFile(join(runDir, 'config.json'), JSON.stringify(config), { mode: 0o600 });
      if (root) await chown(join(runDir, 'config.json'), KERNEL_USER, KERNEL_USER);
      create.Env = ['PYTHONUNBUFFERED=1', 'PYTHONDONTWRITEBYTECODE=1'];
      // The worker's socket is created 0600: a Berth that is not root runs the worker as
      // itself so it can connect (root can connect to any socket, so the image's user stays).
      const uid = process.getuid?.() ?? 0;
      create.User = uid !== 0 ? `${uid}:${process.getgid?.() ?? uid}` : `${KERNEL_USER}:${KERNEL_USER}`;
      create.Env.push('HOME=/tmp');
      // nothing of the image is writable: a private /tmp only
      hostConfig.ReadonlyRootfs = true;
      hostConfig.Tmpfs = { '/tmp': 'rw,nosuid,nodev,mode=1777' };
      hostConfig.Mounts = [
        { Type: 'bind', Source: PYTHON_DIR, Target: '/berth/python', ReadOnly: true },
        { Type: 'bind', Source: resolve(w.checkpointPath), Target: '/berth/checkpoint.dill', ReadOnly: true },
        { Type: 'bind', Source: runDir, Target: '/berth/run', ReadOnly: false },
      ];
    }

    let container: Docker.Container;
    try {
      container = await this.docker.createContainer(create);
    } catch (err) {
      throw new Error(`create container ${name} from ${image}: ${errorText(err)}`);
    }
    try {
      await container.start();
    } catch (err) {
      await container.remove({ force: true }).catch(() => {});
      throw new Error(`start container ${name} from ${image}: ${errorText(err)}`);
    }
    return this.track(container, spec.nodeId, spec.instanceId, w.kind, labels[LABEL.ports], spec.revision, labels[LABEL.transport]);
  }

  async stop(instance: RuntimeInstance, graceMs: number): Promise<void> {
    const container = this.containerOf(instance);
    const t = Math.max(0, Math.ceil(graceMs / 1000));
    try {
      await container.stop({ t });
    } catch (err) {
      if (statusOf(err) !== 304 && statusOf(err) !== 404) console.error(`[berth] stop ${containerName(instance.instanceId)}: ${errorText(err)}`);
    }
    const gone = await withTimeout(instance.exited.then(() => true), t * 1000 + STOP_SLACK_MS, 'timeout').catch(() => false);
    if (!gone) await this.removeContainer(container);
  }

  kill(instance: RuntimeInstance): void {
    // the container's watcher copies the log and removes the container once it has exited
    this.containerOf(instance).kill({ signal: 'SIGKILL' }).catch((err: unknown) => {
      const s = statusOf(err);
      if (s !== 404 && s !== 409) console.error(`[berth] kill ${containerName(instance.instanceId)}: ${errorText(err)}`);
    });
  }

  async list(): Promise<RuntimeInstance[]> {
    const infos = await this.docker.listContainers({ all: true, filters: { label: [`${LABEL.home}=${this.owner}`] } });
    const out: RuntimeInstance[] = [];
    for (const info of infos) {
      const labels = info.Labels ?? {};
      const nodeId = labels[LABEL.node];
      const instanceId = labels[LABEL.instance];
      if (!nodeId || !instanceId || labels[LABEL.home] !== this.owner) continue;
      const known = this.tracked.get(instanceId);
      if (known) { if (info.State === 'running') out.push(known.instance); continue; }
      const container = this.docker.getContainer(info.Id);
      if (info.State === 'running') {
        const revision = Number(labels[LABEL.revision]); // absent on containers from before revisions: the node's current one
        out.push(await this.track(container, nodeId, instanceId, labels[LABEL.kind] === 'cell' ? 'cell' : 'image', labels[LABEL.ports], Number.isInteger(revision) && revision > 0 ? revision : undefined, labels[LABEL.transport]));
      } else {
        // a container of this home that stopped while no Berth was watching: keep its log, remove it
        await this.archiveLogs(container, nodeId, instanceId, `container found ${info.State} (${info.Status})`);
        await this.removeContainer(container);
        if (labels[LABEL.kind] === 'cell') await rm(this.runDir(instanceId), { recursive: true, force: true });
      }
    }
    return out;
  }

  /** The archived file's tail (read backwards) and the live container's tail (Docker's `tail`), never either whole. */
  async logs(nodeId: string, instanceId: string, lines: number, query: LogQuery = {}): Promise<string> {
    const kept = (await tailLines([this.logPath(nodeId, instanceId)], lines, query)).text;
    const archived = this.tracked.get(instanceId)?.archived;
    const live = archived ? '' : await this.containerLog(containerName(instanceId), nodeId, query.search ? MAX_TAIL_LINES : lines);
    return withLive(kept, live, lines, query.search);
  }

  /** Docker's own follow of the live container, from now on; ends when the container goes. */
  follow(_nodeId: string, instanceId: string, onData: (chunk: Buffer) => void, onEnd: () => void): () => void {
    const tracked = this.tracked.get(instanceId);
    if (!tracked || tracked.archived) { queueMicrotask(onEnd); return () => undefined; }
    return followLog(this.docker, () => this.containerOf(tracked.instance).logs({ follow: true, stdout: true, stderr: true, tail: 0 }), onData, onEnd);
  }

  async cleanup(nodeId: string): Promise<void> {
    await rm(join(this.logDir, nodeId), { recursive: true, force: true });
    const ids = new Set<string>();
    for (const [id, t] of this.tracked) if (t.instance.nodeId === nodeId) ids.add(id);
    try {
      const infos = await this.docker.listContainers({
        all: true, filters: { label: [`${LABEL.home}=${this.owner}`, `${LABEL.node}=${nodeId}`] },
      });
      for (const info of infos) {
        const id = info.Labels?.[LABEL.instance];
        if (id) ids.add(id);
      }
    } catch { /* daemon gone: the run dirs we know of are still removed */ }
    for (const id of ids) await rm(this.runDir(id), { recursive: true, force: true });
  }

  // ---- helpers ----

  private limits(r: InstanceSpec['resources']): Docker.HostConfig {
    const out: Docker.HostConfig = {};
    const cores = Math.min(r.cores, availableParallelism());
    if (cores > 0) out.NanoCpus = Math.round(cores * 1e9);
    if (r.memoryGb > 0) {
      const bytes = memoryLimitBytes(r.memoryGb);
      out.Memory = bytes;
      out.MemorySwap = bytes; // no swap beyond the limit
    }
    return out;
  }

  /** Removes a container left with this name by an earlier run of this home (never another home's). */
  private async removeLeftover(name: string): Promise<void> {
    const c = this.docker.getContainer(name);
    let info: Docker.ContainerInspectInfo;
    try {
      info = await c.inspect();
    } catch (err) {
      if (statusOf(err) === 404) return;
      throw new Error(`inspect ${name}: ${errorText(err)}`);
    }
    const owner = info.Config?.Labels?.[LABEL.home];
    if (owner !== this.owner) {
      throw new Error(`a container named ${name} already exists and does not belong to this Berth (home ${owner ?? 'unlabelled'})`);
    }
    await this.removeContainer(this.docker.getContainer(info.Id));
  }

  /** Pulls the image unless it is present (one pull per image at a time). */
  private async ensureImage(image: string, auth: RegistryAuth | null): Promise<void> {
    try {
      await this.docker.getImage(image).inspect();
      return;
    } catch (err) {
      if (statusOf(err) !== 404) throw new Error(`inspect image ${image}: ${errorText(err)}`);
    }
    const key = `${image}\0${auth?.username ?? ''}\0${auth?.password ?? ''}`;
    let p = this.pulls.get(key);
    if (!p) {
      p = this.pull(image, auth).finally(() => this.pulls.delete(key));
      this.pulls.set(key, p);
    }
    await p;
  }

  private async pull(image: string, auth: RegistryAuth | null): Promise<void> {
    const opts: Record<string, unknown> = {};
    if (auth) opts.authconfig = { username: auth.username, password: auth.password, serveraddress: registryServerAddress(image) };
    try {
      const stream = await this.docker.pull(image, opts) as NodeJS.ReadableStream;
      await new Promise<void>((resolveP, reject) => {
        this.docker.modem.followProgress(stream, (err: Error | null, events: Array<{ error?: string; errorDetail?: { message?: string } }>) => {
          if (err) { reject(err); return; }
          const failed = events.find((e) => e.error || e.errorDetail);
          if (failed) reject(new Error(failed.errorDetail?.message ?? failed.error));
          else resolveP();
        });
      });
    } catch (err) {
      throw new Error(`pull ${image}: ${errorText(err)}`);
    }
  }

  /** Reads the container back and starts watching it; the returned instance is kept for `list`/`logs`. */
  private async track(container: Docker.Container, nodeId: string, instanceId: string, kind: 'cell' | 'image', portsLabel: string | undefined, revision: number | undefined, transport?: string): Promise<DockerInstance> {
    const ports = new Map<number, Endpoint>();
    let endpoint: Endpoint;
    let pid: number | null = null;
    if (kind === 'cell' && transport !== 'tcp') {
      endpoint = { path: join(this.runDir(instanceId), 'worker.sock'), ...await this.workerSecret(instanceId) };
      try { pid = (await container.inspect()).State.Pid || null; } catch { /* exited and gone already */ }
    } else {
      // image ports, or a TCP cell worker's published port
      const wanted = kind === 'cell' ? [WORKER_PORT] : (portsLabel ?? '').split(',').filter(Boolean).map(Number);
      // the mapping appears with the start; a container that already exited has none
      for (let attempt = 0; attempt < 20; attempt++) {
        let info: Docker.ContainerInspectInfo;
        try { info = await container.inspect(); } catch { break; }
        pid = info.State.Pid || null;
        const map = info.NetworkSettings?.Ports ?? {};
        for (const p of wanted) {
          const hostPort = map[`${p}/tcp`]?.find((b) => b.HostIp === '127.0.0.1' || b.HostIp === '0.0.0.0' || b.HostIp === '')?.HostPort;
          if (hostPort) ports.set(p, { host: '127.0.0.1', port: Number(hostPort) });
        }
        if (ports.size === wanted.length || !info.State.Running) break;
        await sleep(50);
      }
      const first = wanted[0];
      endpoint = (first !== undefined ? ports.get(first) : undefined) ?? { host: '127.0.0.1', port: 0 };
      if (kind === 'cell') { endpoint = { ...endpoint, ...await this.workerSecret(instanceId) }; ports.clear(); }
    }
    const tracked: Tracked = { instance: undefined as unknown as DockerInstance, archived: false };
    const exited = this.watch(container, nodeId, instanceId, kind, tracked);
    tracked.instance = new DockerInstance(nodeId, instanceId, endpoint, ports, pid, exited, container.id, revision);
    this.tracked.set(instanceId, tracked);
    return tracked.instance;
  }

  /** Resolves once the container has exited, its log is copied and it is removed. Never rejects. */
  private async watch(container: Docker.Container, nodeId: string, instanceId: string, kind: 'cell' | 'image', tracked: Tracked): Promise<ExitInfo> {
    let code: number | null = null;
    let error: string | undefined;
    try {
      const r = await container.wait() as { StatusCode?: number; Error?: { Message?: string } | null };
      code = typeof r.StatusCode === 'number' ? r.StatusCode : null;
      if (r.Error?.Message) error = r.Error.Message;
    } catch (err) {
      error = `lost track of the container: ${errorText(err)}`;
    }
    try {
      const info = await container.inspect();
      if (code === null && !info.State.Running) code = info.State.ExitCode;
      if (info.State.OOMKilled) error = 'OOM killed: the container went over its memory limit';
      else if (info.State.Error) error ??= info.State.Error;
    } catch { /* already removed */ }
    const signal = code !== null && code > 128 && code < 128 + 65 ? signalName(code - 128) : null;
    const how = signal ? `was killed by ${signal} (exit code ${code})` : `exited with code ${code}`;
    await this.archiveLogs(container, nodeId, instanceId, `container ${how}${error ? `: ${error}` : ''}`);
    tracked.archived = true; // from now on logs() reads the file only
    await this.removeContainer(container);
    if (kind === 'cell') await rm(this.runDir(instanceId), { recursive: true, force: true }).catch(() => {});
    if (this.tracked.get(instanceId) === tracked) this.tracked.delete(instanceId);
    return { code, signal, ...(error ? { error } : {}) };
  }

  /** The cell worker's secret, from its config file (read back when adopting a container); none in older ones. */
  private async workerSecret(instanceId: string): Promise<{ secret?: string }> {
    try {
      const c = JSON.parse(await readFile(join(this.runDir(instanceId), 'config.json'), 'utf8')) as { secret?: unknown };
      return typeof c.secret === 'string' ? { secret: c.secret } : {};
    } catch { return {}; }
  }

  /** Removes the container and resolves once it is gone (another removal may already be under way). */
  private async removeContainer(container: Docker.Container): Promise<void> {
    try {
      await container.remove({ force: true });
      return;
    } catch (err) {
      if (statusOf(err) === 404) return;
    }
    const deadline = Date.now() + REMOVE_WAIT_MS;
    while (Date.now() < deadline) {
      try {
        await container.inspect();
      } catch (err) {
        if (statusOf(err) === 404) return;
      }
      await sleep(100);
      await container.remove({ force: true }).catch(() => {});
    }
    console.error(`[berth] container ${container.id} is still there ${REMOVE_WAIT_MS / 1000}s after its removal`);
  }

  /** Appends the container's last log lines (and how it ended) to the instance's log file. */
  private async archiveLogs(container: Docker.Container, nodeId: string, instanceId: string, ending: string): Promise<void> {
    let text = '';
    try {
      text = demux(await container.logs({ stdout: true, stderr: true, follow: false, tail: ARCHIVE_LINES }));
    } catch { /* no log to keep */ }
    await keepLog(this.logPath(nodeId, instanceId), this.logLimits, text, ending);
  }

  private async containerLog(name: string, nodeId: string, lines: number): Promise<string> {
    try {
      const c = this.docker.getContainer(name);
      const info = await c.inspect();
      const labels = info.Config?.Labels ?? {};
      if (labels[LABEL.home] !== this.owner || labels[LABEL.node] !== nodeId) return '';
      return demux(await c.logs({ stdout: true, stderr: true, follow: false, tail: Math.max(1, lines) }));
    } catch {
      return '';
    }
  }

  /** By id when we know it: a container with the same name may already be the next run's. */
  private containerOf(instance: RuntimeInstance): Docker.Container {
    return this.docker.getContainer(instance instanceof DockerInstance ? instance.containerId : containerName(instance.instanceId));
  }

  private runDir(instanceId: string): string {
    return join(this.runRoot, instanceId);
  }

  private logPath(nodeId: string, instanceId: string): string {
    return join(this.logDir, nodeId, `${instanceId}.log`);
  }
}

export function containerName(instanceId: string): string {
  return `berth-${instanceId}`;
}

/**
 * The `serveraddress` for an image reference's registry: the host part of the reference
 * (`127.0.0.1:5000/echo` → `127.0.0.1:5000`), Docker Hub's index for short names.
 */
export function registryServerAddress(image: string): string {
  const parts = image.split('/');
  const first = parts[0] ?? '';
  if (parts.length > 1 && (first.includes('.') || first.includes(':') || first === 'localhost')) return first;
  return 'https://index.docker.io/v1/';
}

function signalName(n: number): string | null {
  for (const [name, value] of Object.entries(osConstants.signals)) if (value === n) return name;
  return null;
}

