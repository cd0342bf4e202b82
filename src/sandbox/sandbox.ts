// Runs tenant code (cell instances and checkpoint runs) in a sandbox: bubblewrap namespaces
// that show only the Python installation, Berth's worker code, the sandbox's own checkpoint
// and its own private directory; an unprivileged uid of its own; a scrubbed environment; and a
// cgroup with memory, CPU and process-count limits. `none` runs the same commands unsandboxed.
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, chownSync, mkdirSync, readFileSync, readdirSync, rmSync, rmdirSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { PYTHON_DIR } from '../core/config.js';
import { BWRAP, INSIDE, bwrapArgs, checkBwrap } from './bwrap.js';
import { type Cgroup, CgroupTree } from './cgroups.js';
import { pythonEnv } from './python-env.js';
import { StartedRecord } from './leftovers.js';
import { UidPool } from './uids.js';

export type SandboxMode = 'bubblewrap' | 'none';
export const SANDBOX_MODES: readonly SandboxMode[] = ['bubblewrap', 'none'];

export interface SandboxConfig {
  home: string;
  mode: SandboxMode;
  /** First uid of the range sandboxes run as, and how many. */
  uidFirst: number;
  uidCount: number;
  /** Process (and thread) limit of one sandbox. */
  pidsLimit: number;
}

/** Paths as the sandboxed process sees them. */
export interface SandboxPaths { pythonDir: string; checkpoint: string | null; dir: string }

export interface SpawnRequest {
  /** Names the sandbox's cgroup; unique among live sandboxes (an instance or run id). */
  id: string;
  python: string;
  /** Interpreter arguments, given where things are inside. */
  args: (p: SandboxPaths) => string[];
  /** Bound read-only: the checkpoint this sandbox restores. */
  checkpoint: string | null;
  /** Host path of the sandbox's private writable directory; made here, owned by the sandbox's uid. */
  dir: string;
  limits: { cores: number; memoryGb: number };
  network: boolean;
  stdio: StdioOptions;
  /** Extra environment variables for the interpreter (a fork template's malloc tuning). */
  env?: Record<string, string>;
}

export interface SandboxExit { code: number | null; signal: string | null; oom: boolean; error?: string }

export interface Sandboxed {
  child: ChildProcess;
  paths: SandboxPaths;
  uid: number | null;
  /** Once the main process has exited and everything it started is gone. */
  exited: Promise<SandboxExit>;
  /** A signal for the tenant's processes themselves (a graceful SIGTERM reaches Python, not bwrap). */
  signal(sig: NodeJS.Signals): void;
  /** SIGKILL to everything the sandbox holds. */
  kill(): void;
  /** Host pids of every process in its cgroup (empty without cgroups). */
  pids(): number[];
}

// sockaddr_un.sun_path is 108 bytes; a deep home gets a short private directory instead.
const MAX_SOCKET_PATH = 100;

export class Sandbox {
  readonly mode: SandboxMode;
  /** Private directories of live sandboxes (worker sockets, run outputs), one per sandbox. */
  readonly runDir: string;
  readonly warnings: string[] = [];
  private readonly config: SandboxConfig;
  private readonly tree: CgroupTree | null;
  private readonly pool: UidPool;
  private readonly record: StartedRecord;
  private readonly previous: { version: 1 | 2; parents: string[] } | null;
  private readonly root = process.getuid?.() === 0;
  private checked: Promise<string | null> | null = null;
  private seq = 0;

  constructor(config: SandboxConfig) {
    this.config = config;
    this.mode = config.mode;
    const hash = createHash('sha256').update(config.home).digest('hex').slice(0, 12);
    // not <home>/run: the Docker runtime keeps adoptable containers' run directories there
    let runDir = join(config.home, 'sandboxes');
    if (runDir.length + 40 > MAX_SOCKET_PATH) runDir = join(tmpdir(), 'berth-' + hash);
    this.runDir = runDir;
    mkdirSync(runDir, { recursive: true, mode: 0o700 });
    this.pool = new UidPool(config.uidFirst, config.uidCount);
    this.record = new StartedRecord(join(config.home, 'sandbox'));
    this.previous = this.record.recordedCgroups();
    if (this.mode === 'bubblewrap') {
      this.tree = new CgroupTree('berth-' + hash);
      if (this.tree.parents) this.record.cgroupParents(this.tree.version!, [...new Set(Object.values(this.tree.parents))]);
      else this.warnings.push(`memory, CPU and process limits are not enforced: ${this.tree.problem}`);
      if (!this.root) this.warnings.push('Berth is not root: cells run in bubblewrap namespaces (they see none of BERTH_HOME) but as your own uid');
    } else {
      this.tree = null;
      this.warnings.push('SANDBOX OFF (--sandbox none): cells and checkpoint runs execute as Berth\'s own user and can read BERTH_HOME ' +
        '(admin token, key, database, every tenant\'s checkpoints); memory, CPU and process counts are not limited. Use only on a machine you alone use.');
    }
  }

