// Cell workers over TCP (issue 13): the per-instance secret every connection starts with, and
// how Berth learns the port a worker bound (port 0: the worker writes it to a file in its run
// directory once it listens). The sandbox can write that directory, so the port read back is
// only trusted once the kernel says a socket of the sandbox's own uid listens on it (as a Unix
// socket is only trusted once it is a socket of that uid: process.ts pinSocket).
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';

export type WorkerTransport = 'unix' | 'tcp';
export const WORKER_TRANSPORTS: readonly WorkerTransport[] = ['unix', 'tcp'];

/** 32 random bytes, hex: the instance's handshake secret (and its token for the checkpoint it fetches). */
export function newInstanceSecret(): string {
  return randomBytes(32).toString('hex');
}

/**
 * The uid owning the socket that listens on 127.0.0.1:port (IPv4), from /proc/net/tcp; null when
 * none does. Berth and a sandbox with network share the network namespace, so both see it.
 */
export async function listenerUid(port: number): Promise<number | null> {
  let text: string;
  try { text = await readFile('/proc/net/tcp', 'utf8'); } catch { return null; }
  const want = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
    if (f[1] === want && f[3] === '0A') return Number(f[7]);
  }
  return null;
}

/**
 * Waits for the worker's port file (written atomically once it listens) and checks that the port
 * is a listener of `uid` (null: unsandboxed, Berth's own user: the file is trusted as it is).
 */
export async function portFromFile(path: string, uid: number | null, gone: () => boolean, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let text: string | null = null;
    try { text = await readFile(path, 'utf8'); } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    if (text !== null) {
      const port = Number(text.trim());
      if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`the worker reported no valid port (${JSON.stringify(text.slice(0, 20))})`);
      if (uid === null) return port;
      const owner = await listenerUid(port);
      if (owner === uid) return port;
      // a listener of another user on that port: the file was not the worker's own report
      if (owner !== null) throw new Error(`port ${port} the worker reported is not its own listener (uid ${owner})`);
    }
    if (gone()) throw new Error('the worker exited before it listened');
    if (Date.now() > deadline) throw new Error(`the worker reported no port within ${timeoutMs / 1000}s`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
