// Bounded instance logs (issue 7, "Logs are bounded").
//
// Writing: an instance's stdout and stderr are pipes that Berth reads and appends to
// `<instance>.log`. The file is capped: past `maxBytes` it is renamed to `.1` (`.1` to `.2`…)
// and a new one begun, keeping `files` files in all, so one instance never holds more than
// files × maxBytes on disk. Writes are asynchronous and one at a time, what was read meanwhile
// going out in the next one (GATHER_MS); a pipe is read only as fast as the disk takes it
// (stream backpressure), so a cell printing faster than the disk blocks in its own print()
// instead of growing Berth's memory. A line longer than
// `maxLineBytes` is cut, with a marker saying how much was dropped.
//
// Reading: `tailLines` reads backwards from the end in blocks, across the rotated files,
// until it has N lines: cost O(N), never the whole file. Followers (`logs -f`) get each
// write as it lands.
import { fstatSync, openSync, writeSync } from 'node:fs';
import { open, readdir, rename, rm, stat } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as fs from 'node:fs';
import { MB } from '../core/config.js';

export interface LogLimits {
  /** Size at which `<instance>.log` is rotated. */
  maxBytes: number;
  /** Files kept per instance, the current one included (2: `.log` and `.log.1`). */
  files: number;
}

export const DEFAULT_LOG_LIMITS: LogLimits = { maxBytes: 10 * MB, files: 2 };
export const MIN_LOG_BYTES = 16 * 1024;
export const MAX_LOG_FILES = 100;
/** Longest line kept whole; a quarter of the cap when the cap is tiny, so a file holds several. */
export const MAX_LINE_BYTES = 16 * 1024;
/**
 * After writing a small chunk (a line or a few: a cell that prints on every call) the next write
 * waits this long, so the lines read meanwhile go to the file in one write. Written one by one,
 * each line cost a write handed to the thread pool and its completion in Berth's process (a cell
 * printing a line per call: 65–80 µs of its CPU per call, with the read). The first line after a
 * quiet spell is written at once; output in bulk (large chunks) is not held.
 */
const GATHER_MS = 10;
const GATHER_BELOW = 16 * 1024;
/** Most lines one read may ask for. */
export const MAX_TAIL_LINES = 10_000;
/** Most bytes one read returns (10,000 long lines would otherwise be 160 MB). */
export const MAX_TAIL_BYTES = 4 * MB;
/** A search reads back at most this much before it gives up looking for more matches. */
const MAX_SEARCH_SCAN_BYTES = 256 * MB;
/** Logs of this many instances of a node are kept; older ones are removed when an instance starts. */
const KEEP_INSTANCE_LOGS = 10;
const READ_BLOCK = 64 * 1024;
/** Reads running at once; more wait (each holds up to MAX_TAIL_BYTES). */
const MAX_CONCURRENT_READS = 4;

// raw descriptors (not FileHandles, which would be closed by the GC behind our back)
const write = promisify(fs.write); // once: promisify makes a new function each time (seen per call in a CPU profile)
const fsWrite = async (fd: number, buf: Buffer): Promise<number> => (await write(fd, buf, 0, buf.length, null)).bytesWritten;
const fsOpen = promisify(fs.open);
const fsClose = promisify(fs.close);

export function maxLineBytes(limits: LogLimits): number {
  return Math.max(256, Math.min(MAX_LINE_BYTES, Math.floor(limits.maxBytes / 4)));
}

/** The files of one instance log, newest first: `x.log`, `x.log.1`, … */
export function rotatedPaths(path: string, files: number): string[] {
  return Array.from({ length: Math.max(1, files) }, (_, i) => (i === 0 ? path : `${path}.${i}`));
}

/** Checks the settings `berth up` was given; a message naming the flag when they are wrong. */
export function checkLogLimits(l: LogLimits): string | null {
  if (!Number.isInteger(l.maxBytes) || l.maxBytes < MIN_LOG_BYTES) return `--log-max-bytes must be a size of at least ${MIN_LOG_BYTES / 1024}k, e.g. 10m (got ${l.maxBytes})`;
  if (!Number.isInteger(l.files) || l.files < 1 || l.files > MAX_LOG_FILES) return `--log-files must be an integer from 1 to ${MAX_LOG_FILES} (got ${l.files})`;
  return null;
}

type Follower = { onData: (chunk: Buffer) => void; onEnd: () => void };

/** One instance's log, open for writing while the instance runs. */
export class InstanceLog {
  private fd: number;
  private size: number;
  /** Writes and rotations, one at a time, in order. */
  private chain: Promise<void> = Promise.resolve();
  private readonly followers = new Set<Follower>();
  private readonly sources = new Set<Readable>();
  private readonly sinks = new Set<LineSink>();
  private readonly lineMax: number;
  private closing: Promise<void> | null = null;
  private failed = false;
  private fdClosed = false;
  private markEnded!: () => void;
  /** Resolves once the log is closed (the pipes ended, or `close()`). */
  readonly ended = new Promise<void>((r) => { this.markEnded = r; });

