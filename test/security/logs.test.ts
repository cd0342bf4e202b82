// Issue 7, "Logs are bounded": a cell printing ~100 MB leaves its log under the cap, reading
// logs meanwhile is quick and keeps the server's memory flat, calls to other nodes stay fast,
// tails are exact across a rotation, `-f` follows, and another folder's token reads nothing.
// Also unit tests of the backwards tail reader and of the line writer on files made here.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, PYTHON, startBerth, removeHome, makeCheckpoint, createNode, execute, waitFor, type Berth } from '../helpers.js';
import { InstanceLog, tailLines, rotatedPaths, type LogLimits } from '../../src/runtimes/log-file.js';
import { DockerRuntime, containerName } from '../../src/runtimes/docker.js';
import { newId } from '../../src/core/ids.js';
import { docker, removeContainersOfHome, requireDocker } from '../docker-support.js';
import { buildTestImages, TEST_IMAGES } from '../images/index.js';

/** The reference: split the whole text (what the old code did), last n lines. */
function naiveTail(texts: string[], n: number): string {
  const all: string[] = [];
  for (const t of [...texts].reverse()) { // oldest first
    if (t.length === 0) continue;
    const parts = t.split('\n');
    if (parts[parts.length - 1] === '') parts.pop();
    all.push(...parts);
  }
  const last = all.slice(-n);
  return last.length ? last.join('\n') + '\n' : '';
}

describe('tail reader (files made by the test)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-tail-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const file = (name: string, text: string | Buffer): string => { const p = join(dir, name); writeFileSync(p, text); return p; };

  test('empty file, missing file', async () => {
    assert.deepEqual(await tailLines([file('empty.log', '')], 10), { text: '', lines: 0, truncated: false });
    assert.equal((await tailLines([join(dir, 'nope.log')], 10)).text, '');
  });

  test('no trailing newline; N larger than the file; blank lines', async () => {
    const p = file('a.log', 'one\ntwo\nthree');
    assert.equal((await tailLines([p], 1)).text, 'three\n');
    assert.equal((await tailLines([p], 2)).text, 'two\nthree\n');
    assert.equal((await tailLines([p], 1000)).text, 'one\ntwo\nthree\n');
    assert.equal((await tailLines([file('nl.log', '\n\n')], 5)).text, '\n\n');
    assert.equal((await tailLines([file('x.log', 'x\n\ny\n')], 2)).text, '\ny\n');
  });

  test('lines spanning 64 KB blocks, compared with splitting the whole file', async () => {
    let seed = 7;
    const rnd = (n: number): number => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n; };
    for (let round = 0; round < 12; round++) {
      const lines: string[] = [];
      const count = 1 + rnd(400);
      for (let i = 0; i < count; i++) {
        const len = rnd(10) === 0 ? 60_000 + rnd(150_000) : rnd(300); // some lines longer than a block
        lines.push(`${round}-${i}:` + 'abcdefghij'.repeat(Math.ceil(len / 10)).slice(0, len));
      }
      const text = lines.join('\n') + (rnd(2) ? '\n' : '');
      const p = file(`r${round}.log`, text);
      for (const n of [1, 2, 3, 17, count - 1, count, count + 5]) {
        if (n < 1) continue;
        const got = await tailLines([p], n, { maxBytes: 64 * 1024 * 1024 });
        assert.equal(got.text, naiveTail([text], n), `round ${round}, n=${n}`);
      }
    }
  });

  test('across rotated files (newest first), and a search', async () => {
    const cur = file('rot.log', 'l5\nl6 match\nl7\n');
    file('rot.log.1', 'l2\nl3 match\nl4\n');
    file('rot.log.2', 'l0 match\nl1\n');
    const paths = rotatedPaths(cur, 3);
    assert.deepEqual(paths, [cur, `${cur}.1`, `${cur}.2`]);
    assert.equal((await tailLines(paths, 5)).text, 'l3 match\nl4\nl5\nl6 match\nl7\n');
    assert.equal((await tailLines(paths, 100)).text, 'l0 match\nl1\nl2\nl3 match\nl4\nl5\nl6 match\nl7\n');
    assert.equal((await tailLines(paths, 2, { search: 'match' })).text, 'l3 match\nl6 match\n');
    assert.equal((await tailLines(paths, 9, { search: 'match' })).text, 'l0 match\nl3 match\nl6 match\n');
    assert.equal((await tailLines(paths, 9, { search: 'absent' })).text, '');
  });

  test('the byte bound leaves older lines out and says so', async () => {
    const p = file('big.log', ('z'.repeat(999) + '\n').repeat(100));
    const r = await tailLines([p], 100, { maxBytes: 10_000 });
    assert.equal(r.lines, 10);
    assert.equal(r.truncated, true);
  });
});

