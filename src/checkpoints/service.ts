// Making, storing and finding checkpoints. A checkpoint is made by running the user's
// cells in a fresh interpreter (python/berth_checkpoint.py) or uploaded from a live kernel.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream, mkdirSync } from 'node:fs';
import { readFile, rename, rm, stat, mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { PYTHON_DIR, type Config } from '../core/config.js';
import { BerthError, invalidArgument } from '../core/errors.js';
import { newId, nowIso } from '../core/ids.js';
import { validateName } from '../core/node-spec.js';
import type { Checkpoint, Package, Quota } from '../core/types.js';
import type { Store } from '../store/store.js';

const RUN_TIMEOUT_MS = 10 * 60_000;
const MAX_LOG_BYTES = 256 * 1024;
const MAX_META_BYTES = 8 * 1024 * 1024;

export interface RunRequest {
  cells: string[];
  servingCell: number;
  name: string | null;
  python: string;
  source: 'script' | 'notebook';
  folderId: string;
  projectId: string;
  createdBy: string;
  /** The folder's limits: its checkpoints' bytes in all are checked when the new one is stored. */
  quota: Quota;
}

interface MakerResult {
  ok: boolean;
  python?: string; executable?: string;
  packages?: Package[]; requires?: Package[];
  variables?: Checkpoint['variables']; skipped?: Checkpoint['skipped'];
  error?: { cell: number; error_name: string; error_message: string; traceback: string[] };
}

/** Where a checkpoint's dill blob lives. */
export function checkpointBlobPath(home: string, id: string): string {
  return join(home, 'checkpoints', `${id}.dill`);
}

export class CheckpointService {
  readonly dir: string;

  constructor(private readonly config: Config, private readonly store: Store) {
    this.dir = join(config.home, 'checkpoints');
    mkdirSync(join(this.dir, 'tmp'), { recursive: true });
  }

  blobPath(id: string): string { return checkpointBlobPath(this.config.home, id); }

  /** By id, or by pinned name within the folder. Another folder's checkpoint is not found. */
  async resolve(ref: string, folderId: string): Promise<Checkpoint> {
    const byId = await this.store.getCheckpoint(ref);
    const c = byId && byId.folderId === folderId ? byId : await this.store.getCheckpointByName(folderId, ref);
    if (!c) throw new BerthError('CHECKPOINT_NOT_FOUND', `checkpoint ${ref} not found in folder ${folderId}`, { checkpointId: ref });
    return c;
  }

  /** Runs the cells in a fresh interpreter and saves the namespace it leaves. */
  async runAndSave(req: RunRequest): Promise<{ checkpoint: Checkpoint; log: string }> {
    if (req.cells.length === 0) throw invalidArgument('cells', 'there is no code cell to run');
    if (req.servingCell < 0 || req.servingCell >= req.cells.length) {
      throw invalidArgument('servingCell', `must be between 0 and ${req.cells.length - 1} (there are ${req.cells.length} cells)`);
    }
    if (req.name !== null) validateName(req.name);
    const work = await mkdtemp(join(this.dir, 'tmp', 'run-'));
    const out = join(work, 'blob.dill');
    try {
      const { code, log } = await runMaker(req.python, JSON.stringify({ cells: req.cells, servingCell: req.servingCell, out }));
      if (code === 3) {
        throw new BerthError('ENVIRONMENT_ERROR', `${req.python} cannot make checkpoints: ${log.trim().split('\n').pop()}`, { python: req.python });
      }
      let result: MakerResult;
      try {
        result = JSON.parse(await readFile(out + '.json', 'utf8'));
      } catch {
        throw new BerthError('CHECKPOINT_FAILED', `the interpreter exited with code ${code} before saving a checkpoint`, { log: tail(log) });
      }
      if (!result.ok) {
        const e = result.error!;
        throw new BerthError('CHECKPOINT_FAILED', `cell ${e.cell} raised ${e.error_name}: ${e.error_message}`,
          { cell: e.cell, error_name: e.error_name, error_message: e.error_message, traceback: e.traceback, log: tail(log) });
      }
      const checkpoint = await this.save(out, req.quota, {
        name: req.name, projectId: req.projectId, folderId: req.folderId, createdBy: req.createdBy,
        source: req.source, code: req.cells[req.servingCell]!, cells: req.cells, servingCell: req.servingCell,
        python: result.python ?? '', executable: result.executable ?? req.python,
        packages: result.packages ?? [], requires: result.requires ?? [],
        variables: result.variables ?? [], skipped: result.skipped ?? [],
      });
      return { checkpoint, log };
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }

  /**
   * Saves a live kernel's snapshot. Body: one line of JSON metadata, "\n", the dill blob.
   * Streamed to disk with its hash computed on the way; nothing is kept on failure.
   */
  async upload(body: Readable, who: { createdBy: string; folderId: string; projectId: string; quota: Quota }): Promise<Checkpoint> {
    const work = await mkdtemp(join(this.dir, 'tmp', 'up-'));
    const out = join(work, 'blob.dill');
    try {
      const meta = await splitUpload(body, out, who.quota.maxUploadBytes);
      const name = meta.name === undefined || meta.name === null ? null : String(meta.name);
      if (typeof meta.code !== 'string' || !meta.code.trim()) throw invalidArgument('code', 'the serving cell code is required');
      if (name !== null) validateName(name);
      return await this.save(out, who.quota, {
        name, projectId: who.projectId, folderId: who.folderId, createdBy: who.createdBy,
        source: 'kernel', code: meta.code, cells: [], servingCell: 0,
        python: String(meta.python ?? ''), executable: String(meta.executable ?? ''),
        packages: asList(meta.packages), requires: asList(meta.requires),
        variables: asList(meta.variables), skipped: asList(meta.skipped),
      });
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }

  private async save(blob: string, quota: Quota, fields: Omit<Checkpoint, 'id' | 'pinned' | 'size' | 'sha256' | 'createdAt' | 'updatedAt'>): Promise<Checkpoint> {
    const id = newId();
    const [size, sha256] = await Promise.all([stat(blob).then((s) => s.size), sha256File(blob)]);
    const now = nowIso();
    const checkpoint: Checkpoint = { id, pinned: fields.name !== null, size, sha256, createdAt: now, updatedAt: now, ...fields };
    await rename(blob, this.blobPath(id));
    try {
      await this.store.insertCheckpoint(checkpoint, quota); // decides NAME_TAKEN and the bytes quota
    } catch (err) {
      await rm(this.blobPath(id), { force: true });
      throw err;
    }
    return checkpoint;
  }

  async rename(c: Checkpoint, name: string | null): Promise<Checkpoint> {
    if (name !== null) validateName(name);
    await this.store.renameCheckpoint(c.id, name, nowIso());
    return (await this.store.getCheckpoint(c.id))!;
  }

  async delete(c: Checkpoint): Promise<Checkpoint> {
    const { usedBy } = await this.store.deleteCheckpoint(c.id);
    if (usedBy.length > 0) {
      throw new BerthError('CHECKPOINT_IN_USE', `checkpoint ${c.name ?? c.id} backs node${usedBy.length > 1 ? 's' : ''} ${usedBy.join(', ')}; delete ${usedBy.length > 1 ? 'them' : 'it'} first`,
        { checkpointId: c.id, nodes: usedBy });
    }
    await rm(this.blobPath(c.id), { force: true });
    return c;
  }
}

function asList<T>(v: unknown): T[] { return Array.isArray(v) ? (v as T[]) : []; }

function tail(log: string): string { return log.length > 4000 ? '…' + log.slice(-4000) : log; }

function runMaker(python: string, request: string): Promise<{ code: number | null; log: string }> {
  return new Promise((resolve, reject) => {
    const bootstrap = `import sys; sys.path.insert(0, ${JSON.stringify(PYTHON_DIR)}); import berth_checkpoint; berth_checkpoint.main()`;
    const child = spawn(python, ['-u', '-c', bootstrap], { stdio: ['pipe', 'pipe', 'pipe'] });
    let log = '';
    const collect = (chunk: Buffer): void => { if (log.length < MAX_LOG_BYTES) log += chunk.toString('utf8'); };
    child.stdout.on('data', collect);
    child.stderr.on('data', collect);
    const timer = setTimeout(() => child.kill('SIGKILL'), RUN_TIMEOUT_MS);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new BerthError('ENVIRONMENT_ERROR', `cannot run ${python}: ${err.message}`, { python }));
    });
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, log }); });
    child.stdin.on('error', () => { /* the interpreter died early; reported via close */ });
    child.stdin.end(request);
  });
}