  /** Opens (appends to) the log and writes the first status line, synchronously: it is one small write. */
  constructor(readonly path: string, private readonly limits: LogLimits, firstLine: string) {
    this.lineMax = maxLineBytes(limits);
    this.fd = openSync(path, 'a', 0o600);
    this.size = fstatSync(this.fd).size;
    const first = Buffer.from(statusLine(firstLine));
    writeSync(this.fd, first);
    this.size += first.length;
  }

  get closed(): boolean { return this.closing !== null; }

  /** A `[berth] <time> …` line, written after everything queued before it. */
  status(text: string): Promise<void> {
    return this.append(Buffer.from(statusLine(text)));
  }

  /**
   * Reads a child's stdout and stderr into the log, then writes how it ended and closes.
   * Lines from the two pipes are kept whole (each pipe has its own line buffer).
   */
  attach(streams: Array<Readable | null | undefined>, exited: Promise<{ code: number | null; signal: string | null; error?: string }>): void {
    const piped = streams.filter((s): s is Readable => !!s).map((s) => {
      this.sources.add(s);
      const sink = new LineSink(this, this.lineMax);
      this.sinks.add(sink);
      return pipeline(s, sink).catch(() => undefined).finally(() => this.sinks.delete(sink));
    });
    void Promise.all([Promise.all(piped), exited]).then(async ([, e]) => {
      if (this.closing) return;
      const how = e.error ?? (e.signal ? `killed by ${e.signal}` : `exited with code ${e.code}`);
      await this.status(`instance ${how}`);
      await this.close();
    });
  }

  /** Writes what has been read from the pipes so far (a reader of the file sees what was printed before it asked). */
  async flush(): Promise<void> {
    for (const sink of this.sinks) sink.release();
    await new Promise((r) => setImmediate(r)); // the released sinks have handed what they hold to append()
    await this.chain;
  }

  /** New bytes as they are written; `onEnd` once the log is closed. Returns the unsubscribe. */
  follow(onData: (chunk: Buffer) => void, onEnd: () => void): () => void {
    if (this.closing) { queueMicrotask(onEnd); return () => undefined; }
    const f = { onData, onEnd };
    this.followers.add(f);
    return () => { this.followers.delete(f); };
  }

  /** Stops reading the pipes (anything still holding them open is cut off) and closes the file. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const s of this.sources) s.destroy();
      await this.chain;
      this.fdClosed = true;
      await fsClose(this.fd).catch(() => undefined);
      for (const f of this.followers) f.onEnd();
      this.followers.clear();
      this.markEnded();
    })();
    return this.closing;
  }

  /** Queues complete lines for writing; resolves once they are on disk (this is the backpressure). */
  append(buf: Buffer): Promise<void> {
    if (buf.length === 0) return this.chain;
    const p = this.chain.then(() => this.writeLines(buf));
    this.chain = p.catch(() => undefined);
    return p;
  }

  private async writeLines(buf: Buffer): Promise<void> {
    if (this.failed || this.fdClosed) return;
    try {
      let off = 0;
      while (off < buf.length) {
        const room = this.limits.maxBytes - this.size;
        let end = buf.length;
        if (end - off > room) {
          // the largest run of whole lines that still fits; rotate when none does
          const nl = room > 0 ? buf.lastIndexOf(10, off + room - 1) : -1;
          if (nl >= off) end = nl + 1;
          else if (this.size > 0) { await this.rotate(); continue; }
          else end = off + Math.max(1, room);
        }
        const part = buf.subarray(off, end);
        let done = 0;
        while (done < part.length) done += await fsWrite(this.fd, part.subarray(done));
        this.size += part.length;
        off = end;
        for (const f of this.followers) f.onData(part);
      }
    } catch (err) {
      // a full or broken disk: stop writing rather than fail the instance
      this.failed = true;
      console.error(`[berth] log ${this.path}: ${(err as Error).message}; further output of this instance is dropped`);
    }
  }

  private async rotate(): Promise<void> {
    await fsClose(this.fd).catch(() => undefined);
    const paths = rotatedPaths(this.path, this.limits.files);
    if (paths.length === 1) await rm(this.path, { force: true });
    for (let i = paths.length - 1; i > 0; i--) await rename(paths[i - 1]!, paths[i]!).catch(() => undefined);
    this.fd = await fsOpen(this.path, 'a', 0o600);
    this.size = 0;
  }
}

/** One pipe's bytes to whole lines; lines over the bound are cut. Holds at most one line. */
class LineSink extends Writable {
  private pending: Buffer[] = [];
  private pendingLen = 0;
  /** Bytes dropped from the line being cut, or -1 when not cutting. */
  private dropped = -1;

