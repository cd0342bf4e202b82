// One HTTP/2 frame, written by hand for tests that play a peer (test/unit/h2-upstream.test.ts,
// test/unit/hpack.test.ts): independent of the gateway's own frame writer under test.
export function frame(type: number, flags: number, streamId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(streamId, 5);
  return Buffer.concat([head, payload]);
}
