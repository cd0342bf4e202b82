// What an earlier `berth up` started and may have left behind after `kill -9`: its cgroup
// parents and process groups, recorded under BERTH_HOME/sandbox so the next start ends them.
import { appendFileSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export class StartedRecord {
  private readonly pgidFile: string;
  private readonly cgroupFile: string;

  constructor(dir: string) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.pgidFile = join(dir, 'process-groups');
    this.cgroupFile = join(dir, 'cgroups');
  }

  /** Remembers a process group leader (pid + its start time, so a reused pid is not taken for it). */
  processGroup(pid: number): void {
    const start = startTime(pid);
    if (start !== null) appendFileSync(this.pgidFile, `${pid} ${start}\n`, { mode: 0o600 });
  }

  /** Remembers the cgroup parents this run uses. */
  cgroupParents(version: number, parents: string[]): void {
    writeFileSync(this.cgroupFile, JSON.stringify({ version, parents }) + '\n', { mode: 0o600 });
  }

  /** The cgroup parents an earlier run recorded. */
  recordedCgroups(): { version: 1 | 2; parents: string[] } | null {
    try { return JSON.parse(readFileSync(this.cgroupFile, 'utf8')); } catch { return null; }
  }

  /**
   * SIGKILLs every process still in a recorded process group (started no earlier than its
   * leader), then forgets them. Returns how many processes were ended.
   */
  killRecordedGroups(): number {
    let lines: string[] = [];
    try { lines = readFileSync(this.pgidFile, 'utf8').split('\n').filter(Boolean); } catch { return 0; }
    const groups = new Map<number, number>();
    for (const line of lines) {
      const [pid, start] = line.split(' ').map(Number);
      if (pid && start !== undefined && !Number.isNaN(start)) groups.set(pid, start);
    }
    let killed = 0;
    if (groups.size) {
      for (const entry of readdirSync('/proc')) {
        if (!/^\d+$/.test(entry)) continue;
        const st = stat(Number(entry));
        if (!st) continue;
        const leaderStart = groups.get(st.pgid);
        if (leaderStart === undefined || st.start < leaderStart || Number(entry) === process.pid) continue;
        try { process.kill(Number(entry), 'SIGKILL'); killed++; } catch { /* gone */ }
      }
    }
    writeFileSync(this.pgidFile, '', { mode: 0o600 });
    return killed;
  }
}

/** pgid and start time (clock ticks since boot) of a process, from /proc/<pid>/stat. */
function stat(pid: number): { pgid: number; start: number } | null {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // the command name (field 2) may hold spaces and parentheses: split after its last ')'
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return { pgid: Number(fields[2]), start: Number(fields[19]) };
  } catch { return null; }
}

function startTime(pid: number): number | null {
  return stat(pid)?.start ?? null;
}