describe('log writer (a real Python process writing through pipes)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-logw-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  const run = async (code: string, limits: LogLimits): Promise<string> => {
    const path = join(dir, `${Math.random().toString(36).slice(2)}.log`);
    const log = new InstanceLog(path, limits, 'starting test');
    const child = spawn(PYTHON, ['-u', '-c', code], { stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<{ code: number | null; signal: string | null }>((r) => child.once('exit', (c, s) => r({ code: c, signal: s })));
    log.attach([child.stdout, child.stderr], exited);
    await log.ended;
    return path;
  };

  test('rotates at the cap, keeps K files, the tail is exact', async () => {
    const limits = { maxBytes: 64 * 1024, files: 3 };
    const path = await run("import sys\nfor i in range(30000): sys.stdout.write('n%d\\n' % i)", limits);
    const files = readdirSync(dir).filter((f) => f.startsWith(path.split('/').pop()!));
    assert.equal(files.length, 3, files.join(' '));
    for (const f of files) assert.ok(statSync(join(dir, f)).size <= limits.maxBytes, `${f} is ${statSync(join(dir, f)).size} bytes`);
    const tail = (await tailLines(rotatedPaths(path, 3), 4)).text.split('\n');
    assert.deepEqual(tail.slice(0, 3), ['n29997', 'n29998', 'n29999']);
    assert.match(tail[3]!, /^\[berth\] \S+ instance exited with code 0$/);
  });

  test('a print per call, thousands of them: every line lands once, in order, stdout and stderr alike', async () => {
    // lines read while a write is in flight (or held for a moment after one) go out in one write
    const path = await run([
      'import sys',
      "for i in range(6000): print('p%d' % i); print('e%d' % i, file=sys.stderr) if i % 100 == 0 else None",
    ].join('\n'), { maxBytes: 1024 * 1024, files: 2 });
    const lines = readFileSync(path, 'utf8').split('\n');
    assert.deepEqual(lines.filter((l) => l.startsWith('p')), Array.from({ length: 6000 }, (_, i) => `p${i}`));
    assert.deepEqual(lines.filter((l) => l.startsWith('e')), Array.from({ length: 60 }, (_, i) => `e${i * 100}`));
    assert.match(lines.at(-2)!, /^\[berth\] \S+ instance exited with code 0$/);
  });

  test('stdout and stderr lines stay whole; an over-long line is cut with a marker', async () => {
    const path = await run([
      'import sys',
      "sys.stdout.write('out-a'); sys.stderr.write('err-line\\n'); sys.stdout.write('-b\\n')",
      "sys.stdout.write('L' * 100000 + '\\nafter\\n')",
      "sys.stdout.write('no newline at the end')",
    ].join('\n'), { maxBytes: 1024 * 1024, files: 2 });
    const text = readFileSync(path, 'utf8');
    const lines = text.split('\n');
    assert.match(lines[0]!, /^\[berth\] .* starting test$/);
    assert.ok(lines.includes('err-line') && lines.includes('out-a-b'), JSON.stringify(text.replace(/L{100,}/, 'L…')));
    const cut = lines.find((l) => l.startsWith('LLLL'))!;
    assert.equal(cut, 'L'.repeat(16 * 1024) + ` [berth: line cut, ${100000 - 16 * 1024} more bytes dropped]`);
    assert.ok(lines.includes('after'));
    assert.ok(lines.includes('no newline at the end'));
  });
});

