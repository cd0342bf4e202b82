// Forked instances (issue 10): for each node revision a template process restores the
// checkpoint once, in the same sandbox and with the same limits as an instance, then forks one
// instance per request (copy-on-write: instances share the restored state's pages until they
// write them), so a new instance is ready in milliseconds whatever the checkpoint's size.
// Berth gives each forked instance what a fresh one has: its own cgroup and limits (moved there
// before it runs anything), its own process group (recorded for cleanup after a crash), its own
// socket (pinned by a hard link, as a fresh worker's) and its own log (the fork connection
// becomes its stdout and stderr). The template is the instances' parent: it reports their exits,
// and they die with it. Each fork request carries the instance's own secret and, with TCP
// workers, asks the child to listen on 127.0.0.1 (it answers the port it bound).
// Wire protocol: python/PROTOCOL.md ("Template mode").
import { connect, type Socket } from 'node:net';
import { linkSync, lstatSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { newId } from '../core/ids.js';
import { INSIDE } from '../sandbox/bwrap.js';
import type { Cgroup } from '../sandbox/cgroups.js';
import { hostPidOf } from '../sandbox/pids.js';
import type { Sandbox, SandboxExit, Sandboxed } from '../sandbox/sandbox.js';
import type { CellWorkload } from './runtime.js';
import type { Endpoint } from '../worker/protocol.js';
import { listenerUid } from './worker-endpoint.js';

/** Why a template cannot fork: its revision's instances start as fresh processes (a node warning says why). */
export class NotForkable extends Error {}

const CONTROL = 'control.sock';
const SOCKET = 'worker.sock';
/** One step of a fork (the template answers, the child binds its socket): milliseconds normally. */
const HANDSHAKE_MS = 15_000;
/** Restoring the checkpoint in the template: as long as a fresh instance may take to prepare. */
const PREPARE_MS = 10 * 60_000;
/** Longest protocol line accepted from a template. */
const MAX_LINE = 64 * 1024;

export interface TemplateSpec {
  nodeId: string;
  revision: number;
  workload: CellWorkload;
  resources: { cores: number; memoryGb: number };
  network: boolean;
}

export interface ForkedInstance {
  hostPid: number;
  /** Where Berth connects to it (a socket pinned as a fresh worker's, or 127.0.0.1:port), with its secret. */
  endpoint: Endpoint;
  /** Its stdout and its stderr (two streams, as a fresh worker's pipes: lines of one never break into the other's). */
  output: Socket;
  errors: Socket;
  exited: Promise<SandboxExit>;
  signal(sig: NodeJS.Signals): void;
  kill(): void;
  /** Host paths to remove once it has stopped. */
  paths: string[];
}

/** JSON lines from a socket, until `detach` hands the rest of the stream to someone else. */
class Lines {
  private buf: Buffer = Buffer.alloc(0);
  private waiter: { resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void } | null = null;
  private ended: Error | null = null;
  private listener: ((v: Record<string, unknown>) => void) | null = null;
  private readonly onData = (d: Buffer): void => {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    // the template runs tenant code: a "line" that never ends must not grow Berth's memory
    if (this.buf.length > MAX_LINE && this.buf.indexOf(10) < 0) { this.ended ??= new Error('protocol line too long'); this.buf = Buffer.alloc(0); this.sock.destroy(); }
    this.pump();
  };
  private readonly onEnd = (): void => { this.ended ??= new Error('the connection closed'); this.pump(); };
  private readonly onError = (e: Error): void => { this.ended ??= e; this.pump(); };

  constructor(private readonly sock: Socket) {
    sock.on('data', this.onData);
    sock.on('end', this.onEnd);
    sock.on('close', this.onEnd);
    sock.on('error', this.onError);
  }

  next(timeoutMs: number): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.waiter = null; reject(new Error(`no answer within ${timeoutMs / 1000}s`)); }, timeoutMs);
      this.waiter = { resolve: (v) => { clearTimeout(timer); resolve(v); }, reject: (e) => { clearTimeout(timer); reject(e); } };
      this.pump();
    });
  }

  /** Every further line goes to `fn`. */
  each(fn: (v: Record<string, unknown>) => void): void { this.listener = fn; this.pump(); }

  /** Stops reading: returns what was read past the last line (the start of the log). */
  detach(): Buffer {
    this.sock.off('data', this.onData);
    this.sock.off('end', this.onEnd);
    this.sock.off('close', this.onEnd);
    this.sock.off('error', this.onError);
    this.sock.on('error', () => { /* the log's reader sees the end */ });
    this.sock.pause();
    return this.buf;
  }

  private pump(): void {
    for (;;) {
      const target = this.waiter ?? this.listener;
      if (!target) return;
      const i = this.buf.indexOf(10);
      if (i < 0) {
        if (this.ended && this.waiter) { const w = this.waiter; this.waiter = null; w.reject(this.ended); }
        return;
      }
      const line = this.buf.subarray(0, i).toString('utf8');
      this.buf = this.buf.subarray(i + 1);
      let value: Record<string, unknown>;
      try { value = JSON.parse(line) as Record<string, unknown>; } catch { value = { error: `not a protocol line: ${line.slice(0, 200)}` }; }
      if (this.waiter) { const w = this.waiter; this.waiter = null; w.resolve(value); } else this.listener!(value);
    }
  }
}

