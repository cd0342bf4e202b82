// Picks the store backend from the config: SQLite in the home (the embedded default), or
// PostgreSQL when `--store` / BERTH_STORE is a postgres:// URL (several servers, one database).
// Opening migrates; a wrong URL or an unreachable database fails here, at `berth up`, with a
// message that names the database but never its password.
import { join } from 'node:path';
import type { Config } from '../core/config.js';
import type { Store } from './store.js';
import { SqliteStore } from './sqlite.js';
import { PostgresStore, redactUrl } from './postgres.js';
import { FileBlobStore, PostgresBlobStore, type BlobStore } from './blobs.js';

export interface OpenedStore {
  store: Store;
  /** Where checkpoint bytes are kept (files in the home, or the database with a local cache). */
  blobs: BlobStore;
  /** For the start line: "sqlite <file>" or "postgres <url without password>". */
  describe: string;
}

export function isPostgresUrl(s: string): boolean {
  return /^postgres(ql)?:\/\//i.test(s);
}

/** Checks a `--store` value without connecting: null when usable, else why not. */
export function storeProblem(store: string | null): string | null {
  if (store === null || store === '') return null;
  if (!isPostgresUrl(store)) return `--store / BERTH_STORE must be a postgres:// or postgresql:// URL (leave it unset for SQLite in the home), got ${JSON.stringify(redactUrl(store))}`;
  try {
    new URL(store);
  } catch {
    return `--store / BERTH_STORE: ${redactUrl(store)} is not a valid URL`;
  }
  return null;
}

export async function openStore(config: Pick<Config, 'home' | 'store'>): Promise<OpenedStore> {
  const blobDir = join(config.home, 'checkpoints');
  if (!config.store) {
    const file = join(config.home, 'berth.db');
    const store = new SqliteStore(file);
    await store.migrate();
    return { store, blobs: new FileBlobStore(blobDir), describe: `sqlite ${file}` };
  }
  const problem = storeProblem(config.store);
  if (problem) throw new Error(problem);
  const where = redactUrl(config.store);
  const store = new PostgresStore(config.store);
  try {
    await store.migrate();
  } catch (err) {
    await store.close().catch(() => {});
    const e = err as Error & { code?: string };
    // pg's own messages name the host, user or database, never the password
    throw new Error(`cannot use the PostgreSQL store at ${where}: ${e.message || e.code || String(err)}`);
  }
  // a cache of the database's copy, in a directory of its own: pruning it never touches the
  // files a SQLite run of this home keeps there (for SQLite they are the only copy)
  return { store, blobs: new PostgresBlobStore(store.pool, join(blobDir, 'cache')), describe: `postgres ${where}` };
}
