// HPACK (gateway/h2/hpack.ts): the decoder on RFC 7541 Appendix C (raw and Huffman, the dynamic
// table across blocks, evictions in a 256-byte table); our encoder into our decoder over many
// blocks (repeats, evictions, multi-valued headers, every byte value, table size changes); both
// against Node's own nghttp2 over a raw socket (its server decodes what we encode, we decode its
// Huffman- and table-compressed answers); and hostile blocks, refused with HpackError, or with
// HpackListTooLarge while the table stays in sync.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type ServerHttp2Session, type ServerHttp2Stream, type OutgoingHttpHeaders } from 'node:http2';
import { connect, type AddressInfo } from 'node:net';
import { HpackDecoder, HpackEncoder, HpackError, HpackListTooLarge } from '../../src/gateway/h2/hpack.js';
import { frame } from './h2-frames.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const flat = (pairs: Array<[string, string]>): string[] => pairs.flat();

/** What a decoder should give for what the encoder was given: pseudo first, then each value its own field. */
function expected(pseudo: string[], headers: Record<string, string | string[]> | null): string[] {
  const out = [...pseudo];
  for (const [n, v] of Object.entries(headers ?? {})) for (const x of Array.isArray(v) ? v : [v]) out.push(n, x);
  return out;
}

const rejects = (d: HpackDecoder, block: Buffer, why: RegExp): void => {
  assert.throws(() => d.decode(block), (e: unknown) => e instanceof HpackError && e.code === 'HPACK_COMPRESSION' && why.test(e.message));
};

test('RFC 7541 C.2: literal with indexing, without indexing, never indexed, indexed', async () => {
  let d = new HpackDecoder();
  assert.deepEqual(d.decode(hex('400a637573746f6d2d6b65790d637573746f6d2d686561646572')), ['custom-key', 'custom-header']);
  assert.deepEqual(d.decode(hex('be')), ['custom-key', 'custom-header'], 'C.2.1 added it to the table');
  d = new HpackDecoder();
  assert.deepEqual(d.decode(hex('040c2f73616d706c652f70617468')), [':path', '/sample/path']);
  rejects(d, hex('be'), /past the table/); // C.2.2 added nothing
  d = new HpackDecoder();
  assert.deepEqual(d.decode(hex('100870617373776f726406736563726574')), ['password', 'secret']);
  rejects(d, hex('be'), /past the table/);
  d = new HpackDecoder();
  assert.deepEqual(d.decode(hex('82')), [':method', 'GET']);
  rejects(d, hex('be'), /past the table/);
});

const C3_1 = flat([[':method', 'GET'], [':scheme', 'http'], [':path', '/'], [':authority', 'www.example.com']]);
const C3_2 = [...C3_1, 'cache-control', 'no-cache'];
const C3_3 = flat([[':method', 'GET'], [':scheme', 'https'], [':path', '/index.html'], [':authority', 'www.example.com'], ['custom-key', 'custom-value']]);

test('RFC 7541 C.3: three requests on one decoder, later ones built on the table', async () => {
  const d = new HpackDecoder();
  assert.deepEqual(d.decode(hex('828684410f7777772e6578616d706c652e636f6d')), C3_1);
  assert.deepEqual(d.decode(hex('828684be58086e6f2d6361636865')), C3_2);
  assert.deepEqual(d.decode(hex('828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565')), C3_3);
  // the table now, newest first: custom-key, cache-control, :authority; nothing past it
  assert.deepEqual(d.decode(hex('bebfc0')), flat([['custom-key', 'custom-value'], ['cache-control', 'no-cache'], [':authority', 'www.example.com']]));
  rejects(d, hex('c1'), /past the table/);
});

test('RFC 7541 C.4: the same requests with Huffman', async () => {
  const d = new HpackDecoder();
  assert.deepEqual(d.decode(hex('828684418cf1e3c2e5f23a6ba0ab90f4ff')), C3_1);
  assert.deepEqual(d.decode(hex('828684be5886a8eb10649cbf')), C3_2);
  assert.deepEqual(d.decode(hex('828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf')), C3_3);
  assert.deepEqual(d.decode(hex('bebfc0')), flat([['custom-key', 'custom-value'], ['cache-control', 'no-cache'], [':authority', 'www.example.com']]));
});

