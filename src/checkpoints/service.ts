// Making, storing and finding checkpoints. A checkpoint is made by running the user's
// cells in a fresh interpreter (python/berth_checkpoint.py) — in the sandbox, with a
// wall-clock limit and a global bound on concurrent runs — or uploaded from a live kernel.
import { createHash } from 'node:crypto';
import { createWriteStream, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { chmod, chown, lstat, readFile, rename, rm, stat, mkdtemp } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import type { Config } from '../core/config.js';
import { BerthError, invalidArgument } from '../core/errors.js';
import type { Sandbox } from '../sandbox/sandbox.js';
import { RunLimiter } from '../sandbox/run-limiter.js';
import { newId, nowIso } from '../core/ids.js';
import { validateName } from '../core/node-spec.js';
import type { Checkpoint, CheckpointAutosave, CheckpointCell, Package, Quota } from '../core/types.js';
import type { Store } from '../store/store.js';
import type { BlobStore } from '../store/blobs.js';

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

export class CheckpointService {
  readonly dir: string;
  readonly runs: RunLimiter;

  constructor(private readonly config: Config, private readonly store: Store, private readonly sandbox: Sandbox,
    private readonly blobs: BlobStore) {
    this.dir = join(config.home, 'checkpoints');
    mkdirSync(join(this.dir, 'tmp'), { recursive: true });
    // runs and uploads an earlier Berth left half done (nothing is running yet)
    for (const e of readdirSync(join(this.dir, 'tmp'))) rmSync(join(this.dir, 'tmp', e), { recursive: true, force: true });
    this.runs = new RunLimiter(Math.max(1, config.maxCheckpointRuns), config.checkpointRunQueue);
  }

  blobPath(id: string): string { return this.blobs.localPath(id); }

  /** By id, or by pinned name within the folder. Another folder's checkpoint is not found. */
  async resolve(ref: string, folderId: string): Promise<Checkpoint> {
    const byId = await this.store.getCheckpoint(ref);
    const c = byId && byId.folderId === folderId ? byId : await this.store.getCheckpointByName(folderId, ref);
    if (!c) throw new BerthError('CHECKPOINT_NOT_FOUND', `checkpoint ${ref} not found in folder ${folderId}`, { checkpointId: ref });
    return c;
  }

  /**
   * Runs the cells in a fresh, sandboxed interpreter and saves the namespace it leaves.
   * `signal` (the caller went away) ends the run and everything it started.
   */
  async runAndSave(req: RunRequest, signal?: AbortSignal): Promise<{ checkpoint: Checkpoint; log: string }> {
    if (req.cells.length === 0) throw invalidArgument('cells', 'there is no code cell to run');
    if (req.servingCell < 0 || req.servingCell >= req.cells.length) {
      throw invalidArgument('servingCell', `must be between 0 and ${req.cells.length - 1} (there are ${req.cells.length} cells)`);
    }
    if (req.name !== null) validateName(req.name);
    const release = await this.runs.acquire(signal);
    try {
      return await this.runLimited(req, signal);
    } finally {
      release();
    }
  }

  private async runLimited(req: RunRequest, signal?: AbortSignal): Promise<{ checkpoint: Checkpoint; log: string }> {
    const work = await mkdtemp(join(this.dir, 'tmp', 'run-'));
    const out = join(work, 'blob.dill');
    try {
      const limitSeconds = this.config.checkpointRunSeconds;
      const run = await runMaker(this.sandbox, {
        id: 'run-' + newId(), python: req.python, dir: work, timeoutMs: limitSeconds * 1000, signal,
        memoryGb: this.config.checkpointRunMemoryGb,
        request: (dir) => JSON.stringify({ cells: req.cells, servingCell: req.servingCell, out: join(dir, 'blob.dill') }),
      });
      const { code, log } = run;
      if (run.aborted) throw new BerthError('CLIENT_CLOSED', 'the caller left; the run was stopped');
      if (run.timedOut) {
        throw new BerthError('RUN_TIMEOUT', `the checkpoint run passed its ${limitSeconds}s wall-clock limit and was stopped with everything it started`,
          { limitSeconds, log: tail(log) });
      }
      if (run.oom) {
        throw new BerthError('CHECKPOINT_FAILED', `out of memory (limit ${this.config.checkpointRunMemoryGb} GB): the run was killed`,
          { limitGb: this.config.checkpointRunMemoryGb, log: tail(log) });
      }
      if (run.error) throw new BerthError('ENVIRONMENT_ERROR', run.error.startsWith('cannot') ? run.error : `cannot run ${req.python}: ${run.error}`, { python: req.python });
      // the sandbox wrote these: only plain files are taken (a symlink could point anywhere)
      await ownFile(out);
      await ownFile(out + '.json');
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
      const cell = parseCell(meta.cell);
      const autosave = parseAutosave(meta.autosave);
      if (autosave && name !== null) throw invalidArgument('name', 'an autosave is recorded unpinned: pin it afterwards (berth checkpoint pin ID NAME)');
      const checkpoint = await this.save(out, who.quota, {
        name, projectId: who.projectId, folderId: who.folderId, createdBy: who.createdBy,
        source: 'kernel', code: meta.code, cells: [], servingCell: 0,
        python: String(meta.python ?? ''), executable: String(meta.executable ?? ''),
        packages: asList(meta.packages), requires: asList(meta.requires),
        variables: asList(meta.variables), skipped: asList(meta.skipped),
        ...(cell ? { cell } : {}), ...(autosave ? { autosave } : {}),
      });
      if (autosave) {
        // the session's older unpinned recordings past `keep` go (pinned ones never do)
        const pruned = await this.store.pruneAutosaves(who.folderId, autosave.session, autosave.keep);
        await Promise.all(pruned.map((id) => this.blobs.delete(id)));
      }
      return checkpoint;
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }

  private async save(blob: string, quota: Quota, fields: Omit<Checkpoint, 'id' | 'pinned' | 'size' | 'sha256' | 'createdAt' | 'updatedAt'>): Promise<Checkpoint> {
    const id = newId();
    const [size, sha256] = await Promise.all([stat(blob).then((s) => s.size), sha256File(blob)]);
    const now = nowIso();
    const checkpoint: Checkpoint = { id, pinned: fields.name !== null, size, sha256, createdAt: now, updatedAt: now, ...fields };
    // readable by the one sandbox it is bound into (Berth's home, 0700, hides it from the rest)
    await chmod(blob, 0o644);
    await rename(blob, this.blobPath(id));
    try {
      // the bytes first (every server sharing the store can fetch them), then the record naming them
      await this.blobs.put({ id, sha256 }, size);
      await this.store.insertCheckpoint(checkpoint, quota); // decides NAME_TAKEN and the bytes quota
    } catch (err) {
      await this.blobs.delete(id).catch(() => undefined); // the error that matters is err
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
    // the record is gone: a failure to drop the bytes leaves garbage, not a failed delete
    await this.blobs.delete(c.id).catch((err: unknown) => console.error(`[berth] checkpoint ${c.id} deleted; its bytes were not: ${(err as Error).message}`));
    return c;
  }
}

function asList<T>(v: unknown): T[] { return Array.isArray(v) ? (v as T[]) : []; }

/** Most autosaves one kernel session may keep. */
export const MAX_AUTOSAVE_KEEP = 1000;
const MAX_CELL_CODE = 1024 * 1024;

/** The upload's `cell`: `{number: int | null, code: string}`, or absent. */
function parseCell(v: unknown): CheckpointCell | null {
  if (v === undefined || v === null) return null;
  if (typeof v !== 'object' || Array.isArray(v)) throw invalidArgument('cell', 'must be an object {number, code}');
  const { number, code } = v as Record<string, unknown>;
  if (number !== null && number !== undefined && !(typeof number === 'number' && Number.isInteger(number) && number >= 0)) {
    throw invalidArgument('cell.number', `must be a whole number or null, got ${JSON.stringify(number)}`);
  }
  if (typeof code !== 'string') throw invalidArgument('cell.code', 'must be a string');
  if (code.length > MAX_CELL_CODE) throw invalidArgument('cell.code', `must be at most ${MAX_CELL_CODE} characters`);
  return { number: (number as number | null | undefined) ?? null, code };
}

/** The upload's `autosave`: `{session: id, keep: 1..1000}`, or absent. */
function parseAutosave(v: unknown): CheckpointAutosave | null {
  if (v === undefined || v === null) return null;
  if (typeof v !== 'object' || Array.isArray(v)) throw invalidArgument('autosave', 'must be an object {session, keep}');
  const { session, keep } = v as Record<string, unknown>;
  if (typeof session !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(session)) {
    throw invalidArgument('autosave.session', 'must be 1-64 letters, digits, "-" or "_"');
  }
  if (typeof keep !== 'number' || !Number.isInteger(keep) || keep < 1 || keep > MAX_AUTOSAVE_KEEP) {
    throw invalidArgument('autosave.keep', `must be a whole number from 1 to ${MAX_AUTOSAVE_KEEP}`);
  }
  return { session, keep };
}

function tail(log: string): string { return log.length > 4000 ? '…' + log.slice(-4000) : log; }

interface MakerRun { code: number | null; log: string; timedOut: boolean; aborted: boolean; oom: boolean; error?: string }

/**
 * Runs python/berth_checkpoint.py in the sandbox. Ends when the main process exits: what it
 * left running (a background process holding stdout) is killed then, never waited for.
 */
async function runMaker(sandbox: Sandbox, o: {
  id: string; python: string; dir: string; timeoutMs: number; memoryGb: number; signal?: AbortSignal; request: (dir: string) => string;
}): Promise<MakerRun> {
  if (o.signal?.aborted) return { code: null, log: '', timedOut: false, aborted: true, oom: false };
  let sb;
  try {
    sb = await sandbox.spawn({
      id: o.id, python: o.python, checkpoint: null, dir: o.dir, network: true,
      limits: { cores: availableParallelism(), memoryGb: o.memoryGb },
      stdio: ['pipe', 'pipe', 'pipe'],
      args: (p) => ['-u', '-c', `import sys; sys.path.insert(0, ${JSON.stringify(p.pythonDir)}); import berth_checkpoint; berth_checkpoint.main()`],
    });
  } catch (err) {
    return { code: null, log: '', timedOut: false, aborted: false, oom: false, error: (err as Error).message };
  }
  const child = sb.child;
  let log = '';
  const collect = (chunk: Buffer): void => { if (log.length < MAX_LOG_BYTES) log += chunk.toString('utf8'); };
  child.stdout!.on('data', collect);
  child.stderr!.on('data', collect);
  let timedOut = false;
  let aborted = false;
  const timer = setTimeout(() => { timedOut = true; sb.kill(); }, o.timeoutMs);
  const onAbort = (): void => { aborted = true; sb.kill(); };
  o.signal?.addEventListener('abort', onAbort, { once: true });
  child.stdin!.on('error', () => { /* the interpreter died early; reported via exit */ });
  child.stdin!.end(o.request(sb.paths.dir));
  const exit = await sb.exited;
  clearTimeout(timer);
  o.signal?.removeEventListener('abort', onAbort);
  // everything in the sandbox is gone now; take what is still buffered in the pipes, briefly
  await Promise.all([child.stdout!, child.stderr!].map((s) => new Promise<void>((r) => {
    if (s.destroyed || s.readableEnded) { r(); return; }
    const t = setTimeout(() => { s.destroy(); r(); }, 1000);
    s.once('close', () => { clearTimeout(t); r(); });
  })));
  return { code: exit.code, log, timedOut, aborted, oom: exit.oom, ...(exit.error ? { error: exit.error } : {}) };
}

/** A file the sandbox wrote, made Berth's and readable by the instances it will be bound into; symlinks and hard links are refused. */
async function ownFile(path: string): Promise<void> {
  let st;
  try { st = await lstat(path); } catch { return; }
  if (!st.isFile() || st.nlink !== 1) {
    await rm(path, { force: true });
    throw new BerthError('CHECKPOINT_FAILED', 'the run left something other than a plain file where the checkpoint goes', { file: path.split('/').pop() });
  }
  const uid = process.getuid?.() ?? st.uid;
  const gid = process.getgid?.() ?? st.gid;
  if (st.uid !== uid) await chown(path, uid, gid);
  await chmod(path, 0o644);
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