// ---- against a real `berth up` ----

const CAP = 1024 * 1024;
const FILES = 2;
const PRINTER = [
  "import sys\nmb, count, marker = 0, 0, ''  # the serving cell also runs when the checkpoint is made",
  [
    'if marker:',
    '    print(marker)',
    'if count:',
    "    sys.stdout.write(''.join('seq-%d %s\\n' % (i, 'y' * 200) for i in range(count)))",
    "block = ('x' * 99 + '\\n') * 10000",
    'for _ in range(mb):',
    '    sys.stdout.write(block)',
    'done = 1',
  ].join('\n'),
];

function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

function dirBytes(dir: string): number {
  if (!existsSync(dir)) return 0;
  return readdirSync(dir).reduce((s, f) => s + statSync(join(dir, f)).size, 0);
}

function p99(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(s.length * 0.99))]!;
}

describe('bounded logs on a real berth up', () => {
  let b: Berth;
  let printer: any;
  let echo: any;
  const print = (input: { mb?: number; count?: number; marker?: string }): ReturnType<typeof execute> =>
    execute(b, printer.id, { mb: 0, count: 0, marker: '', ...input });

  before(async () => {
    b = await startBerth(undefined, { BERTH_LOG_MAX_BYTES: String(CAP), BERTH_LOG_FILES: String(FILES) });
    await makeCheckpoint(b, 'printer', PRINTER);
    await makeCheckpoint(b, 'echo', ['x = 0', 'y = x']);
    printer = await createNode(b, {
      kind: 'cell', name: 'printer', checkpointId: 'printer', timeout: 300,
      inputs: [{ name: 'mb', type: 'int' }, { name: 'count', type: 'int' }, { name: 'marker', type: 'str' }], outputs: [{ name: 'done', type: 'int' }],
    });
    echo = await createNode(b, { kind: 'cell', name: 'echo', checkpointId: 'echo', inputs: [{ name: 'x', type: 'int' }], outputs: [{ name: 'y', type: 'int' }] });
  });
  after(async () => {
    await b?.stop();
    if (b) removeHome(b.home);
  });

  test('a cell printing 100 MB: log under the cap, reads quick, memory flat, other calls fast', async () => {
    const pid = b.proc.pid!;
    for (let i = 0; i < 20; i++) await execute(b, echo.id, { x: i }); // warm
    const rssBefore = rssMb(pid);
    const started = Date.now();
    let printing = true;
    const big = print({ mb: 100 }).finally(() => { printing = false; });
    const readMs: number[] = [];
    const callMs: number[] = [];
    let rssPeak = rssBefore;
    const reader = (async () => {
      while (printing && readMs.length < 300) {
        const t = performance.now();
        const r = await b.request('GET', `/v1/nodes/${printer.id}/logs?lines=10000`);
        readMs.push(performance.now() - t);
        assert.equal(r.status, 200);
        rssPeak = Math.max(rssPeak, rssMb(pid));
        await new Promise((res) => setTimeout(res, 100));
      }
    })();
    const caller = (async () => {
      while (printing && callMs.length < 3000) {
        const t = performance.now();
        const r = await execute(b, echo.id, { x: 1 });
        callMs.push(performance.now() - t);
        assert.equal(r.status, 200);
      }
    })();
    const res = await big;
    await Promise.all([reader, caller]);
    const seconds = (Date.now() - started) / 1000;
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const logDir = join(b.home, 'logs', printer.id);
    const onDisk = dirBytes(logDir);
    console.log(`# printed 100 MB in ${seconds.toFixed(1)}s; log dir ${(onDisk / 1024).toFixed(0)} KB (cap ${FILES} × ${CAP / 1024} KB); ` +
      `${readMs.length} reads of 10,000 lines, max ${Math.max(...readMs).toFixed(0)} ms; ` +
      `${callMs.length} calls to another node, p99 ${p99(callMs).toFixed(1)} ms; server RSS ${rssBefore.toFixed(0)} → peak ${rssPeak.toFixed(0)} MB`);
    assert.ok(onDisk <= FILES * CAP, `log directory holds ${onDisk} bytes, over ${FILES} × ${CAP}`);
    assert.ok(existsSync(join(logDir, `${printer.instances[0].id}.log.1`)), 'the log was rotated');
    assert.ok(readMs.length >= 3, `only ${readMs.length} reads happened while it printed`);
    assert.ok(Math.max(...readMs) < 2000, `a read took ${Math.max(...readMs)} ms`);
    assert.ok(rssPeak - rssBefore < 150, `server RSS grew from ${rssBefore} to ${rssPeak} MB`);
    assert.ok(callMs.length >= 20, `only ${callMs.length} calls happened while it printed`);
    assert.ok(p99(callMs) < 300, `p99 of calls to another node was ${p99(callMs)} ms while a cell printed`);
  });

  test('the tail is exactly the last N lines, across a rotation', async () => {
    const count = 12_000; // ~2.5 MB: the current file and .1 both hold seq lines
    const r = await print({ count });
    assert.equal(r.status, 200);
    const inst = printer.instances[0].id;
    await waitFor('the last line in the log', async () =>
      (await b.request('GET', `/v1/nodes/${printer.id}/logs?lines=1&search=seq-`)).body.logs[0].text.startsWith(`seq-${count - 1} `), 30_000);
    const current = readFileSync(join(b.home, 'logs', printer.id, `${inst}.log`), 'utf8').split('\n').filter(Boolean).length;
    const n = current + 1000;
    assert.ok(n <= 10_000 && n < count, `n=${n}`);
    const got = await b.request('GET', `/v1/nodes/${printer.id}/logs?lines=${n}`);
    const lines = got.body.logs[0].text.split('\n');
    assert.equal(lines.pop(), '');
    assert.equal(lines.length, n);
    lines.forEach((l: string, i: number) => assert.equal(l, `seq-${count - n + i} ${'y'.repeat(200)}`, `line ${i}`));

    const bad = await b.request('GET', `/v1/nodes/${printer.id}/logs?lines=10001`);
    assert.equal(bad.status, 400);
    assert.equal(bad.body.details.field, 'lines');
  });

  test('follow (API and `berth node logs -f`) sees lines printed after it started', async () => {
    const ac = new AbortController();
    const res = await fetch(`${b.url}/v1/nodes/${printer.id}/logs?follow=true&lines=1`, { headers: { authorization: `Bearer ${b.token}` }, signal: ac.signal });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain/);
    const reader = res.body!.getReader();
    let seen = '';
    const readUntil = async (what: string): Promise<void> => {
      const deadline = Date.now() + 20_000;
      while (!seen.includes(what)) {
        assert.ok(Date.now() < deadline, `no "${what}" in the follow stream: ${seen.slice(-500)}`);
        const { value, done } = await reader.read();
        assert.ok(!done, `the follow stream ended before "${what}"`);
        seen += Buffer.from(value).toString('utf8');
      }
    };
    await readUntil('\n'); // the one-line tail: subscribed from here on
    const marker = `followed-${Date.now()}`;
    assert.equal((await print({ marker })).status, 200);
    await readUntil(marker);
    ac.abort();

    // the CLI, as a user runs it
    const cli = spawn(CLI[0]!, [...CLI.slice(1), 'node', 'logs', 'printer', '-f', '--lines', '1'],
      { env: { ...process.env, BERTH_URL: b.url, BERTH_TOKEN: b.token }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    cli.stdout.on('data', (d) => { out += d; });
    cli.stderr.on('data', (d) => { out += d; });
    try {
      await waitFor('the CLI tail', async () => out.includes('\n'), 30_000, 50);
      const marker2 = `cli-followed-${Date.now()}`;
      assert.equal((await print({ marker: marker2 })).status, 200);
      await waitFor(`"${marker2}" from berth node logs -f`, async () => out.includes(marker2), 20_000, 50);
    } finally {
      cli.kill('SIGINT');
    }
  });

  test('a follow ends when the node is deleted', async () => {
    await makeCheckpoint(b, 'brief', ['x = 0', 'y = x']);
    const n = await createNode(b, { kind: 'cell', name: 'brief', checkpointId: 'brief', inputs: [{ name: 'x', type: 'int' }], outputs: [{ name: 'y', type: 'int' }] });
    const res = await fetch(`${b.url}/v1/nodes/${n.id}/logs?follow=true`, { headers: { authorization: `Bearer ${b.token}` } });
    assert.equal(res.status, 200);
    const text = res.text();
    assert.equal((await b.request('DELETE', `/v1/nodes/${n.id}`)).status, 200);
    const all = await Promise.race([text, new Promise<string>((_, rej) => setTimeout(() => rej(new Error('follow still open 15s after the delete')), 15_000))]);
    assert.match(all, /starting instance/);
  });

  test("another folder's token cannot read or follow the logs (404)", async () => {
    const t = await b.request('POST', '/v1/tokens', { name: 'other', folders: ['other-team'] });
    assert.equal(t.status, 201);
    for (const q of ['', '?lines=5', '?follow=true', `?instance=${printer.instances[0].id}`]) {
      const r = await b.request('GET', `/v1/nodes/${printer.id}/logs${q}`, undefined, { authorization: `Bearer ${t.body.token}` });
      assert.equal(r.status, 404, `${q}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.code, 'NODE_NOT_FOUND');
      assert.ok(!JSON.stringify(r.body).includes('seq-'), 'no log text in the refusal');
    }
    const byName = await b.request('GET', '/v1/nodes/printer/logs', undefined, { authorization: `Bearer ${t.body.token}` });
    assert.equal(byName.status, 404);
  });
});

describe('Docker runtime: container logs capped, tail only, follow', { timeout: 180_000 }, () => {
  test('json-file max-size/max-file from the settings; logs() tail; follow sees the exit line and ends', async (t) => {
    if (!(await requireDocker(t))) return;
    await buildTestImages(['http-echo']);
    const home = mkdtempSync(join(tmpdir(), 'berth-dlog-'));
    const rt = new DockerRuntime(home, { logLimits: { maxBytes: 65536, files: 3 } });
    const s = { nodeId: newId(), instanceId: newId(), revision: 1, workload: { kind: 'image' as const, image: TEST_IMAGES['http-echo'], registryAuth: null, env: {}, ports: [8080] }, resources: { cores: 0.5, memoryGb: 0.25, gpus: 0 } };
    const inst = await rt.start(s);
    try {
      const info = await docker().getContainer(containerName(s.instanceId)).inspect();
      assert.deepEqual(info.HostConfig.LogConfig, { Type: 'json-file', Config: { 'max-size': '65536', 'max-file': '3' } });
      await waitFor('the listening line', async () => (await rt.logs(s.nodeId, s.instanceId, 1)).includes('http-echo listening on 8080'), 20_000);
      assert.equal((await rt.logs(s.nodeId, s.instanceId, 1)).split('\n').filter(Boolean).length, 1);
      assert.match(await rt.logs(s.nodeId, s.instanceId, 50, { search: 'listening' }), /^http-echo listening/);
      let followed = '';
      const ended = new Promise<void>((resolveEnd) => rt.follow(s.nodeId, s.instanceId, (c) => { followed += c.toString('utf8'); }, resolveEnd));
      await new Promise((r) => setTimeout(r, 500)); // Docker's follow stream is open
      await rt.stop(inst, 5000);
      await Promise.race([ended, new Promise((_, rej) => setTimeout(() => rej(new Error('follow did not end')), 20_000))]);
      assert.match(followed, /http-echo: SIGTERM, exiting/);
    } finally {
      await rt.stop(inst, 1000).catch(() => undefined);
      await removeContainersOfHome(home).catch(() => undefined);
      rmSync(home, { recursive: true, force: true });
    }
  });
});
