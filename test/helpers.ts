// Test helpers: a real `berth up` process on port 0 with its own BERTH_HOME, and a
// client that talks to it over real HTTP, the way users do.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

export const ROOT = resolve(import.meta.dirname, '..');
export const CLI = [process.execPath, '--import', 'tsx', join(ROOT, 'src/cli/main.ts')];
export const PYTHON = process.env.BERTH_PYTHON ?? '/usr/bin/python3';

export interface Berth {
  url: string;
  home: string;
  token: string;
  proc: ChildProcess;
  output: () => string;
  request: (method: string, path: string, body?: unknown, headers?: Record<string, string>) => Promise<{ status: number; body: any; headers: Headers }>;
  cli: (...args: string[]) => { status: number | null; stdout: string; stderr: string };
  stop: (signal?: NodeJS.Signals) => Promise<number | null>;
}

export function tempHome(): string {
  return mkdtempSync(join(tmpdir(), 'berth-test-'));
}

/**
 * Starts `berth up` in a child process and waits until it listens. `o.prefix`: a command it runs
 * under (e.g. nsenter into a test host's network namespace); `o.args`: more `berth up` flags.
 */
/** `o.cli`: the command instead of CLI (the benchmarks run the built one: bench/lib.ts berthCommand). */
export async function startBerth(home = tempHome(), extraEnv: Record<string, string> = {}, o: { prefix?: string[]; args?: string[]; cli?: string[] } = {}): Promise<Berth> {
  const argv = [...(o.prefix ?? []), ...(o.cli ?? CLI), 'up', '--port', '0', '--home', home, ...(o.args ?? [])];
  const proc = spawn(argv[0]!, argv.slice(1), {
    env: { ...process.env, BERTH_HOME: home, BERTH_PYTHON: PYTHON, ...extraEnv },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  proc.stdout!.on('data', (d) => { output += d; });
  proc.stderr!.on('data', (d) => { output += d; });
  const url = await new Promise<string>((resolveUrl, reject) => {
    // generous: with gateway workers each one loads the code too, and CI machines are shared
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`berth up did not start in 60s:\n${output}`)); }, 60_000);
    const check = (): void => {
      const m = /listening on (http:\/\/\S+)/.exec(output);
      if (m) { clearTimeout(timer); resolveUrl(m[1]!); }
    };
    proc.stdout!.on('data', check);
    proc.once('exit', (code) => { clearTimeout(timer); reject(new Error(`berth up exited with ${code}:\n${output}`)); });
  });
  const token = readFileSync(join(home, 'admin-token'), 'utf8').trim();
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  const b: Berth = {
    url, home, token, proc,
    output: () => output,
    request: async (method, path, body, headers = {}) => {
      const res = await fetch(url + path, {
        method,
        headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
        body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
      });
      const text = await res.text();
      let parsed: unknown = text;
      try { parsed = JSON.parse(text); } catch { /* keep text */ }
      return { status: res.status, body: parsed, headers: res.headers };
    },
    cli: (...args) => {
      const r = spawnSync(CLI[0]!, [...CLI.slice(1), ...args], {
        env: { ...process.env, BERTH_HOME: home, BERTH_URL: url, BERTH_TOKEN: '' }, encoding: 'utf8', timeout: 120_000,
      });
      return { status: r.status, stdout: r.stdout, stderr: r.stderr };
    },
    stop: async (signal = 'SIGTERM') => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      const timer = setTimeout(() => proc.kill('SIGKILL'), 40_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
  return b;
}

export function removeHome(home: string): void {
  rmSync(home, { recursive: true, force: true });
}

export const RANDOMIZER_SCRIPT = readFileSync(join(ROOT, 'examples/randomizer.py'), 'utf8');

/** Makes and pins a checkpoint from cells, returns its id. */
export async function makeCheckpoint(b: Berth, name: string, cells: string[] | string): Promise<string> {
  const body = typeof cells === 'string' ? { script: cells, name } : { cells, name };
  const r = await b.request('POST', '/v1/checkpoints', body);
  if (r.status !== 201) throw new Error(`checkpoint ${name}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body.id;
}

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 30_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) { last = err; }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last}` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * What a killed home may fail: the calls that were on it when it died, and nothing after. The
 * callers (each calling one after another, over one connection pool) lose the call each had
 * running there (on a connection to the killed worker, or relayed to the home by the other), and
 * a call sent at that instant on a pooled connection to the killed worker that no one had used
 * since (the client has not read its end yet: one per such connection, at most one per caller's
 * connection), or relayed by the surviving worker before it had read the home's end. Each failure
 * is one of those two kinds, and all of them come right after the kill.
 */
export function checkKilledHomeFailures<T extends { at: number }>(failed: T[], killedAt: number, callers: number,
  broken: (f: T) => boolean, relayed: (f: T) => boolean): void {
  for (const f of failed) {
    assert.ok(broken(f) || relayed(f), `a failure is a broken connection or the relayed call's answer: ${JSON.stringify(f)}`);
    assert.ok(f.at >= killedAt && f.at < killedAt + 2000, `a call failed ${f.at - killedAt} ms from the kill: only the calls around it may (${JSON.stringify(f)})`);
  }
  assert.ok(failed.length <= 2 * callers, `at most the running calls and one per pooled connection failed: ${failed.length} of ${callers} callers`);
}

/** With gateway workers: the worker holding a node's sessions once the primary has homed it there (cluster/call-relay.ts), and the other. */
export async function homeOf(b: Berth, nodeId: string): Promise<{ home: any; other: any }> {
  return waitFor(`node ${nodeId} homed at one worker`, async () => {
    const s = (await b.request('GET', '/v1/gateway')).body;
    const home = s.workers?.find((w: any) => w.homeOf.includes(nodeId));
    return home && s.workers.length === 2 ? { home, other: s.workers.find((w: any) => w !== home) } : undefined;
  }, 15_000);
}

export async function createNode(b: Berth, spec: Record<string, unknown>, waitHealthy = true): Promise<any> {
  const r = await b.request('POST', '/v1/nodes', spec);
  if (r.status !== 201) throw new Error(`create node: ${r.status} ${JSON.stringify(r.body)}`);
  if (!waitHealthy) return r.body;
  return waitFor(`node ${r.body.id} Healthy`, async () => {
    const n = await b.request('GET', `/v1/nodes/${r.body.id}`);
    return n.body.status === 'Healthy' ? n.body : undefined;
  }, 60_000);
}

export async function execute(b: Berth, nodeId: string, input: unknown, folder = 'default', token?: string): Promise<{ status: number; body: any; headers: Headers }> {
  return b.request('POST', `/datasphere/v1/nodes/${nodeId}:execute`, { folder_id: folder, input },
    token !== undefined ? { authorization: token } : {});
}

/** A bounded load: `count` calls at most, `concurrency` at a time, stops after `maxMs` regardless. */
export async function runLoad<T>(count: number, concurrency: number, maxMs: number, call: (i: number) => Promise<T>): Promise<T[]> {
  const results: T[] = [];
  const deadline = Date.now() + maxMs;
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count && Date.now() < deadline) {
      const i = next++;
      results[i] = await call(i);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return results;
}