const R1 = flat([[':status', '302'], ['cache-control', 'private'], ['date', 'Mon, 21 Oct 2013 20:13:21 GMT'], ['location', 'https://www.example.com']]);
const R2 = [':status', '307', ...R1.slice(2)];
const R3 = flat([[':status', '200'], ['cache-control', 'private'], ['date', 'Mon, 21 Oct 2013 20:13:22 GMT'], ['location', 'https://www.example.com'],
  ['content-encoding', 'gzip'], ['set-cookie', 'foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1']]);
const R_TABLE = flat([['set-cookie', 'foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1'], ['content-encoding', 'gzip'], ['date', 'Mon, 21 Oct 2013 20:13:22 GMT']]);

test('RFC 7541 C.5: responses in a 256-byte table, evicting', async () => {
  const d = new HpackDecoder(256);
  assert.deepEqual(d.decode(hex(`4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a323120474d54
    6e1768747470733a2f2f7777772e6578616d706c652e636f6d`)), R1);
  // :status 302 evicted for :status 307; the rest of the table referenced
  assert.deepEqual(d.decode(hex('4803333037c1c0bf')), R2);
  assert.deepEqual(d.decode(hex(`88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a69707738666f6f3d
    4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167653d333630303b2076657273696f6e3d31`)), R3);
  // three entries left (215 bytes): set-cookie, content-encoding, date
  assert.deepEqual(d.decode(hex('bebfc0')), R_TABLE);
  rejects(d, hex('c1'), /past the table/);
});

test('RFC 7541 C.6: responses with Huffman in a 256-byte table, evicting', async () => {
  const d = new HpackDecoder(256);
  assert.deepEqual(d.decode(hex('488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3')), R1);
  assert.deepEqual(d.decode(hex('4883640effc1c0bf')), R2);
  assert.deepEqual(d.decode(hex(`88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af27
    087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007`)), R3);
  assert.deepEqual(d.decode(hex('bebfc0')), R_TABLE);
  rejects(d, hex('c1'), /past the table/);
});

/** A deterministic generator, so a failure repeats. */
function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test('round trip: our encoder into our decoder over many blocks, the table in use and evicting', async () => {
  const enc = new HpackEncoder();
  const dec = new HpackDecoder();
  const pseudo = [':method', 'POST', ':scheme', 'http', ':authority', 'cell-1:8080', ':path', '/pkg.Svc/Call'];
  const headers = { 'content-type': 'application/grpc', te: 'trailers', 'user-agent': 'berth/0.1', 'x-tenant': 'acme' };
  const first = enc.encode(pseudo, headers);
  assert.deepEqual(dec.decode(first), expected(pseudo, headers));
  const again = enc.encode(pseudo, headers);
  assert.deepEqual(dec.decode(again), expected(pseudo, headers));
  // the second time everything but :path (never indexed) is one byte each
  assert.equal(again.length, 3 + 2 + '/pkg.Svc/Call'.length + 4, `second block ${again.toString('hex')}`);
  // a response: :status 200 is static, one byte
  assert.deepEqual([...enc.encode([':status', '200'], null)], [0x88]);
  assert.deepEqual(dec.decode(Buffer.from([0x88])), [':status', '200']);

  // varying blocks: repeats, long values that evict, multi-valued headers, per-call ids, secrets
  const rnd = random(7);
  const pick = <T>(xs: T[]): T => xs[Math.floor(rnd() * xs.length)];
  let total = 0;
  for (let i = 0; i < 600; i++) {
    const h: Record<string, string | string[]> = {
      'content-type': pick(['application/grpc', 'application/grpc+proto', 'application/json']),
      'x-request-id': `req-${i}`,
      'grpc-timeout': `${i}m`,
      [`x-name-${i % 37}`]: `v${i % 11}`,
      'x-long': 'L'.repeat(150 + (i % 90)) + i, // ~200 bytes each, 4096 bytes hold ~15: evicting all the time
      'x-multi': [`a${i % 3}`, `b${i % 5}`, 'c'],
      authorization: rnd() < 0.5 ? 'Bearer t' : `Bearer ${'x'.repeat(40)}${i}`,
      cookie: ['s=1', `t=${i}`],
      'x-huge': i % 50 === 0 ? 'H'.repeat(5000) : 'small',
      'x-empty': '',
    };
    const p = [':method', pick(['GET', 'POST']), ':scheme', 'http', ':authority', pick(['a', 'b', 'cell-1:8080']), ':path', `/p/${i % 13}`];
    const block = enc.encode(p, h);
    total += block.length;
    assert.deepEqual(dec.decode(block), expected(p, h), `block ${i}`);
  }
  assert.ok(total > 0);
});

