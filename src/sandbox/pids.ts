// Host pids of processes inside a sandbox's pid namespace. A template forks instances inside
// its sandbox and knows their pids only as that namespace numbers them; Berth needs the host
// pid to move an instance into its own cgroup, signal it and end it. /proc/<pid>/status has
// both (NSpid: host … innermost) and the parent (PPid, as the host sees it).
import { readFileSync, readdirSync } from 'node:fs';

interface Status { ppid: number; nsPid: number }

function status(pid: number): Status | null {
  try {
    const text = readFileSync(`/proc/${pid}/status`, 'utf8');
    const ppid = /^PPid:\s+(\d+)/m.exec(text);
    const ns = /^NSpid:\s+([\d\s]+)$/m.exec(text);
    if (!ppid) return null;
    const chain = ns ? ns[1]!.trim().split(/\s+/).map(Number) : [pid];
    return { ppid: Number(ppid[1]), nsPid: chain[chain.length - 1]! };
  } catch { return null; }
}

function descends(pid: number, ancestor: number, depth = 6): boolean {
  for (let p = pid, i = 0; p > 1 && i <= depth; i++) {
    if (p === ancestor) return true;
    const s = status(p);
    if (!s) return false;
    p = s.ppid;
  }
  return false;
}

/**
 * The host pid of the process numbered `nsPid` in its innermost pid namespace whose parent is
 * `parent`, or (`ancestor`) that descends from it. Looks at `candidates` first (a sandbox's
 * cgroup: cheap), then at every process.
 */
export function hostPidOf(nsPid: number, opts: { parent?: number; ancestor?: number; candidates?: number[] }): number | null {
  const match = (pid: number): boolean => {
    const s = status(pid);
    if (!s || s.nsPid !== nsPid) return false;
    if (opts.parent !== undefined) return s.ppid === opts.parent;
    return opts.ancestor === undefined || descends(pid, opts.ancestor);
  };
  for (const pid of opts.candidates ?? []) if (match(pid)) return pid;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    if (match(Number(entry))) return Number(entry);
  }
  return null;
}
