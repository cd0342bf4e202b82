// The embedded runtime: each instance is a local Python process, run in the sandbox
// (src/sandbox/: bubblewrap namespaces, its own uid, a cgroup with the node's limits).
// Cell instances are forked from a template of their node revision when the workload asks
// (fork-template.ts), else (and when the checkpoint is not safe to fork) fresh processes.
// Needs no Docker. Workers listen on a Unix socket in their run directory, or (--worker-transport
// tcp) on 127.0.0.1 with a port they pick; every connection starts with the instance's secret.
import { linkSync, lstatSync, mkdirSync, rmSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { loadConfig } from '../core/config.js';
import { Sandbox, type Sandboxed } from '../sandbox/sandbox.js';
import type { CellWorkload, ExitInfo, InstanceSpec, LogQuery, Runtime, RuntimeInstance } from './runtime.js';
import { ForkTemplate, NotForkable } from './fork-template.js';
import { DEFAULT_LOG_LIMITS, InstanceLog, pruneInstanceLogs, rotatedPaths, tailLines, type LogLimits } from './log-file.js';
import { newInstanceSecret, portFromFile, type WorkerTransport } from './worker-endpoint.js';
import { CheckpointGrants } from './checkpoint-grants.js';
import type { Endpoint } from '../worker/protocol.js';

const SOCKET = 'worker.sock';
const PORT_FILE = 'worker.port';
/** The worker binds its socket before it loads the checkpoint: a few hundred ms; this is a generous bound. */
const PREPARE_SOCKET_MS = 60_000;

export class ProcessRuntime implements Runtime {
  readonly name = 'process';
  readonly supportsImages = false;
  private readonly logDir: string;
  private readonly sandbox: Sandbox;
  /** Live instances (sandboxes, or forked processes), by instance id. */
  private readonly running = new Map<string, { signal(sig: NodeJS.Signals): void; kill(): void }>();
  /** Host paths of forked instances to remove once they stop. */
  private readonly forkedPaths = new Map<string, string[]>();
  /** Templates by `${nodeId}/${revision}`. */
  private readonly templates = new Map<string, ForkTemplate>();
  /** Revisions whose instances start fresh, with why (a node warning). */
  private readonly forkOff = new Map<string, string>();
  /** Per node: the revisions whose templates stay while they have no instance. */
  private readonly keep = new Map<string, ReadonlySet<number>>();
  /** Logs being written, by instance id (closed when the instance's pipes end). */
  private readonly openLogs = new Map<string, InstanceLog>();
  private readonly transport: WorkerTransport;
  /** TCP workers of fresh instances fetch their checkpoint from Berth (issue 13); see useFetch. */
  readonly checkpointGrants = new CheckpointGrants();

  /** `sandbox`: shared with checkpoint runs; made from the environment (BERTH_SANDBOX…) when absent. */
  /** `transport`: default from the environment (BERTH_WORKER_TRANSPORT). */
  constructor(home: string, private readonly logLimits: LogLimits = DEFAULT_LOG_LIMITS, sandbox?: Sandbox, transport?: WorkerTransport) {
    this.logDir = join(home, 'logs');
    mkdirSync(this.logDir, { recursive: true });
    if (!sandbox) {
      const c = loadConfig({ home });
      sandbox = new Sandbox({ home: c.home, mode: c.sandbox, uidFirst: c.sandboxUidFirst, uidCount: c.sandboxUidCount, pidsLimit: c.pidsLimit });
    }
    this.sandbox = sandbox;
    this.transport = transport ?? loadConfig({ home }).workerTransport;
  }

  /**
   * TCP for this instance? Not for network:none: its sandbox has a network namespace of its own,
   * whose 127.0.0.1 Berth cannot reach, so it keeps the Unix socket (said in its log).
   */
  private useTcp(spec: InstanceSpec): boolean {
    return this.transport === 'tcp' && spec.network !== 'none';
  }

  check(): Promise<string | null> { return this.sandbox.check(); }

  /** Workers die with Berth (bwrap --die-with-parent, PR_SET_PDEATHSIG), so nothing is ever left to adopt. */
  async list(): Promise<RuntimeInstance[]> { return []; }

  unenforced(r: InstanceSpec['resources']): string[] {
    return this.sandbox.unenforced(r);
  }

  async start(spec: InstanceSpec): Promise<RuntimeInstance> {
    const w = spec.workload;
    if (w.kind !== 'cell') throw new Error('image nodes need a container runtime: start Berth with --runtime docker');
    if (w.fork) {
      const forked = await this.startForked(spec, w);
      if (forked) return forked;
    }
    const dir = join(this.sandbox.runDir, spec.instanceId);
    const logFile = this.logPath(spec.nodeId, spec.instanceId);
    mkdirSync(join(this.logDir, spec.nodeId), { recursive: true });
    // stdout/stderr go through pipes into a capped, rotated file (log-file.ts)
    const tcp = this.useTcp(spec);
    const fallback = this.transport === 'tcp' && !tcp ? ' (on a Unix socket, not TCP: network none)' : '';
    const log = new InstanceLog(logFile, this.logLimits, `starting instance ${spec.instanceId} with ${w.python}${this.sandbox.mode === 'none' ? ' (no sandbox)' : ''}${fallback}`);
    this.openLogs.set(spec.instanceId, log);
    void pruneInstanceLogs(join(this.logDir, spec.nodeId), new Set(this.openLogs.keys()));
    const secret = newInstanceSecret();
    // fetched: the blob is not bound into the sandbox; the worker downloads and verifies it
    const fetchUrl = tcp && w.checkpointSha256 ? this.checkpointGrants.url(spec.instanceId) : null;
    let sb: Sandboxed;
    try {
      sb = await this.sandbox.spawn({
        id: spec.instanceId, python: w.python, checkpoint: fetchUrl ? null : w.checkpointPath, dir,
        limits: { cores: spec.resources.cores, memoryGb: spec.resources.memoryGb },
        network: spec.network !== 'none',
        stdio: ['pipe', 'pipe', 'pipe'],
        args: (p) => ['-u', '-c', `import sys; sys.path.insert(0, ${JSON.stringify(p.pythonDir)}); import berth_worker; berth_worker.main()`],
      });
    } catch (err) {
      this.openLogs.delete(spec.instanceId);
      await log.close().catch(() => undefined);
      throw err;
    }
    // the worker's configuration goes on stdin: nothing of it (the secret least of all) in the
    // environment or the command line, which other users can read in /proc
    if (fetchUrl) {
      this.checkpointGrants.grant(spec.instanceId, secret, { path: w.checkpointPath, sha256: w.checkpointSha256! });
      void sb.exited.then(() => this.checkpointGrants.revoke(spec.instanceId, secret));
    }
    const config = {
      ...(tcp ? { listen: { tcp: { host: '127.0.0.1', port: 0 } }, portFile: join(sb.paths.dir, PORT_FILE) } : { socket: join(sb.paths.dir, SOCKET) }),
      secret, checkpoint: fetchUrl ? { url: fetchUrl, sha256: w.checkpointSha256!, token: secret } : sb.paths.checkpoint,
      code: w.code, requires: w.requires,
      inputs: w.inputs, outputs: w.outputs, maxResponseBytes: w.maxResponseBytes,
      // in a pid namespace the parent is bwrap's init, not Berth
      ...(this.sandbox.mode === 'none' ? { parentPid: process.pid } : {}),
    };
    sb.child.stdin?.on('error', () => { /* died early: reported through exited */ });
    sb.child.stdin?.end(JSON.stringify(config));
    this.running.set(spec.instanceId, sb);
    const limit = spec.resources.memoryGb;
    const exited = sb.exited.then((e): ExitInfo => {
      if (this.running.get(spec.instanceId) === sb) this.running.delete(spec.instanceId);
      if (e.oom) return { code: e.code, signal: e.signal, error: `out of memory (limit ${limit} GB)` };
      if (e.error) console.error(`[berth] instance ${spec.instanceId}: ${e.error}`);
      return { code: e.code, signal: e.signal, ...(e.error ? { error: e.error } : {}) };
    });
    log.attach([sb.child.stdout!, sb.child.stderr!], exited);
    void log.ended.then(() => { if (this.openLogs.get(spec.instanceId) === log) this.openLogs.delete(spec.instanceId); });
    let endpoint: Endpoint;
    if (tcp) endpoint = { host: '127.0.0.1', port: await this.reportedPort(dir, spec.instanceId, sb), secret };
    else endpoint = { path: this.sandbox.mode === 'none' ? join(dir, SOCKET) : await this.pinSocket(dir, spec.instanceId, sb), secret };
    return { nodeId: spec.nodeId, instanceId: spec.instanceId, revision: spec.revision, endpoint, ports: new Map(), pid: sb.child.pid ?? null, exited };
  }

  /**
   * A forked instance, or null when its revision cannot fork (the reason becomes a node
   * warning and the caller starts a fresh process).
   */
  private async startForked(spec: InstanceSpec, w: CellWorkload): Promise<RuntimeInstance | null> {
    const key = `${spec.nodeId}/${spec.revision}`;
    if (this.forkOff.has(key)) return null;
    let template = this.templates.get(key);
    if (!template || template.state === 'exited' || template.state === 'stopped') {
      const t = new ForkTemplate(this.sandbox, {
        nodeId: spec.nodeId, revision: spec.revision, workload: w,
        resources: { cores: spec.resources.cores, memoryGb: spec.resources.memoryGb }, network: spec.network !== 'none',
      }, (id, sb) => {
        // the template's own output (what the restore printed) goes to a log of its own
        mkdirSync(join(this.logDir, spec.nodeId), { recursive: true });
        const log = new InstanceLog(this.logPath(spec.nodeId, id), this.logLimits, `starting template ${id} for revision ${spec.revision} with ${w.python}`);
        this.openLogs.set(id, log);
        log.attach([sb.child.stdout!, sb.child.stderr!], sb.exited);
        void log.ended.then(() => { if (this.openLogs.get(id) === log) this.openLogs.delete(id); });
      });
      t.onChildEnded = () => this.retireIdle(spec.nodeId);
      this.templates.set(key, t);
      template = t;
    }
    try {
      await template.ready;
    } catch (err) {
      if (!(err instanceof NotForkable)) throw err;
      if (this.templates.get(key) === template) this.templates.delete(key);
      this.forkOff.set(key, err.message);
      console.error(`[berth] node ${spec.nodeId} revision ${spec.revision}: instances start as fresh processes: ${err.message}`);
      void template.stop();
      return null;
    }
    const logFile = this.logPath(spec.nodeId, spec.instanceId);
    mkdirSync(join(this.logDir, spec.nodeId), { recursive: true });
    const log = new InstanceLog(logFile, this.logLimits, `starting instance ${spec.instanceId}: forked from template ${template.id} (revision ${spec.revision}, restored in ${template.restoreSeconds} s)`);
    this.openLogs.set(spec.instanceId, log);
    void pruneInstanceLogs(join(this.logDir, spec.nodeId), new Set(this.openLogs.keys()));
    let f;
    try {
      f = await template.fork(spec.instanceId, { cores: spec.resources.cores, memoryGb: spec.resources.memoryGb }, { secret: newInstanceSecret(), tcp: this.useTcp(spec) });
    } catch (err) {
      this.openLogs.delete(spec.instanceId);
      await log.close().catch(() => undefined);
      throw err;
    }
    this.running.set(spec.instanceId, f);
    this.forkedPaths.set(spec.instanceId, f.paths);
    const limit = spec.resources.memoryGb;
    const exited = f.exited.then((e): ExitInfo => {
      if (this.running.get(spec.instanceId) === f) this.running.delete(spec.instanceId);
      if (e.oom) return { code: e.code, signal: e.signal, error: `out of memory (limit ${limit} GB)` };
      return { code: e.code, signal: e.signal, ...(e.error ? { error: e.error } : {}) };
    });
    log.attach([f.output, f.errors], exited);
    void log.ended.then(() => { if (this.openLogs.get(spec.instanceId) === log) this.openLogs.delete(spec.instanceId); });
    // a child that keeps the log connection open after it is gone must not hold the log forever
    void exited.then(() => setTimeout(() => { f.output.destroy(); f.errors.destroy(); }, 2000).unref());
    return { nodeId: spec.nodeId, instanceId: spec.instanceId, revision: spec.revision, endpoint: f.endpoint, ports: new Map(), pid: f.hostPid, exited };
  }

  keepTemplates(nodeId: string, revisions: readonly number[]): void {
    const prev = this.keep.get(nodeId);
    if (prev && prev.size === revisions.length && revisions.every((r) => prev.has(r))) return;
    this.keep.set(nodeId, new Set(revisions));
    for (const key of [...this.forkOff.keys()]) {
      // a revision no longer wanted may be tried again (a rollback to it)
      if (key.startsWith(nodeId + '/') && !revisions.includes(Number(key.slice(nodeId.length + 1)))) this.forkOff.delete(key);
    }
    this.retireIdle(nodeId);
  }

  /** Stops the node's templates that are not kept and have no instance left. */
  private retireIdle(nodeId: string): void {
    const keep = this.keep.get(nodeId) ?? new Set<number>();
    for (const [key, t] of this.templates) {
      if (!key.startsWith(nodeId + '/') || keep.has(Number(key.slice(nodeId.length + 1))) || t.liveChildren > 0) continue;
      this.templates.delete(key);
      void t.stop();
    }
  }

  nodeWarnings(nodeId: string): string[] {
    const out: string[] = [];
    for (const [key, why] of this.forkOff) {
      if (key.startsWith(nodeId + '/')) out.push(`instances of revision ${key.slice(nodeId.length + 1)} start as fresh processes, not forked from a template: ${why}`);
    }
    return out;
  }

  async close(): Promise<void> {
    const all = [...this.templates.values()];
    this.templates.clear();
    await Promise.all(all.map((t) => t.stop()));
  }

  /**
   * The sandbox can write its own directory, so it could put a symlink (to another tenant's
   * socket, or Docker's) where its socket was. Berth therefore connects through a hard link,
   * made once the worker has bound its socket, in a directory only Berth can write: it keeps
   * naming the worker's socket whatever the sandbox does later.
   */
  private async pinSocket(dir: string, instanceId: string, sb: Sandboxed): Promise<string> {
    const pinned = join(this.sandbox.runDir, `${instanceId}.sock`);
    rmSync(pinned, { force: true });
    let gone = false;
    void sb.exited.then(() => { gone = true; });
    const deadline = Date.now() + PREPARE_SOCKET_MS;
    while (!gone && Date.now() < deadline) {
      try {
        linkSync(join(dir, SOCKET), pinned); // link() does not follow a symlink: it would link the symlink itself
        const st = lstatSync(pinned);
        if (st.isSocket() && (sb.uid === null || st.uid === sb.uid)) return pinned;
        rmSync(pinned, { force: true });
        throw new Error(`instance ${instanceId}: ${SOCKET} is not the worker's socket`);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') { sb.kill(); throw err; }
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    if (!gone) { sb.kill(); throw new Error(`instance ${instanceId}: the worker did not create its socket within ${PREPARE_SOCKET_MS / 1000}s`); }
    return pinned; // it exited first: the controller sees that through exited
  }

  /** The TCP port the worker bound, once it has (it writes it to its port file). */
  private async reportedPort(dir: string, instanceId: string, sb: Sandboxed): Promise<number> {
    let gone = false;
    void sb.exited.then(() => { gone = true; });
    try {
      return await portFromFile(join(dir, PORT_FILE), sb.uid, () => gone, PREPARE_SOCKET_MS);
    } catch (err) {
      if (gone) return 0; // it exited first: the controller sees that through exited (port 0 refuses at once)
      sb.kill();
      throw new Error(`instance ${instanceId}: ${(err as Error).message}`);
    }
  }

  async stop(instance: RuntimeInstance, graceMs: number): Promise<void> {
    const sb = this.running.get(instance.instanceId);
    if (sb) sb.signal('SIGTERM'); // to the worker itself, so it exits cleanly
    const timer = setTimeout(() => this.kill(instance), graceMs);
    await instance.exited;
    clearTimeout(timer);
    rmSync(join(this.sandbox.runDir, instance.instanceId), { recursive: true, force: true });
    rmSync(join(this.sandbox.runDir, `${instance.instanceId}.sock`), { force: true });
    for (const p of this.forkedPaths.get(instance.instanceId) ?? []) rmSync(p, { recursive: true, force: true });
    this.forkedPaths.delete(instance.instanceId);
  }

  kill(instance: RuntimeInstance): void {
    const sb = this.running.get(instance.instanceId);
    if (sb) sb.kill();
    else if (instance.pid) { try { process.kill(-instance.pid, 'SIGKILL'); } catch { /* gone */ } }
  }

  /** The last lines, read backwards from the end across rotated files: O(lines), never the whole file. */
  async logs(nodeId: string, instanceId: string, lines: number, query: LogQuery = {}): Promise<string> {
    await this.openLogs.get(instanceId)?.flush(); // what the instance printed before this was asked is in the file
    return (await tailLines(rotatedPaths(this.logPath(nodeId, instanceId), this.logLimits.files), lines, query)).text;
  }

  follow(_nodeId: string, instanceId: string, onData: (chunk: Buffer) => void, onEnd: () => void): () => void {
    const log = this.openLogs.get(instanceId);
    if (!log) { queueMicrotask(onEnd); return () => undefined; }
    return log.follow(onData, onEnd);
  }

  async cleanup(nodeId: string): Promise<void> {
    this.keep.delete(nodeId);
    for (const key of [...this.forkOff.keys()]) if (key.startsWith(nodeId + '/')) this.forkOff.delete(key);
    const mineT = [...this.templates.entries()].filter(([key]) => key.startsWith(nodeId + '/'));
    for (const [key] of mineT) this.templates.delete(key);
    await Promise.all(mineT.map(([, t]) => t.stop()));
    const mine = [...this.openLogs.entries()].filter(([, l]) => l.path.startsWith(join(this.logDir, nodeId) + '/'));
    await Promise.all(mine.map(([id, l]) => { this.openLogs.delete(id); return l.close(); }));
    await rm(join(this.logDir, nodeId), { recursive: true, force: true });
  }

  private logPath(nodeId: string, instanceId: string): string {
    return join(this.logDir, nodeId, `${instanceId}.log`);
  }
}
