// HPACK (RFC 7541) for the gateway's own HTTP/2 on raw sockets: node:http2's per-stream cost is
// most of a proxied gRPC call, so the framing and this header compression are ours. Every call
// goes through both directions, and the peer may be hostile: the decoder is table-driven (a
// byte-at-a-time Huffman automaton, built when first needed), bounds every integer and string, and keeps
// its dynamic table in sync even when it refuses a header list. The encoder never uses Huffman
// (CPU matters more than bytes on a local link) and indexes what repeats across calls.

/** A HEADERS block that cannot be decoded: the connection must end with COMPRESSION_ERROR. */
export class HpackError extends Error {
  readonly code = 'HPACK_COMPRESSION';
  override name = 'HpackError';
}

/** The decoded header list is over the limit given (name + value + 32 per field, as SETTINGS_MAX_HEADER_LIST_SIZE counts): the block was still fully decoded so the dynamic table stays in sync; the caller refuses the stream (431 / RST_STREAM), the connection lives on. */
export class HpackListTooLarge extends Error {
  readonly code = 'HPACK_LIST_TOO_LARGE';
  override name = 'HpackListTooLarge';
}

/** Node's Buffer has these (what toString('latin1') ends in) without the encoding dispatch; @types/node does not declare them. */
type Latin1Buffer = Buffer & {
  latin1Slice(start: number, end: number): string;
  latin1Write(s: string, offset: number, length: number): number;
};

// ---- Static table (Appendix A), 1-based --------------------------------------------------------

const STATIC: ReadonlyArray<readonly [string, string]> = [
  [':authority', ''], [':method', 'GET'], [':method', 'POST'], [':path', '/'], [':path', '/index.html'],
  [':scheme', 'http'], [':scheme', 'https'], [':status', '200'], [':status', '204'], [':status', '206'],
  [':status', '304'], [':status', '400'], [':status', '404'], [':status', '500'], ['accept-charset', ''],
  ['accept-encoding', 'gzip, deflate'], ['accept-language', ''], ['accept-ranges', ''], ['accept', ''],
  ['access-control-allow-origin', ''], ['age', ''], ['allow', ''], ['authorization', ''], ['cache-control', ''],
  ['content-disposition', ''], ['content-encoding', ''], ['content-language', ''], ['content-length', ''],
  ['content-location', ''], ['content-range', ''], ['content-type', ''], ['cookie', ''], ['date', ''],
  ['etag', ''], ['expect', ''], ['expires', ''], ['from', ''], ['host', ''], ['if-match', ''],
  ['if-modified-since', ''], ['if-none-match', ''], ['if-range', ''], ['if-unmodified-since', ''],
  ['last-modified', ''], ['link', ''], ['location', ''], ['max-forwards', ''], ['proxy-authenticate', ''],
  ['proxy-authorization', ''], ['range', ''], ['referer', ''], ['refresh', ''], ['retry-after', ''],
  ['server', ''], ['set-cookie', ''], ['strict-transport-security', ''], ['transfer-encoding', ''],
  ['user-agent', ''], ['vary', ''], ['via', ''], ['www-authenticate', ''],
];
const STATIC_LEN = 61;
const S_NAMES: string[] = [''];
const S_VALUES: string[] = [''];
/** name + '\0' + value → static index, for the encoder's full matches. */
const STATIC_FULL = new Map<string, number>();
/** name → its lowest static index, for the encoder's name matches. */
const STATIC_NAME = new Map<string, number>();
for (let i = 0; i < STATIC_LEN; i++) {
  const [n, v] = STATIC[i];
  S_NAMES.push(n);
  S_VALUES.push(v);
  STATIC_FULL.set(n + '\0' + v, i + 1);
  if (!STATIC_NAME.has(n)) STATIC_NAME.set(n, i + 1);
}

// ---- Huffman (Appendix B) ---------------------------------------------------------------------

