// Finds, once per interpreter, what a sandbox must show read-only for that Python to run:
// the real executable (not a pyenv shim) and its installation (prefixes and sys.path dirs).
import { execFile } from 'node:child_process';
import { existsSync, realpathSync } from 'node:fs';
import { dirname, isAbsolute } from 'node:path';

export interface PythonEnv {
  /** The interpreter binary itself (shims such as pyenv's resolved away). */
  executable: string;
  /** Directories to bind read-only: sys.prefix, base_prefix, exec prefixes, sys.path entries. */
  dirs: string[];
  /** PYTHONPATH / PYTHONHOME a wrapper script set before starting the interpreter, to set again inside. */
  env: Record<string, string>;
}

const PROBE = 'import json, os, sys; print(json.dumps({"executable": sys.executable, "dirs": [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix] + [p for p in sys.path if p], "env": {k: os.environ[k] for k in ("PYTHONPATH", "PYTHONHOME") if os.environ.get(k)}}))';

const cache = new Map<string, Promise<PythonEnv>>();

/** What `python` needs in a sandbox; `excluded` paths (BERTH_HOME) are never bound. */
export function pythonEnv(python: string, excluded: string[]): Promise<PythonEnv> {
  let p = cache.get(python);
  if (!p) {
    p = probe(python, excluded);
    cache.set(python, p);
    p.catch(() => cache.delete(python)); // a missing interpreter may be installed later
  }
  return p;
}

function probe(python: string, excluded: string[]): Promise<PythonEnv> {
  return new Promise((resolve, reject) => {
    // -s: no user site; only PATH from Berth's environment, so PYTHONPATH is what a wrapper script set
    execFile(python, ['-s', '-c', PROBE], { timeout: 30_000, encoding: 'utf8', env: { PATH: process.env.PATH ?? '/usr/bin:/bin' }, cwd: '/' }, (err, stdout) => {
      if (err) { reject(new Error(`cannot run ${python}: ${err.message}`)); return; }
      let raw: { executable: string; dirs: string[]; env: Record<string, string> };
      try { raw = JSON.parse(stdout); } catch { reject(new Error(`${python} is not a Python interpreter: ${stdout.slice(0, 200)}`)); return; }
      const real = (p: string): string => { try { return realpathSync(p); } catch { return p; } };
      const dirs = new Set<string>();
      for (const d of raw.dirs) {
        if (!isAbsolute(d) || !existsSync(d)) continue;
        // a zip on sys.path (python311.zip) is bound by its directory
        const dir = real(d.endsWith('.zip') ? dirname(d) : d);
        if (excluded.some((x) => dir === x || dir.startsWith(x + '/') || x.startsWith(dir + '/'))) continue;
        if (dir === '/') continue;
        dirs.add(dir);
      }
      // a parent bound already covers its children
      const sorted = [...dirs].sort();
      const top = sorted.filter((d) => !sorted.some((o) => o !== d && d.startsWith(o + '/')));
      resolve({ executable: real(raw.executable), dirs: top, env: raw.env ?? {} });
    });
  });
}
