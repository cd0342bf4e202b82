// Resource limits through cgroups: one cgroup per sandbox (instance or checkpoint run) under
// a parent named by a hash of BERTH_HOME, so a later `berth up` finds what an earlier one left.
// cgroup v1 (memory, cpu, pids controllers, each mounted under /sys/fs/cgroup/<name>) and v2
// (one unified tree) are both handled; when neither is writable, limits are reported unenforced.
import { existsSync, mkdirSync, readFileSync, readdirSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const ROOT = '/sys/fs/cgroup';
const CFS_PERIOD_US = 100_000;

export interface Limits { cores: number; memoryGb: number; pids: number }

/** One sandbox's cgroup (a directory per v1 controller, or one v2 directory). */
export class Cgroup {
  constructor(readonly version: 1 | 2, readonly dirs: { memory: string; cpu: string; pids: string }, readonly limits: Limits) {}

  /** Files to write a pid into so that it (and everything it starts) is inside. */
  procsFiles(): string[] {
    return [...new Set(Object.values(this.dirs))].map((d) => join(d, 'cgroup.procs'));
  }

  /** Host pids of every process inside. */
  pids(): number[] {
    try {
      return readFileSync(join(this.dirs.pids, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
    } catch { return []; }
  }

  /** Whether the kernel's OOM killer ended a process in here. */
  oomKilled(): boolean {
    try {
      if (this.version === 2) return /^oom_kill [1-9]/m.test(readFileSync(join(this.dirs.memory, 'memory.events'), 'utf8'));
      const text = readFileSync(join(this.dirs.memory, 'memory.oom_control'), 'utf8');
      const m = /^oom_kill (\d+)/m.exec(text);
      if (m) return Number(m[1]) > 0;
      // kernels before 4.13 have no oom_kill counter: the limit was hit and the process is gone
      return Number(readFileSync(join(this.dirs.memory, 'memory.failcnt'), 'utf8')) > 0;
    } catch { return false; }
  }

  /** SIGKILLs everything inside until it is empty, then removes the directories. */
  async destroy(): Promise<void> {
    await killAll(this.version, this.dirs.pids);
    for (const d of new Set(Object.values(this.dirs))) await removeDir(d);
  }
}

/** Finds a writable cgroup tree and makes one parent per Berth home in it. */
export class CgroupTree {
  readonly version: 1 | 2 | null;
  /** Parent directory per controller (v1) or the single parent (v2). */
  readonly parents: { memory: string; cpu: string; pids: string } | null;
  /** Why limits are not enforced, when they are not. */
  readonly problem: string | null;

  constructor(name: string) {
    let version: 1 | 2 | null = null;
    let parents: CgroupTree['parents'] = null;
    let problem: string | null = null;
    try {
      if (existsSync(join(ROOT, 'cgroup.controllers'))) {
        version = 2;
        // the root cgroup may hold processes and enable controllers for its children
        const parent = join(ROOT, name);
        enable(ROOT);
        mkdirSync(parent, { recursive: true });
        enable(parent);
        parents = { memory: parent, cpu: parent, pids: parent };
      } else if (['memory', 'cpu', 'pids'].every((c) => existsSync(join(ROOT, c, 'cgroup.procs')))) {
        version = 1;
        const p = (c: string): string => join(ROOT, c, ownCgroup(c), name);
        parents = { memory: p('memory'), cpu: p('cpu'), pids: p('pids') };
        for (const d of Object.values(parents)) mkdirSync(d, { recursive: true });
      } else {
        problem = `no cgroup controllers for memory, cpu and pids under ${ROOT}`;
      }
    } catch (err) {
      problem = `cannot create cgroups under ${ROOT} (${(err as Error).message}); run Berth as root for memory, CPU and process limits`;
      parents = null;
    }
    this.version = parents ? version : null;
    this.parents = parents;
    this.problem = problem;
  }

  /** A new cgroup for one sandbox with its limits written; null when cgroups are unavailable. */
  create(id: string, limits: Limits): Cgroup | null {
    if (!this.parents || !this.version) return null;
    const dirs = { memory: join(this.parents.memory, id), cpu: join(this.parents.cpu, id), pids: join(this.parents.pids, id) };
    for (const d of new Set(Object.values(dirs))) mkdirSync(d, { recursive: true });
    const memory = Math.max(16 * 1024 * 1024, Math.round(limits.memoryGb * 1024 ** 3));
    const quota = Math.max(1000, Math.round(limits.cores * CFS_PERIOD_US));
    if (this.version === 2) {
      writeFileSync(join(dirs.memory, 'memory.max'), String(memory));
      tryWrite(join(dirs.memory, 'memory.swap.max'), '0');
      writeFileSync(join(dirs.cpu, 'cpu.max'), `${quota} ${CFS_PERIOD_US}`);
      writeFileSync(join(dirs.pids, 'pids.max'), String(limits.pids));
    } else {
      writeFileSync(join(dirs.memory, 'memory.limit_in_bytes'), String(memory));
      tryWrite(join(dirs.memory, 'memory.memsw.limit_in_bytes'), String(memory)); // no swap beyond it
      writeFileSync(join(dirs.cpu, 'cpu.cfs_period_us'), String(CFS_PERIOD_US));
      writeFileSync(join(dirs.cpu, 'cpu.cfs_quota_us'), String(quota));
      writeFileSync(join(dirs.pids, 'pids.max'), String(limits.pids));
    }
    return new Cgroup(this.version, dirs, limits);
  }

  /** Every process in any cgroup under the given parents is killed and the cgroups removed. */
  static async sweep(version: 1 | 2, parents: string[]): Promise<{ cgroups: number; processes: number }> {
    let cgroups = 0;
    let processes = 0;
    const byName = new Map<string, string[]>();
    for (const parent of parents) {
      let children: string[] = [];
      try { children = readdirSync(parent, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name); } catch { continue; }
      for (const c of children) byName.set(c, [...(byName.get(c) ?? []), join(parent, c)]);
    }
    for (const dirs of byName.values()) {
      cgroups++;
      // pids are the same in every v1 hierarchy; kill from each so none is missed
      for (const d of dirs) processes += await killAll(version, d);
      for (const d of dirs) await removeDir(d);
    }
    return { cgroups, processes };
  }
}

/** The calling process's own cgroup path in a v1 controller's hierarchy ("/" at the top). */
function ownCgroup(controller: string): string {
  for (const line of readFileSync('/proc/self/cgroup', 'utf8').split('\n')) {
    const [, ctrls, path] = line.split(':');
    if (ctrls?.split(',').includes(controller)) return path ?? '/';
  }
  return '/';
}

function enable(dir: string): void {
  const available = readFileSync(join(dir, 'cgroup.controllers'), 'utf8').split(/\s+/);
  const want = ['memory', 'cpu', 'pids'].filter((c) => available.includes(c));
  if (want.length < 3) throw new Error(`cgroup v2 controllers missing in ${dir}: need memory, cpu, pids; have ${available.join(' ')}`);
  writeFileSync(join(dir, 'cgroup.subtree_control'), want.map((c) => '+' + c).join(' '));
}

function tryWrite(file: string, value: string): void {
  try { writeFileSync(file, value); } catch { /* optional (no swap accounting) */ }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** SIGKILLs every process in the cgroup until none is left (a fork bomb is bounded by pids.max). */
async function killAll(version: 1 | 2, dir: string): Promise<number> {
  const procs = join(dir, 'cgroup.procs');
  let killed = 0;
  if (version === 2 && existsSync(join(dir, 'cgroup.kill'))) tryWrite(join(dir, 'cgroup.kill'), '1');
  for (let i = 0; i < 200; i++) {
    let pids: number[];
    try { pids = readFileSync(procs, 'utf8').split('\n').filter(Boolean).map(Number); } catch { return killed; }
    if (pids.length === 0) return killed;
    for (const pid of pids) { try { process.kill(pid, 'SIGKILL'); killed++; } catch { /* gone */ } }
    await sleep(i < 10 ? 5 : 25);
  }
  return killed;
}

async function removeDir(dir: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    try { rmdirSync(dir); return; } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      if (code !== 'EBUSY') throw err;
    }
    await sleep(20); // exiting processes leave the cgroup a moment after SIGKILL
  }
}