/** Codes of symbols 0..255 and EOS (256), as in the RFC, with their bit lengths below. */
const HUFF_CODES: readonly number[] = [
  0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7,
  0xfffffe8, 0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec,
  0xfffffed, 0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3,
  0xffffff4, 0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb,
  0x14, 0x3f8, 0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa,
  0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
  0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d,
  0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb, 0x3fc,
  0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62,
  0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a,
  0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72,
  0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0, 0x1ffc, 0x3ffc, 0x22,
  0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26,
  0x27, 0x6, 0x74, 0x75, 0x28, 0x29, 0x2a, 0x7,
  0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78,
  0x79, 0x7a, 0x7b, 0x7ffe, 0x7fc, 0x3ffd, 0x1ffd, 0xffffffc,
  0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4, 0x3fffd5, 0x7fffd9,
  0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb, 0x7fffdf,
  0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
  0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef,
  0x3fffda, 0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde,
  0x7fffea, 0x3fffdd, 0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec,
  0x1fffe0, 0x1fffe1, 0x3fffe0, 0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef,
  0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4, 0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1,
  0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7, 0x7ffff2, 0x3fffe8, 0x1ffffec,
  0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf, 0x3ffffe5, 0xfffff1, 0x1ffffed,
  0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7, 0x7ffffe2, 0xfffff2,
  0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4, 0x7ffffe5,
  0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
  0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4,
  0x3ffffeb, 0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea,
  0x7ffffeb, 0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
  0x3fffffff,
];
const HUFF_LENS: readonly number[] = [
  13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
  28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
  6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
  5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
  13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
  7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
  15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
  6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
  20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
  24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
  22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
  21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
  26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
  19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
  20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
  26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
  30,
];

// The decoding automaton: a state is an inner node of the code tree (256 of them for 257
// leaves; 0 is the root), and HUFF[state << 8 | byte] says what one input byte does from there.
// One lookup per byte; a byte completes at most two symbols (the shortest code is 5 bits).
// Entry bits: 0-7 first symbol, 8-15 second, 16-23 next state, 24-25 symbol count,
// 26 the next state may end the string (root, or 1..7 bits of EOS's leading ones), 27 error (EOS).
const H_ACCEPT = 1 << 26;
const H_FAIL = 1 << 27;
/** Built on the first Huffman string decoded (a few ms): a process that never decodes one does not pay it. */
let HUFF: Int32Array | null = null;

function buildHuffman(): Int32Array {
  // child[node * 2 + bit]: an inner node (< 256), a leaf (256 + symbol), or -1 while building.
  const child = new Int32Array(512).fill(-1);
  let inner = 1;
  for (let sym = 0; sym <= 256; sym++) {
    const code = HUFF_CODES[sym];
    const len = HUFF_LENS[sym];
    let node = 0;
    for (let i = len - 1; i > 0; i--) {
      const slot = node * 2 + ((code >>> i) & 1);
      if (child[slot] === -1) child[slot] = inner++;
      node = child[slot];
    }
    child[node * 2 + (code & 1)] = 256 + sym;
  }
  const accept = new Uint8Array(256);
  accept[0] = 1;
  for (let node = 0, depth = 1; depth <= 7; depth++) {
    node = child[node * 2 + 1];
    accept[node] = 1;
  }
  // First what 4 bits do from each state (at most one symbol: the shortest code is 5 bits):
  // -1 for EOS, else symbol | next state << 8 | emitted << 16. Then each byte is two nibbles.
  const nib = new Int32Array(256 * 16);
  for (let state = 0; state < 256; state++) {
    for (let x = 0; x < 16; x++) {
      let node = state;
      let r = 0;
      for (let bit = 3; bit >= 0; bit--) {
        const next = child[node * 2 + ((x >>> bit) & 1)];
        if (next < 256) { node = next; continue; }
        if (next === 512) { r = -1; break; }
        r = (next - 256) | (1 << 16);
        node = 0;
      }
      nib[state * 16 + x] = r === -1 ? -1 : r | (node << 8);
    }
  }
  const table = new Int32Array(256 * 256);
  for (let state = 0; state < 256; state++) {
    for (let byte = 0; byte < 256; byte++) {
      const hi = nib[state * 16 + (byte >>> 4)];
      const lo = hi === -1 ? -1 : nib[((hi >>> 8) & 0xff) * 16 + (byte & 15)];
      if (lo === -1) { table[(state << 8) | byte] = H_FAIL; continue; }
      const node = (lo >>> 8) & 0xff;
      let count = 0;
      let syms = 0;
      if (hi & (1 << 16)) { syms = hi & 0xff; count = 1; }
      if (lo & (1 << 16)) syms |= (lo & 0xff) << (8 * count++);
      table[(state << 8) | byte] = syms | (node << 16) | (count << 24) | (accept[node] ? H_ACCEPT : 0);
    }
  }
  return table;
}