  /** Whether the sandbox can work here; a message saying what to do when it cannot. */
  check(): Promise<string | null> {
    if (this.mode === 'none') return Promise.resolve(null);
    this.checked ??= checkBwrap();
    return this.checked;
  }

  /**
   * At `berth up`: ends everything an earlier run of this home left (cgroups it recorded,
   * process groups it started) and removes stale sockets and private directories.
   */
  async cleanLeftovers(): Promise<{ processes: number; cgroups: number }> {
    let processes = this.record.killRecordedGroups();
    let cgroups = 0;
    const sweeps = new Map<1 | 2, Set<string>>();
    if (this.previous) sweeps.set(this.previous.version, new Set(this.previous.parents));
    if (this.tree?.parents) {
      const set = sweeps.get(this.tree.version!) ?? new Set<string>();
      for (const p of Object.values(this.tree.parents)) set.add(p);
      sweeps.set(this.tree.version!, set);
    }
    for (const [version, parents] of sweeps) {
      const r = await CgroupTree.sweep(version, [...parents]);
      processes += r.processes;
      cgroups += r.cgroups;
      // parents of an earlier run that this one does not use
      for (const p of parents) if (!this.tree?.parents || !Object.values(this.tree.parents).includes(p)) { try { rmdirSync(p); } catch { /* in use or gone */ } }
    }
    for (const entry of readdirSync(this.runDir)) rmSync(join(this.runDir, entry), { recursive: true, force: true });
    return { processes, cgroups };
  }

  /** Limits the sandbox does not enforce for these resources, said plainly. */
  unenforced(r: { cores: number; memoryGb: number; gpus: number }): string[] {
    const out: string[] = [];
    if (this.mode === 'none') out.push(`the sandbox is off: CPU (${r.cores} cores), memory (${r.memoryGb} GB) and process count are not limited`);
    else if (!this.tree?.parents) out.push(`CPU (${r.cores} cores), memory (${r.memoryGb} GB) and process count are not limited: ${this.tree?.problem ?? 'no cgroups'}`);
    const cpus = availableParallelism();
    if (this.mode !== 'none' && this.tree?.parents && r.cores > cpus) out.push(`CPU capped at ${cpus} cores: this machine has ${cpus} (requested ${r.cores})`);
    if (r.gpus > 0) out.push(`GPUs cannot be given to instances of the process runtime (requested ${r.gpus}): the sandbox shows no GPU devices`);
    return out;
  }

  /** Removes this home's empty cgroup parents (at a clean stop). */
  close(): void {
    if (!this.tree?.parents) return;
    for (const p of new Set(Object.values(this.tree.parents))) { try { rmdirSync(p); } catch { /* still in use */ } }
  }

  /**
   * A process forked inside a live sandbox (an instance forked from its node's template) gets
   * a cgroup of its own with the instance's limits (pages it shares with the template stay
   * charged to the template's cgroup; what it writes is charged to its own). `forkedCgroup`
   * makes the cgroup (while the template forks), `enterForked` moves the process in and records
   * its process group so that the next start ends it after a crash. Null without cgroups.
   */
  forkedCgroup(id: string, limits: { cores: number; memoryGb: number }): Cgroup | null {
    return this.tree?.create(`${id}-${++this.seq}`, { ...limits, pids: this.config.pidsLimit }) ?? null;
  }

  async enterForked(cgroup: Cgroup | null, hostPid: number): Promise<void> {
    this.record.processGroup(hostPid);
    // each move waits for the kernel (an RCU grace period per hierarchy): all at once, not in turn
    await Promise.all((cgroup?.procsFiles() ?? []).map((f) => writeFile(f, String(hostPid))));
  }

  async spawn(req: SpawnRequest): Promise<Sandboxed> {
    return this.mode === 'none' ? this.spawnPlain(req) : this.spawnBwrap(req);
  }

