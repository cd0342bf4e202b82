// Docker for tests: whether a daemon is there (skip on a laptop without one, fail in CI), a
// throwaway private registry (Debian's `docker-registry` with htpasswd auth on 127.0.0.1),
// and cleanup of the containers a test's Berth home left behind.
import Docker from 'dockerode';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';

export const REGISTRY_BIN = process.env.BERTH_TEST_REGISTRY_BIN ?? '/usr/bin/docker-registry';
export const HTPASSWD_BIN = process.env.BERTH_TEST_HTPASSWD_BIN ?? '/usr/bin/htpasswd';

let client: Docker | null = null;
let available: Promise<string | null> | null = null;

export function docker(): Docker {
  client ??= new Docker();
  return client;
}

/** Why Docker cannot be used here, or null when a daemon answers. Asked once per process. */
export function dockerProblem(): Promise<string | null> {
  available ??= (async () => {
    const where = process.env.DOCKER_HOST || 'unix:///var/run/docker.sock';
    try {
      const ping = new Docker({ timeout: 3000 } as Docker.DockerOptions).ping();
      await Promise.race([ping, new Promise((_, reject) => setTimeout(() => reject(new Error('no answer within 3s')), 3500).unref())]);
      return null;
    } catch (err) {
      return `Docker daemon not reachable at ${where} (${(err as Error).message}): install docker.io and start dockerd`;
    }
  })();
  return available;
}

export async function dockerAvailable(): Promise<boolean> {
  return (await dockerProblem()) === null;
}

/**
 * Call first in a test that needs Docker. Without a daemon: in CI (`CI` set) the test fails,
 * elsewhere it is skipped with the reason printed. Returns whether the test should go on.
 */
export async function requireDocker(t: TestContext): Promise<boolean> {
  const problem = await dockerProblem();
  if (!problem) return true;
  if (process.env.CI) throw new Error(`CI must have Docker: ${problem}`);
  console.log(`# skipping "${t.name}": ${problem}`);
  t.skip(problem);
  return false;
}

/** Same, for a registry test: needs docker-registry and htpasswd too. */
export async function requireRegistryTools(t: TestContext): Promise<boolean> {
  if (!(await requireDocker(t))) return false;
  const missing = [REGISTRY_BIN, HTPASSWD_BIN].filter((bin) => spawnSync(bin, ['--help'], { timeout: 5000 }).error);
  if (!missing.length) return true;
  const problem = `${missing.join(' and ')} not found: apt-get install docker-registry apache2-utils`;
  if (process.env.CI) throw new Error(`CI must have them: ${problem}`);
  console.log(`# skipping "${t.name}": ${problem}`);
  t.skip(problem);
  return false;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

export interface Registry {
  /** `127.0.0.1:<port>`: the registry part of image references. */
  host: string;
  user: string;
  password: string;
  stop(): Promise<void>;
}

/**
 * A private registry on 127.0.0.1:<free port>, with htpasswd (bcrypt) auth and its storage
 * in a temp dir. Docker treats 127.0.0.0/8 registries as insecure (plain HTTP) by default.
 */
export async function startRegistry({ user, password }: { user: string; password: string }): Promise<Registry> {
  const dir = mkdtempSync(join(tmpdir(), 'berth-registry-'));
  const pw = spawnSync(HTPASSWD_BIN, ['-Bbn', user, password], { encoding: 'utf8', timeout: 20_000 });
  if (pw.status !== 0) throw new Error(`htpasswd failed: ${pw.stderr || pw.error}`);
  writeFileSync(join(dir, 'htpasswd'), pw.stdout);
  let lastError = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const host = `127.0.0.1:${port}`;
    writeFileSync(join(dir, 'config.yml'), [
      'version: 0.1',
      'log:',
      '  level: warn',
      '  accesslog:',
      '    disabled: true',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${join(dir, 'data')}`,
      '  delete:',
      '    enabled: true',
      'http:',
      `  addr: ${host}`,
      '  secret: berth-test-only',
      'auth:',
      '  htpasswd:',
      '    realm: berth-test',
      `    path: ${join(dir, 'htpasswd')}`,
      '',
    ].join('\n'));
    const proc = spawn(REGISTRY_BIN, ['serve', join(dir, 'config.yml')], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    proc.stdout!.on('data', (d) => { output += d; });
    proc.stderr!.on('data', (d) => { output += d; });
    const exited = new Promise<void>((r) => proc.once('exit', () => r()));
    if (await waitListening(host, proc, 15_000)) {
      return {
        host, user, password,
        stop: async () => {
          await stopProcess(proc, exited);
          rmSync(dir, { recursive: true, force: true });
        },
      };
    }
    await stopProcess(proc, exited);
    lastError = output.trim().split('\n').slice(-5).join('\n');
  }
  rmSync(dir, { recursive: true, force: true });
  throw new Error(`docker-registry did not start: ${lastError}`);
}

/** Waits until GET /v2/ answers (401 without credentials). */
async function waitListening(host: string, proc: ChildProcess, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline && proc.exitCode === null && proc.signalCode === null) {
    try {
      const res = await fetch(`http://${host}/v2/`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status === 401 || res.status === 200) return true;
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

async function stopProcess(proc: ChildProcess, exited: Promise<void>): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

/** Tags a local image as `<registry>/<repo>:<tag>` and pushes it with the registry's credentials. */
export async function pushToRegistry(source: string, registry: Registry, repo: string, tag = 'latest'): Promise<string> {
  const d = docker();
  const target = `${registry.host}/${repo}`;
  await d.getImage(source).tag({ repo: target, tag });
  const stream = await d.getImage(`${target}:${tag}`).push({
    authconfig: { username: registry.user, password: registry.password, serveraddress: registry.host },
  } as Docker.ImagePushOptions) as NodeJS.ReadableStream;
  await followOrThrow(stream, `push ${target}:${tag}`);
  return `${target}:${tag}`;
}

export async function followOrThrow(stream: NodeJS.ReadableStream, what: string, timeoutMs = 120_000): Promise<void> {
  const events = await new Promise<Array<{ error?: string; errorDetail?: { message?: string } }>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: no end within ${timeoutMs / 1000}s`)), timeoutMs);
    docker().modem.followProgress(stream, (err: Error | null, out: Array<{ error?: string }>) => {
      clearTimeout(timer);
      if (err) reject(err); else resolve(out);
    });
  });
  const failed = events.find((e) => e.error || e.errorDetail);
  if (failed) throw new Error(`${what}: ${failed.errorDetail?.message ?? failed.error}`);
}

/** Removes a local image tag if present (so that the next start really pulls). */
export async function removeImage(ref: string): Promise<void> {
  try {
    await docker().getImage(ref).remove({ force: true });
  } catch (err) {
    if ((err as { statusCode?: number }).statusCode !== 404) throw err;
  }
}

/** Containers labelled with this Berth home (what a test left behind). */
export async function containersOfHome(home: string): Promise<Docker.ContainerInfo[]> {
  return docker().listContainers({ all: true, filters: { label: [`berth.home=${home}`] } });
}

/** Force-removes every container of this Berth home; for test teardown. */
export async function removeContainersOfHome(home: string): Promise<void> {
  for (const c of await containersOfHome(home)) await docker().getContainer(c.Id).remove({ force: true }).catch(() => {});
}
