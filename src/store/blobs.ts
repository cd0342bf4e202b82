// Where checkpoint bytes live. Instances always read a local file (<home>/checkpoints/<id>.dill);
// a BlobStore decides whether that file is the only copy (FileBlobStore: SQLite, one machine,
// today's layout) or a cache of a copy in the database that every Berth server sharing it can
// fetch (PostgresBlobStore). Blobs are keyed by checkpoint id and verified against the
// checkpoint's sha256 when they arrive on a machine: a mismatch is an error and the file is not
// kept. (Keyed by id, not by content: two checkpoints with equal bytes would otherwise need a
// reference count across servers before either could be deleted.)
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createReadStream, createWriteStream, existsSync, mkdirSync } from 'node:fs';
import { chmod, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type pg from 'pg';

/** What identifies a checkpoint's bytes: its id, and the sha256 they must have. */
export interface BlobRef { id: string; sha256: string }

export interface BlobStore {
  /** The local file instances read (it may not be there yet: see materialize). */
  localPath(id: string): string;
  /** Keeps the bytes now at localPath(ref.id) where every server can get them. All or nothing. */
  put(ref: BlobRef, size: number): Promise<void>;
  /** Makes sure localPath(ref.id) holds the bytes (fetched and sha256-verified if missing); returns it. */
  materialize(ref: BlobRef): Promise<string>;
  /** Removes the bytes everywhere this store keeps them, and the local file. */
  delete(id: string): Promise<void>;
  /**
   * At start, with the checkpoints that exist: drops cached files of deleted ones (another server
   * deleted them). Only where the local file is a cache; never with FileBlobStore.
   */
  pruneCache?(existing: Set<string>): Promise<number>;
}

/** Bytes per chunk row in the database. */
export const BLOB_CHUNK_BYTES = 1024 * 1024;

/** One machine: the local file is the blob (the SQLite default). */
export class FileBlobStore implements BlobStore {
  constructor(readonly dir: string) {}

  localPath(id: string): string { return join(this.dir, `${id}.dill`); }

  async put(): Promise<void> { /* the file is the copy */ }

  async materialize(ref: BlobRef): Promise<string> { return this.localPath(ref.id); }

  async delete(id: string): Promise<void> { await rm(this.localPath(id), { force: true }); }
}

/** The bytes in PostgreSQL (`blobs`, `blob_chunks`: migration 8), the local file a verified cache. */
export class PostgresBlobStore implements BlobStore {
  private readonly fetching = new Map<string, Promise<string>>();

  constructor(private readonly pool: pg.Pool, readonly dir: string) {
    mkdirSync(join(dir, 'tmp'), { recursive: true });
  }

  localPath(id: string): string { return join(this.dir, `${id}.dill`); }

  async put(ref: BlobRef, size: number): Promise<void> {
    const c = await this.pool.connect();
    let broken = false;
    try {
      await c.query('BEGIN');
      await c.query('DELETE FROM blobs WHERE id = $1', [ref.id]);
      await c.query('INSERT INTO blobs (id, sha256, size, chunks, created_at) VALUES ($1, $2, $3, 0, $4)', [ref.id, ref.sha256, size, new Date().toISOString()]);
      let seq = 0;
      for await (const chunk of createReadStream(this.localPath(ref.id), { highWaterMark: BLOB_CHUNK_BYTES })) {
        await c.query('INSERT INTO blob_chunks (blob_id, seq, data) VALUES ($1, $2, $3)', [ref.id, seq++, chunk as Buffer]);
      }
      await c.query('UPDATE blobs SET chunks = $1 WHERE id = $2', [seq, ref.id]);
      await c.query('COMMIT');
    } catch (err) {
      await c.query('ROLLBACK').catch(() => { broken = true; });
      throw err;
    } finally {
      c.release(broken);
    }
  }

  async materialize(ref: BlobRef): Promise<string> {
    const path = this.localPath(ref.id);
    // a file here was written by this server or verified when it arrived (never renamed in before)
    if (existsSync(path)) return path;
    let p = this.fetching.get(ref.id);
    if (!p) {
      p = this.fetch(ref, path).finally(() => this.fetching.delete(ref.id));
      this.fetching.set(ref.id, p);
    }
    return p;
  }

  private async fetch(ref: BlobRef, path: string): Promise<string> {
    const tmp = join(this.dir, 'tmp', `fetch-${ref.id}-${randomBytes(4).toString('hex')}`);
    const hash = createHash('sha256');
    const c = await this.pool.connect();
    try {
      // one snapshot: a blob deleted meanwhile is all there or not at all
      await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      const head = (await c.query('SELECT chunks FROM blobs WHERE id = $1', [ref.id])).rows[0] as { chunks: number } | undefined;
      if (!head) throw new Error(`checkpoint ${ref.id}: its bytes are not in the store (deleted, or saved by a server with another store)`);
      const out = createWriteStream(tmp, { mode: 0o644 });
      const closed = new Promise<void>((resolve, reject) => { out.once('close', resolve); out.once('error', reject); });
      try {
        for (let seq = 0; seq < head.chunks; seq++) {
          const row = (await c.query('SELECT data FROM blob_chunks WHERE blob_id = $1 AND seq = $2', [ref.id, seq])).rows[0] as { data: Buffer } | undefined;
          if (!row) throw new Error(`checkpoint ${ref.id}: chunk ${seq} of ${head.chunks} is missing from the store`);
          hash.update(row.data);
          if (!out.write(row.data)) await once(out, 'drain'); // rejects on a write error
        }
      } finally {
        out.end();
        await closed;
      }
      await c.query('COMMIT');
      const got = hash.digest('hex');
      if (got !== ref.sha256) {
        throw new Error(`checkpoint ${ref.id}: the bytes fetched from the store have sha256 ${got}, not ${ref.sha256}; not used`);
      }
      // readable by the one sandbox it is bound into (Berth's home, 0700, hides it from the rest)
      await chmod(tmp, 0o644);
      await rename(tmp, path);
      return path;
    } catch (err) {
      await c.query('ROLLBACK').catch(() => {});
      await rm(tmp, { force: true });
      throw err;
    } finally {
      c.release();
    }
  }

  async delete(id: string): Promise<void> {
    await this.pool.query('DELETE FROM blobs WHERE id = $1', [id]);
    await rm(this.localPath(id), { force: true });
  }

  async pruneCache(existing: Set<string>): Promise<number> {
    let dropped = 0;
    for (const f of await readdir(this.dir)) {
      const m = /^(.+)\.dill$/.exec(f);
      if (m && !existing.has(m[1]!)) { await rm(join(this.dir, f), { force: true }); dropped++; }
    }
    return dropped;
  }
}