// ---- Decoder ----------------------------------------------------------------------------------

const MAX_INT = 0x7fffffff;
const SCRATCH_MAX = 16384;

export class HpackDecoder {
  private readonly maxTableSize: number;
  private readonly maxListSize: number;
  /** The table's current limit: maxTableSize until the peer's encoder sends a size update. */
  private tableMax: number;
  private size = 0;
  /** The dynamic table: names (a) and values (b). */
  private readonly table = new PairRing();
  /** Where the last integer or string read ended (the readers' second result). */
  private p = 0;
  /** Huffman output before it becomes a string; grows with the longest string seen, up to SCRATCH_MAX. */
  private scratch: Latin1Buffer = Buffer.allocUnsafe(256) as Latin1Buffer;

  /** maxTableSize: the SETTINGS_HEADER_TABLE_SIZE we advertise (default 4096). maxListSize: our header-list limit (default none). */
  constructor(maxTableSize = 4096, maxListSize = Infinity) {
    this.maxTableSize = maxTableSize;
    this.maxListSize = maxListSize;
    this.tableMax = maxTableSize;
  }

  /**
   * Decodes one complete header block (HEADERS + CONTINUATION payloads concatenated).
   * Returns a flat array [name0, value0, name1, value1, ...] in wire order.
   * Throws HpackError on any malformed input; throws HpackListTooLarge (AFTER decoding the whole block, so the table stays in sync) when over maxListSize.
   */
  decode(block: Buffer): string[] {
    const buf = block as Latin1Buffer;
    const end = buf.length;
    const limit = this.maxListSize;
    const out: string[] = [];
    let list = 0;
    let fields = false;
    let p = 0;
    while (p < end) {
      const b = buf[p++];
      let name: string;
      let value: string;
      if (b >= 0x80) {
        // Indexed field.
        let idx = b & 0x7f;
        if (idx === 0x7f) { idx = this.int(buf, p, 0x7f); p = this.p; }
        if (idx === 0) throw new HpackError('indexed field with index 0');
        if (idx <= STATIC_LEN) {
          name = S_NAMES[idx];
          value = S_VALUES[idx];
        } else {
          const d = idx - STATIC_LEN - 1;
          if (d >= this.table.count) throw new HpackError(`index ${idx} past the table`);
          const at = this.table.newest(d);
          name = this.table.a[at];
          value = this.table.b[at];
        }
      } else if (b >= 0x40) {
        // Literal with incremental indexing.
        let idx = b & 0x3f;
        if (idx === 0x3f) { idx = this.int(buf, p, 0x3f); p = this.p; }
        if (idx === 0) { name = this.str(buf, p); p = this.p; } else name = this.nameAt(idx);
        value = this.str(buf, p); p = this.p;
        this.add(name, value);
      } else if (b >= 0x20) {
        // Dynamic table size update: only before the first field.
        if (fields) throw new HpackError('table size update after a field');
        let n = b & 0x1f;
        if (n === 0x1f) { n = this.int(buf, p, 0x1f); p = this.p; }
        if (n > this.maxTableSize) throw new HpackError(`table size update to ${n}, over ${this.maxTableSize}`);
        this.tableMax = n;
        while (this.size > n) this.evict();
        continue;
      } else {
        // Literal without indexing (0000) or never indexed (0001): the same to a decoder.
        let idx = b & 0x0f;
        if (idx === 0x0f) { idx = this.int(buf, p, 0x0f); p = this.p; }
        if (idx === 0) { name = this.str(buf, p); p = this.p; } else name = this.nameAt(idx);
        value = this.str(buf, p); p = this.p;
      }
      fields = true;
      list += name.length + value.length + 32;
      // Over the limit: keep decoding for the table's sake, stop keeping what it gives.
      if (list <= limit) out.push(name, value);
    }
    if (list > limit) throw new HpackListTooLarge(`header list of ${list} bytes, over ${limit}`);
    return out;
  }