function open(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    s.once('connect', () => { s.off('error', reject); resolve(s); });
    s.once('error', reject);
  });
}

/**
 * Berth connects through a hard link to a socket the sandbox bound, made in a directory only
 * Berth writes, once it is a socket owned by the sandbox's uid: a later symlink swap inside the
 * sandbox cannot redirect Berth (docs/sandbox.md).
 */
async function pinSocket(src: string, dst: string, uid: number | null, gone: () => boolean, timeoutMs: number): Promise<string> {
  rmSync(dst, { force: true });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      linkSync(src, dst); // link() does not follow a symlink
      const st = lstatSync(dst);
      if (st.isSocket() && (uid === null || st.uid === uid)) return dst;
      rmSync(dst, { force: true });
      throw new Error(`${src} is not the sandbox's socket`);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    if (gone()) throw new Error('the process exited before it bound its socket');
    if (Date.now() > deadline) throw new Error(`no socket at ${src} within ${timeoutMs / 1000}s`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Waits until a socket exists at `path`. */
async function socketAt(path: string, gone: () => boolean, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try { if (lstatSync(path).isSocket()) return path; } catch { /* not yet */ }
    if (gone()) throw new Error('the process exited before it bound its socket');
    if (Date.now() > deadline) throw new Error(`no socket at ${path} within ${timeoutMs / 1000}s`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** One forked instance as the template sees it (by its pid in the sandbox) and as Berth does. */
class Child {
  hostPid = 0;
  cgroup: Cgroup | null = null;
  done = false;
  readonly exited: Promise<SandboxExit>;
  private resolveExit!: (e: SandboxExit) => void;

  constructor(readonly nsPid: number) {
    this.exited = new Promise((r) => { this.resolveExit = r; });
  }

  signal(sig: NodeJS.Signals): void {
    if (this.hostPid && !this.done) { try { process.kill(this.hostPid, sig); } catch { /* gone */ } }
  }

  kill(): void {
    if (this.hostPid && !this.done) {
      try { process.kill(this.hostPid, 'SIGKILL'); } catch { /* gone */ }
      try { process.kill(-this.hostPid, 'SIGKILL'); } catch { /* no group */ }
    }
    for (const p of this.cgroup?.pids() ?? []) { try { process.kill(p, 'SIGKILL'); } catch { /* gone */ } }
  }

  /** It exited (the template reaped it) or its template did: end what it left, then report. */
  async end(code: number | null, signal: string | null, error?: string): Promise<void> {
    if (this.done) return;
    const oom = this.cgroup?.oomKilled() ?? false;
    // the template has reaped it: its pid may be reused, so only its group and cgroup are ended
    if (this.hostPid) { try { process.kill(-this.hostPid, 'SIGKILL'); } catch { /* no group left */ } }
    this.done = true;
    await this.cgroup?.destroy().catch(() => undefined);
    this.resolveExit({ code, signal, oom, ...(error ? { error } : {}) });
  }
}

export class ForkTemplate {
  readonly id = 'tpl' + newId().slice(3);
  state: 'starting' | 'ready' | 'stopped' | 'exited' = 'starting';
  /** Resolves once it can fork; rejects with NotForkable (start fresh processes) or a plain Error (stopped). */
  readonly ready: Promise<void>;
  /** Seconds the restore took (once ready). */
  restoreSeconds = 0;
  /** Called when one of its instances has ended (the runtime may retire it). */
  onChildEnded: () => void = () => undefined;
  private sb: Sandboxed | null = null;
  private spawned: Promise<Sandboxed | null>;
  private hostPid = 0;
  private watch: Socket | null = null;
  private controlPath = '';
  private stopping = false;
  private readonly children = new Map<number, Child>();
  /** Exits reported before the fork's own answer was read. */
  private readonly early = new Map<number, { code: number | null; signal: string | null }>();
  private readonly dir: string;

  constructor(private readonly sandbox: Sandbox, private readonly spec: TemplateSpec, attachLog: (id: string, sb: Sandboxed) => void) {
    this.dir = join(sandbox.runDir, this.id);
    const w = spec.workload;
    this.spawned = sandbox.spawn({
      id: this.id, python: w.python, checkpoint: w.checkpointPath, dir: this.dir,
      limits: spec.resources, network: spec.network, stdio: ['pipe', 'pipe', 'pipe'],
      // large allocations (the restored state's buffers) on transparent huge pages: fork then
      // copies one page-table entry per 2 MB instead of 512 (1 GB of numpy state: ~5 ms instead
      // of ~150 ms here), and the restore itself is faster. A write in an instance still copies 4 kB.
      env: { GLIBC_TUNABLES: 'glibc.malloc.hugetlb=1' },
      args: (p) => ['-u', '-c', `import sys; sys.path.insert(0, ${JSON.stringify(p.pythonDir)}); import berth_worker; berth_worker.main()`],
    }).then((sb) => {
      this.sb = sb;
      attachLog(this.id, sb);
      void sb.exited.then((e) => this.onExit(e));
      return sb;
    });
    this.ready = this.prepare();
    this.ready.catch(() => undefined);
  }

  get liveChildren(): number { return this.children.size; }

  private async prepare(): Promise<void> {
    const sb = await this.spawned;
    if (!sb) throw new Error('template not started');
    const w = this.spec.workload;
    const none = this.sandbox.mode === 'none';
    const config = {
      mode: 'template', socket: join(sb.paths.dir, CONTROL), checkpoint: sb.paths.checkpoint, code: w.code, requires: w.requires,
      inputs: w.inputs, outputs: w.outputs, maxResponseBytes: w.maxResponseBytes, ...(none ? { parentPid: process.pid } : {}),
    };
    sb.child.stdin?.on('error', () => { /* died early: seen through exited */ });
    sb.child.stdin?.end(JSON.stringify(config));
    let exit: SandboxExit | null = null;
    void sb.exited.then((e) => { exit = e; });
    const died = async (): Promise<never> => {
      const e = await sb.exited;
      if (this.stopping) throw new Error(`template ${this.id} stopped`);
      const how = e.oom ? `out of memory (limit ${this.spec.resources.memoryGb} GB)` : e.error ?? (e.signal ? `killed by ${e.signal}` : `exit code ${e.code}`);
      throw new NotForkable(`the template process ended before it was ready (${how})`);
    };
    try {
      // unsandboxed, the template is Berth's own user: nothing to pin against
      this.controlPath = none ? await socketAt(join(this.dir, CONTROL), () => exit !== null, 60_000)
        : await pinSocket(join(this.dir, CONTROL), join(this.sandbox.runDir, `${this.id}.sock`), sb.uid, () => exit !== null, 60_000);
      this.watch = await open(this.controlPath);
    } catch (err) {
      if (exit || this.stopping) return died();
      throw new NotForkable(`the template did not open its control socket: ${(err as Error).message}`);
    }
    const lines = new Lines(this.watch);
    this.watch.write('{"op":"watch"}\n');
    let state: Record<string, unknown>;
    try {
      state = await lines.next(PREPARE_MS);
    } catch (err) {
      if (exit || this.stopping || /closed/.test((err as Error).message)) return died();
      this.kill();
      throw new NotForkable(`the template did not restore the checkpoint within ${PREPARE_MS / 60_000} minutes`);
    }
    if (state.state === 'unsafe') throw new NotForkable(`the checkpoint is not safe to fork: ${(state.reasons as string[]).join('; ')}`);
    if (state.state !== 'ready') throw new NotForkable(`the template could not restore the checkpoint: ${String(state.error ?? state.state)}`);
    const pid = none ? sb.child.pid! : hostPidOf(Number(state.pid), { ancestor: sb.child.pid!, candidates: sb.pids() });
    if (!pid) throw new NotForkable('cannot find the template process on the host');
    this.hostPid = pid;
    this.restoreSeconds = Number(state.seconds) || 0;
    lines.each((event) => {
      if (typeof event.exit !== 'number') return;
      const ev = { code: typeof event.code === 'number' ? event.code : null, signal: typeof event.signal === 'string' ? event.signal : null };
      const child = this.children.get(event.exit);
      if (child) this.childEnded(child, ev.code, ev.signal);
      else this.early.set(event.exit, ev);
    });
    if (this.stopping) throw new Error(`template ${this.id} stopped`);
    this.state = 'ready';
  }

  private childEnded(child: Child, code: number | null, signal: string | null, error?: string): void {
    if (this.children.get(child.nsPid) === child) this.children.delete(child.nsPid);
    void child.end(code, signal, error).then(() => this.onChildEnded());
  }

  /** A new instance: forked, in its own cgroup with `limits`, listening on its own socket. */
  async fork(instanceId: string, limits: { cores: number; memoryGb: number }, how: { secret: string; tcp: boolean }): Promise<ForkedInstance> {
    await this.ready;
    if (this.state !== 'ready') throw new Error(`template ${this.id} is ${this.state}`);
    const none = this.sandbox.mode === 'none';
    // unsandboxed, the child binds where a fresh worker would; sandboxed, inside the template's directory
    const hostDir = none ? join(this.sandbox.runDir, instanceId) : join(this.dir, instanceId);
    const inside = none ? join(hostDir, SOCKET) : `${INSIDE.dir}/${instanceId}/${SOCKET}`;
    // stderr first: the template holds that connection for this fork
    const [errConn, conn] = await Promise.all([open(this.controlPath), open(this.controlPath)]);
    const errLines = new Lines(errConn);
    const lines = new Lines(conn);
    let child: Child | null = null;
    let cgroup: Cgroup | null = null;
    let cgroupError: Error | null = null;
    try {
      errConn.write('{"op":"hold"}\n');
      const held = await errLines.next(HANDSHAKE_MS);
      if (typeof held.held !== 'number') throw new Error(`the template did not hold a connection: ${String(held.error ?? JSON.stringify(held))}`);
      const where = how.tcp ? { tcp: { host: '127.0.0.1', port: 0 } } : { socket: inside };
      conn.write(JSON.stringify({ op: 'fork', ...where, secret: how.secret, stderr: held.held }) + '\n');
      // its cgroup is made while the template forks
      try { cgroup = this.sandbox.forkedCgroup(instanceId, limits); } catch (err) { cgroupError = err as Error; }
      const reply = await lines.next(HANDSHAKE_MS);
      if (typeof reply.pid !== 'number') throw new Error(`the template did not fork: ${String(reply.error ?? JSON.stringify(reply))}`);
      child = new Child(reply.pid);
      child.cgroup = cgroup;
      cgroup = null;
      this.children.set(reply.pid, child);
      if (cgroupError) throw cgroupError;
      const hostPid = none ? reply.pid : hostPidOf(reply.pid, { parent: this.hostPid, candidates: this.sb!.pids() });
      if (!hostPid) throw new Error(`cannot find forked process ${reply.pid} on the host`);
      child.hostPid = hostPid;
      const early = this.early.get(reply.pid);
      if (early) { this.early.delete(reply.pid); throw new Error(`the forked process ended at once (${early.signal ?? `exit code ${early.code}`})`); }
      // it sets itself up (Berth's code: re-seed, bind its socket) while it is moved into its
      // cgroup; no call, so none of the node's code, reaches it before both are done
      const moved = this.sandbox.enterForked(child.cgroup, hostPid);
      conn.write('go\n');
      const [, bound] = await Promise.all([moved, lines.next(HANDSHAKE_MS)]);
      if (bound.bound !== true) throw new Error(`the forked instance did not start: ${String(bound.error ?? JSON.stringify(bound))}`);
      const c = child;
      let endpoint: Endpoint;
      if (how.tcp) {
        const port = Number(bound.port);
        if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`the forked instance reported no port: ${JSON.stringify(bound)}`);
        // the answer comes from the template's sandbox: trusted once the port is a listener of its uid
        const owner = this.sb!.uid === null ? null : await listenerUid(port);
        if (owner !== this.sb!.uid) throw new Error(`port ${port} the forked instance reported is not its own listener`);
        endpoint = { host: '127.0.0.1', port, secret: how.secret };
      } else {
        endpoint = { path: none ? inside : await pinSocket(join(hostDir, SOCKET), join(this.sandbox.runDir, `${instanceId}.sock`), this.sb!.uid, () => c.done, HANDSHAKE_MS), secret: how.secret };
      }
      const rest = lines.detach();
      if (rest.length) conn.unshift(rest);
      const restErr = errLines.detach();
      if (restErr.length) errConn.unshift(restErr);
      return {
        hostPid, endpoint, output: conn, errors: errConn, exited: c.exited, paths: [hostDir],
        signal: (sig) => c.signal(sig),
        kill: () => c.kill(),
      };
    } catch (err) {
      if (child) {
        // it ends (the template reports it); its cgroup goes with it
        child.kill();
        if (this.children.get(child.nsPid) !== child) void child.end(null, 'SIGKILL');
      }
      void cgroup?.destroy().catch(() => undefined);
      conn.destroy();
      errConn.destroy();
      throw err;
    }
  }

  private kill(): void { this.sb?.kill(); }

  private onExit(e: SandboxExit): void {
    this.state = this.stopping ? 'stopped' : 'exited';
    this.watch?.destroy();
    const why = e.oom ? `its template ran out of memory (limit ${this.spec.resources.memoryGb} GB)` : 'its template process exited';
    // instances die with their template (PR_SET_PDEATHSIG); end what is left of them
    for (const c of [...this.children.values()]) this.childEnded(c, null, 'SIGKILL', why);
    rmSync(join(this.sandbox.runDir, `${this.id}.sock`), { force: true });
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** Stops it (its instances, if any are left, die with it); resolves once it is gone. */
  async stop(): Promise<void> {
    this.stopping = true;
    const sb = await this.spawned.catch(() => null);
    if (!sb) return;
    sb.signal('SIGTERM');
    const timer = setTimeout(() => sb.kill(), 2000);
    await sb.exited;
    clearTimeout(timer);
  }
}