  constructor(private readonly log: InstanceLog, private readonly maxLine: number) {
    super({ highWaterMark: 64 * 1024 });
  }

  /** Chunks read while the last write was in flight (or held: GATHER_MS), in one write. */
  override _writev(chunks: Array<{ chunk: Buffer }>, cb: (err?: Error | null) => void): void {
    this.take(chunks.length === 1 ? chunks[0]!.chunk : Buffer.concat(chunks.map((c) => c.chunk)), cb);
  }

  /** The write held for GATHER_MS, if one is: its timer and its callback. */
  private held: { timer: NodeJS.Timeout; cb: () => void } | null = null;

  /** Ends the hold now: what was read meanwhile is written next (InstanceLog.flush). */
  release(): void {
    const h = this.held;
    if (!h) return;
    this.held = null;
    clearTimeout(h.timer);
    h.cb();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.take(chunk, cb);
  }

  /** Writes the chunk's whole lines; `cb` once they are on disk (and the hold, if any, is over). */
  private take(chunk: Buffer, cb: (err?: Error | null) => void): void {
    const started = Date.now();
    const next = (): void => {
      const wait = chunk.length < GATHER_BELOW ? started + GATHER_MS - Date.now() : 0;
      if (wait > 0) this.held = { timer: setTimeout(() => this.release(), wait), cb: () => cb() };
      else cb();
    };
    const out = this.split(chunk);
    if (out.length === 0) { next(); return; }
    this.log.append(out.length === 1 ? out[0]! : Buffer.concat(out)).then(next, cb);
  }

  override _final(cb: (err?: Error | null) => void): void {
    const out: Buffer[] = [];
    if (this.dropped >= 0) this.endCut(out);
    else if (this.pendingLen > 0) out.push(...this.pending, Buffer.from('\n'));
    this.pending = [];
    this.pendingLen = 0;
    if (out.length === 0) { cb(); return; }
    this.log.append(Buffer.concat(out)).then(() => cb(), cb);
  }

  /** The cut line, whole: its head, then the marker that ends it. */
  private endCut(out: Buffer[]): void {
    out.push(...this.pending, cutMarker(this.dropped));
    this.pending = [];
    this.pendingLen = 0;
    this.dropped = -1;
  }

  /** Whole lines of this chunk (plus what earlier chunks left unfinished); runs of short lines stay one slice. */
  private split(chunk: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let pos = 0;
    let runStart = -1;
    const flushRun = (end: number): void => {
      if (runStart >= 0 && end > runStart) out.push(chunk.subarray(runStart, end));
      runStart = -1;
    };
    while (pos < chunk.length) {
      const nl = chunk.indexOf(10, pos);
      const end = nl === -1 ? chunk.length : nl;
      const len = end - pos;
      if (this.dropped >= 0) {
        this.dropped += len;
        if (nl !== -1) this.endCut(out);
      } else if (this.pendingLen + len > this.maxLine) {
        // the line's head is held (at most maxLine) and written with its marker when the line
        // ends: written now, the other stream's lines could land between the two
        flushRun(pos);
        let take = this.maxLine - this.pendingLen;
        while (take > 0 && (chunk[pos + take]! & 0xc0) === 0x80) take--; // do not split a UTF-8 character
        this.pending.push(Buffer.from(chunk.subarray(pos, pos + take)));
        this.pendingLen += take;
        this.dropped = len - take;
        if (nl !== -1) this.endCut(out);
      } else if (nl === -1) {
        flushRun(pos);
        this.pending.push(Buffer.from(chunk.subarray(pos, end)));
        this.pendingLen += len;
      } else if (this.pendingLen > 0) {
        flushRun(pos);
        out.push(...this.pending, chunk.subarray(pos, nl + 1));
        this.pending = [];
        this.pendingLen = 0;
      } else if (runStart < 0) {
        runStart = pos;
      }
      pos = nl === -1 ? chunk.length : nl + 1;
    }
    flushRun(pos);
    return out;
  }
}

function cutMarker(dropped: number): Buffer {
  return Buffer.from(` [berth: line cut, ${dropped} more bytes dropped]\n`);
}

function statusLine(text: string): string {
  return `[berth] ${new Date().toISOString()} ${text}\n`;
}