  /** The rest of an integer whose `prefix` bits were all ones, from buf[p]; sets this.p past it. */
  private int(buf: Buffer, p: number, prefix: number): number {
    const end = buf.length;
    let v = prefix;
    let m = 1;
    for (let k = 0; k < 5; k++) {
      if (p >= end) throw new HpackError('integer past the end of the block');
      const b = buf[p++];
      v += (b & 0x7f) * m;
      if (b < 0x80) {
        if (v > MAX_INT) throw new HpackError('integer over 2^31-1');
        this.p = p;
        return v;
      }
      m *= 128;
    }
    throw new HpackError('integer longer than 5 continuation bytes');
  }

  /** A string literal at buf[p]; sets this.p past it. */
  private str(buf: Latin1Buffer, p: number): string {
    const end = buf.length;
    if (p >= end) throw new HpackError('string past the end of the block');
    const b = buf[p++];
    let len = b & 0x7f;
    if (len === 0x7f) { len = this.int(buf, p, 0x7f); p = this.p; }
    const e = p + len;
    if (e > end) throw new HpackError('string past the end of the block');
    this.p = e;
    return b >= 0x80 ? this.huffman(buf, p, e) : buf.latin1Slice(p, e);
  }

  private huffman(buf: Buffer, p: number, e: number): string {
    // 5 bits per symbol at best: fewer than 2 symbols per input byte. A rare long string gets
    // its own buffer rather than growing the one each connection keeps.
    const need = (e - p) * 2;
    let out = this.scratch;
    if (out.length < need) {
      out = Buffer.allocUnsafe(need) as Latin1Buffer;
      if (need <= SCRATCH_MAX) this.scratch = out;
    }
    let n = 0;
    let t = H_ACCEPT;
    let state = 0;
    const huff = HUFF ??= buildHuffman();
    for (let i = p; i < e; i++) {
      t = huff[(state << 8) | buf[i]];
      if ((t & H_FAIL) !== 0) throw new HpackError('EOS inside a Huffman string');
      const c = (t >>> 24) & 3;
      if (c !== 0) {
        out[n++] = t & 0xff;
        if (c === 2) out[n++] = (t >>> 8) & 0xff;
      }
      state = (t >>> 16) & 0xff;
    }
    if ((t & H_ACCEPT) === 0) throw new HpackError('Huffman padding longer than 7 bits or not EOS');
    return out.latin1Slice(0, n);
  }

  private nameAt(idx: number): string {
    if (idx <= STATIC_LEN) return S_NAMES[idx];
    const d = idx - STATIC_LEN - 1;
    if (d >= this.table.count) throw new HpackError(`name index ${idx} past the table`);
    return this.table.a[this.table.newest(d)];
  }

  private add(name: string, value: string): void {
    const size = name.length + value.length + 32;
    // Too large for the table: it empties and the entry is not added (RFC 7541 4.4).
    if (size > this.tableMax) {
      while (this.table.count > 0) this.evict();
      return;
    }
    while (this.size + size > this.tableMax) this.evict();
    this.table.push(name, value);
    this.size += size;
  }

  private evict(): void {
    const t = this.table;
    this.size -= t.a[t.start].length + t.b[t.start].length + 32;
    t.shift();
  }
}

