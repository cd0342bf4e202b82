// The bubblewrap command line for one sandbox. bwrap runs as root (it can bind files root
// alone may read, such as the checkpoint blob inside the 0700 BERTH_HOME), builds an empty
// root with only what is listed here, then setpriv drops to the sandbox's own uid with no
// capabilities before Python starts. Nothing of BERTH_HOME is visible except what is bound.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname } from 'node:path';

export const BWRAP = '/usr/bin/bwrap';
export const SETPRIV = '/usr/bin/setpriv';

/** Fixed paths inside every sandbox. */
export const INSIDE = {
  pythonDir: '/berth/python',
  checkpoint: '/berth/checkpoint.dill',
  dir: '/berth/run',
} as const;

const THP = '/sys/kernel/mm/transparent_hugepage';

/** Small read-only files from /etc that name resolution, TLS and time zones need. */
const ETC = ['/etc/ld.so.cache', '/etc/resolv.conf', '/etc/hosts', '/etc/nsswitch.conf', '/etc/host.conf', '/etc/gai.conf',
  '/etc/localtime', '/etc/ssl', '/etc/ca-certificates', '/etc/pki', '/etc/mime.types',
  // Debian's alternatives: symlinks that shared libraries go through (numpy's libblas.so.3 does)
  '/etc/alternatives'];

export interface BwrapSpec {
  /** The uid to run as; null when Berth is not root (bwrap then uses a user namespace, no uid switch). */
  uid: number | null;
  /** Directories of the Python installation, bound read-only at the same paths. */
  pythonDirs: string[];
  pythonDir: string;
  checkpoint: string | null;
  /** The sandbox's private writable directory (host side). */
  dir: string;
  network: boolean;
  env: Record<string, string>;
  command: string[];
}

export function bwrapArgs(s: BwrapSpec): string[] {
  const a: string[] = [
    '--die-with-parent', '--new-session',
    '--unshare-pid', '--unshare-ipc', '--unshare-uts', '--unshare-cgroup-try',
    ...(s.network ? [] : ['--unshare-net']),
    '--hostname', 'berth-sandbox',
    '--ro-bind', '/usr', '/usr',
  ];
  const bound = ['/usr'];
  for (const l of ['lib', 'lib64', 'lib32', 'bin', 'sbin']) {
    if (existsSync(`/${l}`)) a.push('--symlink', `usr/${l}`, `/${l}`);
  }
  a.push('--proc', '/proc', '--dev', '/dev', '--perms', '1777', '--tmpfs', '/tmp', '--perms', '0755', '--dir', '/etc');
  for (const f of ETC) if (existsSync(f)) a.push('--ro-bind', f, f);
  const made = new Set<string>(['/', '/etc', '/tmp', '/proc', '/dev', '/usr']);
  // parents bwrap would create are 0700 root: make them traversable for the sandbox's uid
  const parents = (dest: string): void => {
    const chain: string[] = [];
    for (let d = dirname(dest); d !== '/' && !made.has(d); d = dirname(d)) chain.unshift(d);
    for (const d of chain) {
      if (bound.some((b) => d === b || d.startsWith(b + '/'))) return;
      a.push('--perms', '0755', '--dir', d);
      made.add(d);
    }
  };
  // the transparent huge page settings, read-only: glibc reads them to honour malloc's hugetlb
  // tunable (fork templates, src/runtimes/fork-template.ts); nothing else of /sys is visible
  if (existsSync(THP)) { parents(THP); a.push('--ro-bind', THP, THP); }
  for (const d of s.pythonDirs) {
    if (bound.some((b) => d === b || d.startsWith(b + '/'))) continue;
    parents(d);
    a.push('--ro-bind', d, d);
    bound.push(d);
  }
  a.push('--perms', '0755', '--dir', '/berth', '--ro-bind', s.pythonDir, INSIDE.pythonDir);
  if (s.checkpoint) a.push('--ro-bind', s.checkpoint, INSIDE.checkpoint);
  a.push('--bind', s.dir, INSIDE.dir, '--chdir', '/tmp', '--clearenv');
  for (const [k, v] of Object.entries(s.env)) a.push('--setenv', k, v);
  if (s.uid === null) { a.push('--', ...s.command); return a; }
  // only setpriv keeps these two, to switch uid; it clears every capability before Python
  a.push('--cap-add', 'CAP_SETUID', '--cap-add', 'CAP_SETGID', SETPRIV,
    '--reuid', String(s.uid), '--regid', String(s.uid), '--clear-groups',
    '--inh-caps=-all', '--bounding-set=-all', '--no-new-privs', '--', ...s.command);
  return a;
}

/** Whether bwrap is installed and can create the namespaces; a message saying what to do when not. */
export function checkBwrap(): Promise<string | null> {
  if (!existsSync(BWRAP)) {
    return Promise.resolve(`the sandbox needs bubblewrap at ${BWRAP}: apt-get install bubblewrap (or start with --sandbox none to run cells unsandboxed)`);
  }
  if (process.getuid?.() === 0 && !existsSync(SETPRIV)) {
    return Promise.resolve(`the sandbox needs ${SETPRIV} to switch cells to their own uid: apt-get install util-linux`);
  }
  return new Promise((resolve) => {
    const args = ['--die-with-parent', '--unshare-pid', '--unshare-ipc', '--unshare-uts', '--ro-bind', '/usr', '/usr',
      '--symlink', 'usr/bin', '/bin', '--symlink', 'usr/lib', '/lib', ...(existsSync('/lib64') ? ['--symlink', 'usr/lib64', '/lib64'] : []),
      '--proc', '/proc', '/usr/bin/true'];
    execFile(BWRAP, args, { timeout: 20_000 }, (err, _out, stderr) => {
      if (!err) { resolve(null); return; }
      resolve(`bubblewrap cannot create namespaces here: ${String(stderr).trim() || err.message}. ` +
        'Run Berth as root, or allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1), or start with --sandbox none');
    });
  });
}