  private async spawnBwrap(req: SpawnRequest): Promise<Sandboxed> {
    // Berth's own files are never bound; a directory of the home that is not Berth's (a
    // site-packages an admin keeps there, say) may be, if the interpreter uses it
    const home = this.config.home;
    const own = ['admin-token', 'secret.key', 'berth.db', 'berth.db-wal', 'berth.db-shm', 'checkpoints', 'logs', 'run', 'sandbox', 'sandboxes', 'server.json', 'keys', 'audit']
      .map((f) => join(home, f));
    const py = await pythonEnv(req.python, [...own, this.runDir]);
    const uid = this.root ? this.pool.take() : null;
    let cgroup: Cgroup | null = null;
    try {
      rmSync(req.dir, { recursive: true, force: true });
      mkdirSync(req.dir, { recursive: true, mode: 0o700 });
      if (uid !== null) chownSync(req.dir, uid, uid);
      chmodSync(req.dir, 0o700);
      // a fresh name each time: the cgroup of a previous run of this id may still be going away
      cgroup = this.tree?.create(`${req.id}-${++this.seq}`, { ...req.limits, pids: this.config.pidsLimit }) ?? null;
      const paths: SandboxPaths = { pythonDir: INSIDE.pythonDir, checkpoint: req.checkpoint ? INSIDE.checkpoint : null, dir: INSIDE.dir };
      const args = bwrapArgs({
        uid, pythonDirs: py.dirs, pythonDir: PYTHON_DIR, checkpoint: req.checkpoint, dir: req.dir, network: req.network,
        env: {
          PATH: `${dirname(py.executable)}:/usr/local/bin:/usr/bin:/bin`, HOME: '/tmp', TMPDIR: '/tmp', LANG: 'C.UTF-8',
          PYTHONUNBUFFERED: '1', PYTHONDONTWRITEBYTECODE: '1', ...py.env, ...req.env,
        },
        command: [py.executable, ...req.args(paths)],
      });
      // a shell puts itself into the cgroup, then becomes bwrap: nothing runs outside the limits
      const child = cgroup
        ? spawn('/bin/sh', ['-c', 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"', 'sh', ...cgroup.procsFiles(), '--', BWRAP, ...args],
          { stdio: req.stdio, env: { PATH: '/usr/bin:/bin' }, detached: true })
        : spawn(BWRAP, args, { stdio: req.stdio, env: { PATH: '/usr/bin:/bin' }, detached: true });
      return this.track(child, paths, uid, cgroup);
    } catch (err) {
      if (uid !== null) this.pool.give(uid);
      await cgroup?.destroy().catch(() => undefined);
      throw err;
    }
  }

  private async spawnPlain(req: SpawnRequest): Promise<Sandboxed> {
    rmSync(req.dir, { recursive: true, force: true });
    mkdirSync(req.dir, { recursive: true, mode: 0o700 });
    const env: Record<string, string> = { PYTHONUNBUFFERED: '1', PYTHONDONTWRITEBYTECODE: '1' };
    for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('BERTH_')) env[k] = v;
    Object.assign(env, req.env);
    const paths: SandboxPaths = { pythonDir: PYTHON_DIR, checkpoint: req.checkpoint, dir: req.dir };
    const child = spawn(req.python, req.args(paths), { stdio: req.stdio, env, detached: true });
    return this.track(child, paths, null, null);
  }

  private track(child: ChildProcess, paths: SandboxPaths, uid: number | null, cgroup: Cgroup | null): Sandboxed {
    if (child.pid) this.record.processGroup(child.pid);
    const pid = child.pid ?? null;
    const killGroup = (sig: NodeJS.Signals): void => { if (pid) { try { process.kill(-pid, sig); } catch { /* gone */ } } };
    const exited = new Promise<SandboxExit>((resolve) => {
      let spawnError: string | undefined;
      child.once('error', (err) => {
        spawnError = `cannot start ${err.message}`;
        if (!pid) finish(null, null);
      });
      const finish = (code: number | null, signal: string | null): void => {
        const oom = cgroup?.oomKilled() ?? false;
        killGroup('SIGKILL'); // whatever the main process left behind
        const done = (): void => {
          if (uid !== null) this.pool.give(uid);
          resolve({ code: code === 125 && cgroup ? null : code, signal, oom, ...(spawnError ? { error: spawnError } : code === 125 && cgroup ? { error: 'cannot enter its cgroup' } : {}) });
        };
        if (cgroup) cgroup.destroy().then(done, (err) => { console.error(`[berth] sandbox cgroup: ${(err as Error).message}`); done(); });
        else done();
      };
      child.once('exit', (code, signal) => finish(code, signal));
    });
    return {
      child, paths, uid, exited,
      signal: (sig) => {
        if (!cgroup || uid === null) { if (this.mode === 'none') killGroup(sig); else if (pid) { try { process.kill(pid, sig); } catch { /* gone */ } } return; }
        // the tenant's processes are the ones running as its uid; bwrap itself runs as root
        for (const p of cgroup.pids()) if (uidOf(p) === uid) { try { process.kill(p, sig); } catch { /* gone */ } }
      },
      kill: () => {
        if (pid) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
        killGroup('SIGKILL');
        for (const p of cgroup?.pids() ?? []) { try { process.kill(p, 'SIGKILL'); } catch { /* gone */ } }
      },
      pids: () => cgroup?.pids() ?? [],
    };
  }
}

function uidOf(pid: number): number | null {
  try {
    const m = /^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch { return null; }
}