// ---- Encoder ----------------------------------------------------------------------------------

/** Values that change per request (nothing to gain), or that are secret (CRIME-style probing). */
const NEVER_INDEX = new Set([
  ':path', 'content-length', 'authorization', 'proxy-authorization', 'cookie', 'set-cookie',
  'grpc-timeout', 'x-request-id', 'date', 'etag', 'if-modified-since', 'if-none-match', 'location',
  'age', 'last-modified', 'link', 'x-berth-request-id',
  // tracing: a new value on every call would only churn the table
  'traceparent', 'tracestate', 'grpc-trace-bin', 'b3', 'x-b3-traceid', 'x-b3-spanid', 'x-b3-parentspanid',
  'x-b3-sampled', 'x-amzn-trace-id', 'x-cloud-trace-context', 'uber-trace-id',
]);
/** Short values of these go as never-indexed, so no intermediary indexes them either. */
const SENSITIVE = new Set(['authorization', 'proxy-authorization', 'cookie']);
const MAX_INDEXED = 256;
const OUR_MAX_TABLE = 4096;

export class HpackEncoder {
  /** The table's limit: 4096 or the peer's smaller setting. */
  private maxSize = OUR_MAX_TABLE;
  private size = 0;
  /** Since the last block: whether the peer's setting changed, and the lowest size it went to. */
  private pendingUpdate = false;
  private pendingMin = OUR_MAX_TABLE;
  /** The dynamic table as the peer's decoder has it: name + '\0' + value keys (a) and names (b). */
  private readonly table = new PairRing();
  /** Entries ever inserted; entry number s (from 1) is at dynamic index `inserted - s + 1`. */
  private inserted = 0;
  /** key → number of the (only) entry holding it. */
  private readonly full = new Map<string, number>();
  /** name → number of the newest entry with that name. */
  private readonly byName = new Map<string, number>();
  private buf: Latin1Buffer = Buffer.allocUnsafe(256) as Latin1Buffer;
  private pos = 0;

  /** The peer's SETTINGS_HEADER_TABLE_SIZE changed: the next block starts with a dynamic table size update (to min(new, 4096) — we never use more than 4096). */
  setPeerMaxTableSize(n: number): void {
    const m = Math.max(0, Math.min(n, OUR_MAX_TABLE));
    this.maxSize = m;
    while (this.size > m) this.evict();
    if (!this.pendingUpdate || m < this.pendingMin) this.pendingMin = m;
    this.pendingUpdate = true;
  }

  /**
   * Encodes one header block. `pseudo`: flat [name, value, ...] written first (e.g. ':status','200' or ':method','POST',':path','/x',':scheme','http',':authority','h'); `headers`: a record whose values are string or string[] (each element its own field), names already lower-case. Returns a Buffer.
   */
  encode(pseudo: string[], headers: Record<string, string | string[]> | null): Buffer {
    this.pos = 0;
    if (this.pendingUpdate) {
      // A smaller size in between must reach the decoder too: we evicted down to it (RFC 7541 4.2).
      this.ensure(12);
      if (this.pendingMin < this.maxSize) this.int(0x1f, 0x20, this.pendingMin);
      this.int(0x1f, 0x20, this.maxSize);
      this.pendingUpdate = false;
    }
    for (let i = 0; i + 1 < pseudo.length; i += 2) this.field(pseudo[i], pseudo[i + 1]);
    if (headers !== null) {
      for (const name in headers) {
        const v = headers[name];
        if (typeof v === 'string') this.field(name, v);
        else for (let i = 0; i < v.length; i++) this.field(name, v[i]);
      }
    }
    const out = Buffer.allocUnsafe(this.pos);
    this.buf.copy(out, 0, 0, this.pos);
    return out;
  }

