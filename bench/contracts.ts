// `npm run bench:contracts`: one cell node that doubles a 1×1000 float32 tensor, called the
// same way through every contract Berth serves, in one run with the same instance:
//   datasphere  POST /datasphere/v1/nodes/{id}:execute, the tensor as nested JSON lists (the anchor)
//   oip-json    POST /v2/models/{name}/infer, JSON tensor data
//   oip-binary  the same with the binary-data extension (raw float32 bytes both ways)
//   oip-grpc    inference.GRPCInferenceService/ModelInfer with raw_input_contents
//   typed-grpc  berth.nodes.v1.<Name>/Execute with a Tensor message (raw bytes)
// Closed loop, one call at a time (the node has one instance with one session, so more
// would only queue): calls per second, p50 and p99 latency, and the CPU Berth (server and
// worker) spends per call. Protocols take turns in short slices over several rounds, so a
// drift of the machine touches all alike; ratios against the anchor are what to read.
// Everything runs on 127.0.0.1, bounded by --seconds per slice and --rounds.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { Agent, request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import protobuf from 'protobufjs';
import { CLK_TCK, ROOT, berthCommand, gitHead, log, machine, percentile, posInt, procTicks, treeOf } from './lib.js';

const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i += 2) args.set(process.argv[i]!.replace(/^--/, ''), process.argv[i + 1] ?? '');
const SECONDS = posInt(args.get('seconds') ?? '3', 'seconds', 1, 60);
const ROUNDS = posInt(args.get('rounds') ?? '3', 'rounds', 1, 20);
const PYTHON = process.env.BERTH_PYTHON ?? '/usr/bin/python3';

const home = mkdtempSync(join(tmpdir(), 'berth-bench-contracts-'));
const [berthNode, ...berthCli] = berthCommand();
const berth = spawn(berthNode!, [...berthCli, 'up', '--port', '0', '--home', home], {
  cwd: ROOT, env: { ...process.env, BERTH_HOME: home, BERTH_PYTHON: PYTHON }, stdio: ['ignore', 'pipe', 'pipe'], detached: true,
});
let output = '';
berth.stdout!.on('data', (d) => { output += d; });
berth.stderr!.on('data', (d) => { output += d; });
const stopBerth = (): void => { try { process.kill(-berth.pid!, 'SIGTERM'); } catch { /* gone */ } };
process.once('SIGINT', () => { stopBerth(); process.exit(130); });

const agent = new Agent({ keepAlive: true, maxSockets: 4 });
let base = '';
let token = '';

function post(path: string, body: Buffer, headers: Record<string, string>): Promise<{ status: number; headers: Record<string, unknown>; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(base + path, { method: 'POST', agent, headers: { authorization: `Bearer ${token}`, 'content-length': body.length, ...headers }, timeout: 30_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.end(body);
  });
}