test('round trip: every byte value, sensitive and per-call names never indexed, table size changes', async () => {
  const enc = new HpackEncoder();
  const dec = new HpackDecoder();
  let all = '';
  for (let b = 0; b < 256; b++) all += String.fromCharCode(b);
  const high = all.slice(128, 228); // 100 bytes over 0x7f: indexed, its size counted in octets
  const h = { 'x-all': all, 'x-high': high, 'x-mixed': [all.slice(0, 64), all.slice(64, 128)] };
  for (let i = 0; i < 3; i++) assert.deepEqual(dec.decode(enc.encode([], h)), expected([], h));
  const one = enc.encode([], { 'x-high': high });
  assert.equal(one.length, 1, 'x-high is in the table: one byte');
  assert.deepEqual(dec.decode(one), ['x-high', high]);

  const secret = { authorization: 'Bearer abc', cookie: 'k=v', 'proxy-authorization': 'x'.repeat(30), 'x-request-id': 'r1' };
  const b1 = enc.encode([':path', '/a'], secret);
  assert.deepEqual(dec.decode(b1), expected([':path', '/a'], secret));
  const b2 = enc.encode([':path', '/a'], secret);
  assert.deepEqual(b2, b1, 'nothing of these was indexed: the same bytes again');
  assert.deepEqual(dec.decode(b2), expected([':path', '/a'], secret));
  // :path (static name 4) without indexing; the short authorization (23) and cookie (32) never
  // indexed (4-bit prefix: 15, then the rest); the long proxy-authorization (49) without indexing
  assert.deepEqual([b1[0], b1[4], b1[5], b1[17], b1[18], b1[23], b1[24]], [0x04, 0x1f, 23 - 15, 0x1f, 32 - 15, 0x0f, 49 - 15]);

  // the peer allows no table: a size update to 0 starts the next block, then nothing is indexed
  const calls = { 'x-a': 'one', 'x-b': 'two' };
  assert.deepEqual(dec.decode(enc.encode([], calls)), expected([], calls));
  const indexed = enc.encode([], calls);
  assert.equal(indexed.length, 2, 'both indexed before');
  assert.deepEqual(dec.decode(indexed), expected([], calls));
  enc.setPeerMaxTableSize(0);
  const z = enc.encode([], calls);
  assert.equal(z[0], 0x20);
  assert.deepEqual(dec.decode(z), expected([], calls));
  for (let i = 0; i < 3; i++) {
    const b = enc.encode([], { ...calls, 'x-i': String(i) });
    assert.equal(b[0], 0x00, 'a literal without indexing, nothing to index into');
    assert.deepEqual(dec.decode(b), expected([], { ...calls, 'x-i': String(i) }));
  }
  rejects(dec, Buffer.from([0xbe]), /past the table/); // the decoder's table is empty too
  // 100, then back to 4096 (over ours: capped) before the next block: both sizes are signalled
  enc.setPeerMaxTableSize(100);
  enc.setPeerMaxTableSize(65536);
  const up = enc.encode([], calls);
  assert.deepEqual([...up.subarray(0, 5)], [0x3f, 100 - 31, 0x3f, 0xe1, 0x1f]);
  assert.deepEqual(dec.decode(up), expected([], calls));
  assert.deepEqual(dec.decode(enc.encode([], calls)), expected([], calls));
  const again = enc.encode([], calls);
  assert.equal(again.length, 2, 'indexed again');
  assert.deepEqual(dec.decode(again), expected([], calls));
  // a small table: 64 bytes hold one of these at a time
  enc.setPeerMaxTableSize(64);
  for (let i = 0; i < 20; i++) {
    const hh = { 'x-a': `one-${i % 3}`, 'x-b': 'two' };
    assert.deepEqual(dec.decode(enc.encode([], hh)), expected([], hh));
  }
});