  private field(name: string, value: string): void {
    this.ensure(name.length + value.length + 16);
    const key = name + '\0' + value;
    const s = STATIC_FULL.get(key);
    if (s !== undefined) { this.int(0x7f, 0x80, s); return; }
    const d = this.full.get(key);
    if (d !== undefined) { this.int(0x7f, 0x80, STATIC_LEN + 1 + this.inserted - d); return; }
    let nameIdx = STATIC_NAME.get(name);
    if (nameIdx === undefined) {
      const dn = this.byName.get(name);
      nameIdx = dn === undefined ? 0 : STATIC_LEN + 1 + this.inserted - dn;
    }
    const octets = name.length + value.length;
    if (!NEVER_INDEX.has(name) && octets <= MAX_INDEXED && octets + 32 <= this.maxSize) {
      // The name index refers to the table before this entry goes in, as the decoder reads it.
      this.int(0x3f, 0x40, nameIdx);
      if (nameIdx === 0) this.str(name);
      this.str(value);
      this.insert(name, key, octets + 32);
    } else {
      this.int(0x0f, SENSITIVE.has(name) && value.length < 20 ? 0x10 : 0x00, nameIdx);
      if (nameIdx === 0) this.str(name);
      this.str(value);
    }
  }

  /** Integer `v` with an N-bit prefix (`max` = 2^N - 1) under the representation's `flags`. */
  private int(max: number, flags: number, v: number): void {
    const buf = this.buf;
    let p = this.pos;
    if (v < max) {
      buf[p++] = flags | v;
    } else {
      buf[p++] = flags | max;
      v -= max;
      while (v >= 0x80) {
        buf[p++] = (v & 0x7f) | 0x80;
        v = Math.floor(v / 128);
      }
      buf[p++] = v;
    }
    this.pos = p;
  }

  /** A raw string literal (H = 0), latin1. */
  private str(s: string): void {
    const n = s.length;
    this.int(0x7f, 0, n);
    const buf = this.buf;
    const p = this.pos;
    // Short strings: a loop beats the call into C++.
    if (n < 32) for (let i = 0; i < n; i++) buf[p + i] = s.charCodeAt(i);
    else buf.latin1Write(s, p, n);
    this.pos = p + n;
  }

  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.pos + n) cap *= 2;
    const next = Buffer.allocUnsafe(cap) as Latin1Buffer;
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  private insert(name: string, key: string, size: number): void {
    while (this.size + size > this.maxSize) this.evict();
    this.table.push(key, name);
    this.size += size;
    const s = ++this.inserted;
    this.full.set(key, s);
    this.byName.set(name, s);
  }

  private evict(): void {
    const t = this.table;
    const key = t.a[t.start];
    const name = t.b[t.start];
    const s = this.inserted - t.count + 1;
    if (this.full.get(key) === s) this.full.delete(key);
    if (this.byName.get(name) === s) this.byName.delete(name);
    this.size -= key.length + 31;
    t.shift();
  }
}

/** A dynamic table's entries as two parallel strings each (what one side keeps of an entry): a ring, oldest at `start`. */
class PairRing {
  a: string[] = new Array<string>(16).fill('');
  b: string[] = new Array<string>(16).fill('');
  start = 0;
  count = 0;
  private mask = 15;

  /** The slot of the `d`-th newest entry (0: the newest). */
  newest(d: number): number { return (this.start + this.count - 1 - d) & this.mask; }

  push(a: string, b: string): void {
    if (this.count === this.a.length) this.grow();
    const at = (this.start + this.count) & this.mask;
    this.a[at] = a;
    this.b[at] = b;
    this.count++;
  }

  /** Drops the oldest entry. */
  shift(): void {
    this.a[this.start] = '';
    this.b[this.start] = '';
    this.start = (this.start + 1) & this.mask;
    this.count--;
  }

  private grow(): void {
    const cap = this.a.length * 2;
    const a = new Array<string>(cap).fill('');
    const b = new Array<string>(cap).fill('');
    for (let i = 0; i < this.count; i++) {
      const at = (this.start + i) & this.mask;
      a[i] = this.a[at];
      b[i] = this.b[at];
    }
    this.a = a;
    this.b = b;
    this.start = 0;
    this.mask = cap - 1;
  }
}