/** Removes the logs of all but the newest `keep` instances in a node's log directory. */
export async function pruneInstanceLogs(nodeDir: string, keepOpen: ReadonlySet<string>, keep = KEEP_INSTANCE_LOGS): Promise<void> {
  let names: string[];
  try { names = await readdir(nodeDir); } catch { return; }
  const byInstance = new Map<string, { files: string[]; mtime: number }>();
  for (const name of names) {
    const m = /^(.+)\.log(?:\.\d+)?$/.exec(name);
    if (!m) continue;
    const e = byInstance.get(m[1]!) ?? { files: [], mtime: 0 };
    e.files.push(name);
    try { e.mtime = Math.max(e.mtime, (await stat(join(nodeDir, name))).mtimeMs); } catch { /* gone */ }
    byInstance.set(m[1]!, e);
  }
  const old = [...byInstance.entries()].filter(([id]) => !keepOpen.has(id)).sort((a, b) => b[1].mtime - a[1].mtime).slice(Math.max(0, keep - keepOpen.size));
  for (const [, e] of old) for (const f of e.files) await rm(join(nodeDir, f), { force: true });
}

// ---- reading ----

export interface TailOptions {
  /** Only lines containing this text (a plain, case-sensitive substring). */
  search?: string;
  /** Most bytes returned; older lines past it are left out and `truncated` is set. */
  maxBytes?: number;
}

export interface TailResult { text: string; lines: number; truncated: boolean }

let readsRunning = 0;
const readQueue: Array<() => void> = [];

/**
 * The last `want` lines of a log kept in `paths` (newest file first; missing files are
 * skipped), reading backwards in blocks. A file boundary is a line boundary.
 */
export async function tailLines(paths: string[], want: number, opts: TailOptions = {}): Promise<TailResult> {
  if (readsRunning >= MAX_CONCURRENT_READS) await new Promise<void>((r) => readQueue.push(r));
  readsRunning++;
  try {
    for (let attempt = 0; ; attempt++) {
      const r = await tailOnce(paths, want, opts);
      if (r || attempt >= 3) return r ?? { text: '', lines: 0, truncated: false };
    }
  } finally {
    readsRunning--;
    readQueue.shift()?.();
  }
}

/** null when the files were rotated while being opened (two names for one file): try again. */
async function tailOnce(paths: string[], want: number, opts: TailOptions): Promise<TailResult | null> {
  const handles: Array<{ fh: FileHandle; size: number }> = [];
  try {
    const seen = new Set<number>();
    for (const p of paths) {
      let fh: FileHandle;
      try { fh = await open(p, 'r'); } catch { continue; }
      const st = await fh.stat();
      handles.push({ fh, size: st.size });
      if (seen.has(st.ino)) return null;
      seen.add(st.ino);
    }
    const maxBytes = opts.maxBytes ?? MAX_TAIL_BYTES;
    const needle = opts.search ? Buffer.from(opts.search) : null;
    const lines: Buffer[] = []; // newest first
    let bytes = 0;
    let scanned = 0;
    let truncated = false;
    // returns true when reading should stop
    const take = (line: Buffer): boolean => {
      if (needle && line.indexOf(needle) < 0) return scanned > MAX_SEARCH_SCAN_BYTES;
      if (bytes + line.length + 1 > maxBytes && lines.length > 0) { truncated = true; return true; }
      lines.push(line.length > maxBytes ? line.subarray(line.length - maxBytes) : line);
      bytes += line.length + 1;
      return lines.length >= want;
    };
    outer: for (const { fh, size } of handles) {
      if (want <= 0) break;
      let pos = size;
      let carry: Buffer[] = [];
      let carryLen = 0;
      let first = true;
      while (pos > 0) {
        const len = Math.min(READ_BLOCK, pos);
        pos -= len;
        const block = Buffer.allocUnsafe(len);
        let got = 0;
        while (got < len) {
          const { bytesRead } = await fh.read(block, got, len - got, pos + got);
          if (bytesRead === 0) break;
          got += bytesRead;
        }
        scanned += len;
        let i = got;
        if (first) { first = false; if (i > 0 && block[i - 1] === 10) i--; } // the file's final newline ends the last line
        while (i > 0) {
          const nl = block.lastIndexOf(10, i - 1);
          if (nl < 0) break;
          const line = carryLen ? Buffer.concat([block.subarray(nl + 1, i), ...carry]) : block.subarray(nl + 1, i);
          carry = [];
          carryLen = 0;
          if (take(line)) break outer;
          i = nl;
        }
        carry.unshift(block.subarray(0, i));
        carryLen += i;
        if (carryLen > maxBytes) { // one line longer than everything we may return: keep its end
          if (!needle) { take(Buffer.concat(carry)); truncated = true; }
          break outer;
        }
      }
      if (size > 0 && take(carryLen ? Buffer.concat(carry) : Buffer.alloc(0))) break;
    }
    lines.reverse();
    const text = lines.length ? Buffer.concat(lines.flatMap((l) => [l, NEWLINE])).toString('utf8') : '';
    return { text, lines: lines.length, truncated };
  } finally {
    for (const h of handles) await h.fh.close().catch(() => undefined);
  }
}

const NEWLINE = Buffer.from('\n');