async function api(method: string, path: string, body?: unknown): Promise<any> {
  const r = await fetch(base + path, { method, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
  const j = await r.json();
  if (r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(j)}`);
  return j;
}

function unaryClient(target: string): grpc.Client {
  return new grpc.Client(target, grpc.credentials.createInsecure());
}
function grpcCall(client: grpc.Client, path: string, req: Buffer, md: grpc.Metadata): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(path, (b: Buffer) => b, (b: Buffer) => b, req, md, { deadline: Date.now() + 30_000 }, (err, res) => (err ? reject(err) : resolve(res!)));
  });
}

async function main(): Promise<void> {
  base = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`berth up did not start:\n${output}`)), 30_000);
    berth.stdout!.on('data', () => { const m = /listening on (http:\/\/\S+)/.exec(output); if (m) { clearTimeout(t); resolve(m[1]!); } });
  });
  token = readFileSync(join(home, 'admin-token'), 'utf8').trim();
  await api('POST', '/v1/checkpoints', { name: 'bench', cells: ['import numpy as np\nx = np.zeros((1, 1000), dtype=np.float32)\n', 'y = x * 2\n'] });
  const node = await api('POST', '/v1/nodes', {
    kind: 'cell', name: 'bench-model', checkpointId: 'bench',
    inputs: [{ name: 'x', type: 'ndarray[float32,-1,1000]' }], outputs: [{ name: 'y', type: 'ndarray[float32,-1,1000]' }],
  });
  for (let i = 0; i < 600; i++) {
    if ((await api('GET', `/v1/nodes/${node.id}`)).status === 'Healthy') break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const values = Array.from({ length: 1000 }, (_, i) => i / 7);
  const raw = Buffer.from(new Float32Array(values).buffer);
  const expected = new Float32Array(values).map((v) => v * 2);
  const target = base.replace(/^http:\/\//, '');
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${token}`);
  md.set('x-folder-id', 'default');

  // the protocols' messages, encoded once (what a client would send)
  const oipRoot = new protobuf.Root().loadSync(join(ROOT, 'proto/inference/grpc_predict_v2.proto'), { keepCase: true });
  const InferReq = oipRoot.lookupType('inference.ModelInferRequest');
  const InferRes = oipRoot.lookupType('inference.ModelInferResponse');
  const oipReq = Buffer.from(InferReq.encode(InferReq.fromObject({ model_name: 'bench-model', inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 1000] }], raw_input_contents: [raw] })).finish());
  const protoText = await (await fetch(`${base}/v1/nodes/${node.id}/node.proto`, { headers: { authorization: `Bearer ${token}` } })).text();
  const typedRoot = new protobuf.Root();
  protobuf.parse(readFileSync(join(ROOT, 'proto/google/protobuf/struct.proto'), 'utf8'), typedRoot, { keepCase: true });
  protobuf.parse(protoText, typedRoot, { keepCase: true });
  typedRoot.resolveAll();
  const TypedReq = typedRoot.lookupType('berth.nodes.v1.BenchModelRequest');
  const TypedRes = typedRoot.lookupType('berth.nodes.v1.BenchModelResponse');
  const typedReq = Buffer.from(TypedReq.encode(TypedReq.fromObject({ folder_id: 'default', input: { x: { dtype: 'float32', shape: [1, 1000], data: raw } } })).finish());
  const client = unaryClient(target);

  const dsBody = Buffer.from(JSON.stringify({ folder_id: 'default', input: { x: [values] } }));
  const oipJson = Buffer.from(JSON.stringify({ inputs: [{ name: 'x', shape: [1, 1000], datatype: 'FP32', data: values }] }));
  const binHead = Buffer.from(JSON.stringify({ inputs: [{ name: 'x', shape: [1, 1000], datatype: 'FP32', parameters: { binary_data_size: raw.length } }], parameters: { binary_data_output: true } }));
  const oipBin = Buffer.concat([binHead, raw]);
  const f32 = (b: Buffer): Float32Array => new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
  const check = (got: ArrayLike<number>, what: string): void => {
    if (got.length !== 1000 || Math.abs(got[999]! - expected[999]!) > 1e-3) throw new Error(`${what}: wrong answer`);
  };

  const calls: Record<string, () => Promise<void>> = {
    datasphere: async () => {
      const r = await post(`/datasphere/v1/nodes/${node.id}:execute`, dsBody, { 'content-type': 'application/json' });
      if (r.status !== 200) throw new Error(`datasphere ${r.status} ${r.body}`);
      check(JSON.parse(r.body.toString()).output.y[0], 'datasphere');
    },
    'oip-json': async () => {
      const r = await post('/v2/models/bench-model/infer', oipJson, { 'content-type': 'application/json', 'x-folder-id': 'default' });
      if (r.status !== 200) throw new Error(`oip-json ${r.status} ${r.body}`);
      check(JSON.parse(r.body.toString()).outputs[0].data, 'oip-json');
    },
    'oip-binary': async () => {
      const r = await post('/v2/models/bench-model/infer', oipBin, { 'content-type': 'application/octet-stream', 'x-folder-id': 'default', 'inference-header-content-length': String(binHead.length) });
      if (r.status !== 200) throw new Error(`oip-binary ${r.status} ${r.body}`);
      const n = Number(r.headers['inference-header-content-length']);
      check(f32(r.body.subarray(n)), 'oip-binary');
    },
    'oip-grpc': async () => {
      const res = InferRes.decode(await grpcCall(client, '/inference.GRPCInferenceService/ModelInfer', oipReq, md)) as unknown as { raw_output_contents: Buffer[] };
      check(f32(Buffer.from(res.raw_output_contents[0]!)), 'oip-grpc');
    },
    'typed-grpc': async () => {
      const res = TypedRes.decode(await grpcCall(client, '/berth.nodes.v1.BenchModel/Execute', typedReq, md)) as unknown as { output: { y: { data: Uint8Array } } };
      check(f32(Buffer.from(res.output.y.data)), 'typed-grpc');
    },
  };

  const names = Object.keys(calls);
  const lat: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
  const cpuTicks: Record<string, number> = Object.fromEntries(names.map((n) => [n, 0]));
  const wall: Record<string, number> = Object.fromEntries(names.map((n) => [n, 0]));
  const berthTicks = (): number => treeOf(berth.pid!).reduce((s, p) => s + (procTicks(p) ?? 0), 0);
  log('warming up every protocol');
  for (const n of names) for (let i = 0; i < 50; i++) await calls[n]!();
  for (let round = 0; round < ROUNDS; round++) {
    // a different order each round, so no protocol always follows the same one
    const order = names.map((_, i) => names[(i + round) % names.length]!);
    for (const n of order) {
      const t0 = performance.now();
      const c0 = berthTicks();
      while (performance.now() - t0 < SECONDS * 1000) {
        const s = performance.now();
        await calls[n]!();
        lat[n]!.push(performance.now() - s);
      }
      cpuTicks[n]! += berthTicks() - c0;
      wall[n]! += performance.now() - t0;
    }
    log(`round ${round + 1}/${ROUNDS} done`);
  }
  client.close();

  const anchor = lat.datasphere!.length / wall.datasphere!;
  const rows = names.map((n) => {
    const l = Float64Array.from(lat[n]!).sort();
    const perS = (l.length / wall[n]!) * 1000;
    const cpuUsPerCall = (cpuTicks[n]! / CLK_TCK / l.length) * 1e6;
    return { protocol: n, calls: l.length, callsPerS: perS, p50ms: percentile(l, 50), p99ms: percentile(l, 99), vsAnchor: (l.length / wall[n]!) / anchor, cpuUsPerCall };
  });
  const m = machine();
  console.log(`\n1×1000 float32 tensor, one instance, one call at a time; ${ROUNDS} rounds × ${SECONDS} s per protocol; git ${gitHead()}; ${Object.entries(m).map(([k, v]) => `${k} ${v}`).join(', ')}\n`);
  console.log('| protocol | calls | calls/s | × datasphere | p50 ms | p99 ms | Berth CPU µs/call |');
  console.log('|---|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    console.log(`| ${r.protocol} | ${r.calls} | ${r.callsPerS.toFixed(0)} | ${r.vsAnchor.toFixed(2)} | ${r.p50ms.toFixed(2)} | ${r.p99ms.toFixed(2)} | ${r.cpuUsPerCall.toFixed(0)} |`);
  }
}

main().then(() => { stopBerth(); setTimeout(() => { rmSync(home, { recursive: true, force: true }); process.exit(0); }, 2000); },
  (err) => { console.error(err); console.error(output.slice(-3000)); stopBerth(); setTimeout(() => { rmSync(home, { recursive: true, force: true }); process.exit(1); }, 2000); });