// ---- against Node's nghttp2 ---------------------------------------------------------------------


test('interop with node:http2: its nghttp2 decodes our blocks, we decode its Huffman and dynamic-table answers', async (t) => {
  const seen: string[][] = [];
  const date = 'Tue, 02 Dec 2025 10:00:00 GMT';
  let bytes = '';
  for (let b = 0x20; b < 0x7f; b++) bytes += String.fromCharCode(b);
  for (let b = 0x80; b < 0x100; b++) bytes += String.fromCharCode(b);
  const answer = (id: number): OutgoingHttpHeaders => ({
    ':status': 200, 'content-type': 'application/grpc', 'grpc-encoding': 'identity', 'x-served-by': 'nghttp2',
    'x-stream': String(id), 'x-long': 'z'.repeat(300), 'x-bytes': bytes, 'set-cookie': ['a=1', 'b=2'], date,
  });
  const answerFields = (id: number): string[] => flat([[':status', '200'], ['content-type', 'application/grpc'], ['grpc-encoding', 'identity'],
    ['x-served-by', 'nghttp2'], ['x-stream', String(id)], ['x-long', 'z'.repeat(300)], ['x-bytes', bytes], ['set-cookie', 'a=1'], ['set-cookie', 'b=2'], ['date', date]]);
  const server = createServer();
  const sessions = new Set<ServerHttp2Session>();
  server.on('session', (s: ServerHttp2Session) => { sessions.add(s); s.on('error', () => undefined); });
  server.on('stream', (stream: ServerHttp2Stream, _h: unknown, _f: unknown, raw: string[]) => {
    seen.push(raw);
    stream.respond(answer(stream.id ?? 0), { endStream: true });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const socket = connect((server.address() as AddressInfo).port, '127.0.0.1');
  t.after(() => new Promise<void>((r) => {
    socket.destroy();
    for (const s of sessions) s.destroy();
    server.close(() => r());
  }));
  await new Promise<void>((r, j) => { socket.once('connect', r); socket.once('error', j); });

  // read frames: ACK its SETTINGS, put HEADERS (+ CONTINUATION) through our decoder in wire order
  const dec = new HpackDecoder();
  const answers = new Map<number, { block: Buffer; fields: string[] }>();
  const goaway: Buffer[] = [];
  let pending = Buffer.alloc(0);
  let open: { stream: number; parts: Buffer[] } | null = null;
  socket.on('data', (d: Buffer) => {
    pending = Buffer.concat([pending, d]);
    while (pending.length >= 9) {
      const len = pending.readUIntBE(0, 3);
      if (pending.length < 9 + len) break;
      const [type, flags, stream] = [pending[3], pending[4], pending.readUInt32BE(5) & 0x7fffffff];
      let payload = pending.subarray(9, 9 + len);
      pending = pending.subarray(9 + len);
      if (type === 0x4 && (flags & 0x1) === 0) socket.write(frame(0x4, 0x1, 0, Buffer.alloc(0)));
      else if (type === 0x7) goaway.push(payload);
      else if (type === 0x1 || type === 0x9) {
        if (type === 0x1) {
          let pad = 0;
          if (flags & 0x8) { pad = payload[0]; payload = payload.subarray(1); }
          if (flags & 0x20) payload = payload.subarray(5);
          payload = payload.subarray(0, payload.length - pad);
          open = { stream, parts: [] };
        }
        assert.ok(open && open.stream === stream, 'CONTINUATION of the open block');
        open.parts.push(payload);
        if (flags & 0x4) {
          const block = Buffer.concat(open.parts);
          answers.set(stream, { block, fields: dec.decode(block) });
          open = null;
        }
      }
      // DATA, WINDOW_UPDATE, PING, PRIORITY, RST_STREAM: skipped
    }
  });
  const until = async (ok: () => boolean): Promise<void> => {
    const end = Date.now() + 3000;
    while (!ok()) {
      if (Date.now() > end || goaway.length > 0) assert.fail(`timed out; goaway ${goaway.map((g) => g.toString('hex')).join()}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  };

  const enc = new HpackEncoder();
  const pseudo = (path: string): string[] => [':method', 'POST', ':scheme', 'http', ':authority', 'localhost', ':path', path];
  const base = {
    'content-type': 'application/grpc', te: 'trailers', 'grpc-timeout': '5S', 'user-agent': 'berth-test',
    'x-multi': ['a', 'b', 'c'], 'x-long': 'L'.repeat(1000), authorization: 'Bearer short',
  };
  const req1 = enc.encode(pseudo('/pkg.Svc/One'), { ...base, 'x-custom': 'one' });
  socket.write(Buffer.concat([
    Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), frame(0x4, 0, 0, Buffer.alloc(0)), frame(0x1, 0x5, 1, req1),
  ]));
  await until(() => seen.length === 1 && answers.has(1));
  assert.deepEqual(seen[0], expected(pseudo('/pkg.Svc/One'), { ...base, 'x-custom': 'one' }));

  // the same call again: what was indexed goes as one byte, nghttp2 resolves it from its table
  const req3 = enc.encode(pseudo('/pkg.Svc/Two'), { ...base, 'x-custom': 'two' });
  // the 1000-byte value is never indexed (over 256); of the rest, under 80 bytes, most are references now
  assert.ok(req3.length < 1000 + 80 && req1.length - req3.length > 60, `blocks of ${req1.length} then ${req3.length} bytes`);
  assert.ok(req3.subarray(0, 20).some((b) => b >= 0xbe), 'dynamic table references');
  socket.write(frame(0x1, 0x5, 3, req3));
  await until(() => seen.length === 2 && answers.has(3));
  assert.deepEqual(seen[1], expected(pseudo('/pkg.Svc/Two'), { ...base, 'x-custom': 'two' }));

  // a smaller table: the size update first, then fields nghttp2 still resolves
  enc.setPeerMaxTableSize(64);
  const req5 = enc.encode(pseudo('/pkg.Svc/Three'), { ...base, 'x-custom': 'three' });
  assert.deepEqual([...req5.subarray(0, 2)], [0x3f, 64 - 31]);
  socket.write(frame(0x1, 0x5, 5, req5));
  await until(() => seen.length === 3 && answers.has(5));
  assert.deepEqual(seen[2], expected(pseudo('/pkg.Svc/Three'), { ...base, 'x-custom': 'three' }));

  // its answers, decoded here: Huffman (the 300 z's are not in the block as such) and its table
  // (the later answers mostly references to entries the first one added)
  for (const id of [1, 3, 5]) assert.deepEqual(answers.get(id)?.fields, answerFields(id), `answer on stream ${id}`);
  const [a1, a3] = [answers.get(1)!.block, answers.get(3)!.block];
  assert.equal(a1.includes(Buffer.from('z'.repeat(300))), false, 'x-long went Huffman-coded');
  assert.ok(a3.length * 4 < a1.length, `second answer ${a3.length} bytes, first ${a1.length}`);
  assert.deepEqual(goaway, []);
});

// ---- hostile blocks -----------------------------------------------------------------------------

test('hostile blocks: bad indexes, oversized integers, strings past the end', async () => {
  const d = new HpackDecoder();
  rejects(d, Buffer.from([0x80]), /index 0/);
  rejects(d, Buffer.from([0xbe]), /past the table/); // 62 with an empty table
  rejects(d, Buffer.from([0xff, 0x00]), /past the table/); // 127
  rejects(d, Buffer.from([0x7e, 0x00]), /past the table/); // a literal's name index 62
  rejects(d, Buffer.from([0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]), /longer than 5/);
  rejects(d, Buffer.from([0xff, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]), /longer than 5/);
  rejects(d, Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]), /over 2\^31-1/); // 2^32 + 126 in 5
  rejects(d, Buffer.from([0xff, 0xff]), /past the end/); // an integer cut short
  rejects(d, Buffer.from([0x00, 0x05, 0x61, 0x62]), /past the end/); // a 5-byte name with 2 there
  rejects(d, Buffer.from([0x00, 0x01, 0x61, 0x7f, 0xff, 0xff, 0xff, 0x07]), /past the end/); // a 2^31-byte value
  rejects(d, Buffer.from([0x41]), /past the end/); // a name index and no value
  rejects(d, Buffer.from([0x00, 0x01, 0x61]), /past the end/);
  // the largest index that fits, on an empty table: refused as past it, not as an integer
  rejects(d, Buffer.from([0xff, 0x80, 0xff, 0xff, 0xff, 0x07]), /past the table/);
  // the decoder is still usable: an error is the connection's end, but nothing in it was corrupted
  assert.deepEqual(d.decode(Buffer.from([0x82])), [':method', 'GET']);
});

test('hostile blocks: Huffman with EOS inside, padding over 7 bits, padding not all ones', async () => {
  const d = new HpackDecoder();
  // a literal without indexing, new name: Huffman name bytes, then an empty raw value
  const named = (...huff: number[]): Buffer => Buffer.from([0x00, 0x80 | huff.length, ...huff, 0x00]);
  assert.deepEqual(d.decode(named(0x1f)), ['a', ''], "'a' (00011) and 3 bits of EOS's ones");
  assert.deepEqual(d.decode(Buffer.from([0x00, 0x80, 0x00])), ['', ''], 'an empty Huffman string');
  rejects(d, named(0x18), /padding/); // 'a' and 000
  rejects(d, named(0x1d), /padding/); // 'a' and 101
  rejects(d, named(0x1f, 0xff), /padding/); // 'a' and 11 ones
  rejects(d, named(0xff), /padding/); // 8 ones alone
  rejects(d, named(0x00, 0x00), /padding/); // '0' '0' '0' and a cut code
  // EOS (30 ones), then 'a', then 5 ones of padding
  rejects(d, named(0xff, 0xff, 0xff, 0xfc, 0x7f), /EOS/);
  rejects(d, named(0xff, 0xff, 0xff, 0xff), /EOS/);
  // valid Huffman everywhere else still decodes after all this
  assert.deepEqual(d.decode(hex('828684418cf1e3c2e5f23a6ba0ab90f4ff')), C3_1);
});

test('hostile blocks: table size updates over the limit or after a field', async () => {
  const d = new HpackDecoder(4096);
  assert.deepEqual(d.decode(Buffer.from([0x3f, 0xe1, 0x1f, 0x82])), [':method', 'GET'], 'to 4096: allowed');
  rejects(d, Buffer.from([0x3f, 0xe2, 0x1f]), /over 4096/); // 4097
  rejects(d, Buffer.from([0x82, 0x20]), /after a field/);
  assert.deepEqual(d.decode(Buffer.from([0x20, 0x3f, 0xe1, 0x1f, 0x82])), [':method', 'GET'], 'two at the start: allowed');
  // a table of 0: an indexed literal is not kept
  assert.deepEqual(d.decode(Buffer.from([0x20, 0x40, 0x01, 0x61, 0x01, 0x62])), ['a', 'b']);
  rejects(d, Buffer.from([0xbe]), /past the table/);
  const small = new HpackDecoder(100);
  rejects(small, Buffer.from([0x3f, 0x46]), /over 100/); // 101
  assert.deepEqual(small.decode(Buffer.from([0x3f, 0x45])), []); // 100
});

test('a header list over the limit: HpackListTooLarge after the whole block, the table in sync', async () => {
  // three indexed fields of 34 bytes each: 102
  const three = Buffer.from([0x40, 0x01, 0x61, 0x01, 0x31, 0x40, 0x01, 0x62, 0x01, 0x32, 0x40, 0x01, 0x63, 0x01, 0x33]);
  const d = new HpackDecoder(4096, 100);
  assert.throws(() => d.decode(three), (e: unknown) => e instanceof HpackListTooLarge && !(e instanceof HpackError) && e.code === 'HPACK_LIST_TOO_LARGE');
  // all three went into the table: newest first
  assert.deepEqual(d.decode(Buffer.from([0xbe])), ['c', '3']);
  assert.deepEqual(d.decode(Buffer.from([0xc0, 0xbf])), ['a', '1', 'b', '2']);
  // indexed references count as much as literals
  assert.throws(() => d.decode(Buffer.from([0xbe, 0xbf, 0xc0])), HpackListTooLarge);
  // exactly at the limit is fine
  assert.deepEqual(new HpackDecoder(4096, 102).decode(three), ['a', '1', 'b', '2', 'c', '3']);
  // a malformed block is HpackError even when over the limit before the fault
  rejects(new HpackDecoder(4096, 10), Buffer.from([0x82, 0x80]), /index 0/);
});