async function sha256File(path: string): Promise<string> {
  const { createReadStream } = await import('node:fs');
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Reads the metadata line, then streams the rest of the body into `out`. */
async function splitUpload(body: Readable, out: string, maxBytes: number): Promise<Record<string, unknown>> {
  const file = createWriteStream(out);
  let header: Buffer[] = [];
  let headerSize = 0;
  let total = 0;
  let meta: Record<string, unknown> | null = null;
  try {
    for await (const chunk of body as AsyncIterable<Buffer>) {
      total += chunk.length;
      if (total > maxBytes) {
        throw new BerthError('QUOTA_EXCEEDED', `the upload exceeds the folder's maxUploadBytes of ${maxBytes}`, { quota: 'maxUploadBytes', limit: maxBytes });
      }
      if (meta) { if (!file.write(chunk)) await new Promise<void>((r) => file.once('drain', () => r())); continue; }
      const nl = chunk.indexOf(0x0a);
      if (nl === -1) {
        header.push(chunk); headerSize += chunk.length;
        if (headerSize > MAX_META_BYTES) throw invalidArgument('body', `the metadata line exceeds ${MAX_META_BYTES} bytes`);
        continue;
      }
      header.push(chunk.subarray(0, nl));
      try {
        meta = JSON.parse(Buffer.concat(header).toString('utf8'));
      } catch {
        throw new BerthError('INVALID_JSON', 'the first line of an upload must be the checkpoint metadata as JSON');
      }
      if (typeof meta !== 'object' || meta === null || Array.isArray(meta)) throw invalidArgument('body', 'metadata must be a JSON object');
      header = [];
      file.write(chunk.subarray(nl + 1));
    }
  } finally {
    await new Promise<void>((resolve, reject) => file.end((err?: Error | null) => (err ? reject(err) : resolve())));
  }
  if (!meta) throw invalidArgument('body', 'expected a JSON metadata line followed by the dill blob');
  if ((await stat(out)).size === 0) throw invalidArgument('body', 'the checkpoint blob is empty');
  return meta;
}
