// Test images, built inside the tests from nothing but files on this machine (no registry is
// reachable): a `FROM scratch` build context holding the host's `node` (or /usr/bin/python3 and
// its standard library) plus the shared libraries `ldd` lists, then one small image per service
// on top of the node base. Tags: `berth-test/<name>:latest`. An image whose `berth.test.hash`
// label matches what would be built is not rebuilt.
//
//   http-echo   :8080 HTTP/1.1 echo, :8081 h2c echo, :9100 /metrics    (services/http-echo.mjs)
//   unhealthy   http-echo whose /healthz answers 503
//   grpc-echo   :50051 gRPC over h2c: berth.test.Echo + grpc.health.v1  (echo.proto, health.proto)
//   sse         :8080 /events: 10 server-sent events, 100 ms apart
//   crash       prints "crashing on purpose" to stderr, exits with code 3
//   kernel      python3 + dill: the kernel image for cell nodes on Docker
// buildServiceVariants() makes more tags of one service with environment baked in (the rollout
// tests' `berth-test/grpc-echo:v1`…, each answering with its own x-echo-revision header).
import Docker from 'dockerode';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

export const TEST_IMAGE_NAMES = ['http-echo', 'grpc-echo', 'sse', 'unhealthy', 'crash', 'kernel'] as const;
export type TestImageName = typeof TEST_IMAGE_NAMES[number];

export function testImage(name: TestImageName | 'node-base'): string {
  return `berth-test/${name}:latest`;
}

export const TEST_IMAGES: Readonly<Record<TestImageName, string>> = Object.freeze(
  Object.fromEntries(TEST_IMAGE_NAMES.map((n) => [n, testImage(n)])) as Record<TestImageName, string>,
);

/** Container ports the service images listen on. */
export const TEST_PORTS = { http: 8080, h2c: 8081, metrics: 9100, grpc: 50051, sse: 8080 } as const;

export const IMAGES_DIR = import.meta.dirname;
export const ECHO_PROTO = join(IMAGES_DIR, 'echo.proto');
export const HEALTH_PROTO = join(IMAGES_DIR, 'health.proto');

/** Bump to force every image to be rebuilt when the way they are built changes. */
const BUILDER_VERSION = '1';
const HASH_LABEL = 'berth.test.hash';
const BUILD_TIMEOUT_MS = 5 * 60_000;
const PYTHON = '/usr/bin/python3';
/** Directory names left out of rootfs trees (tar --exclude and the content hash agree). */
const EXCLUDED_NAMES = ['__pycache__', 'test', 'tests', 'idle_test', 'idlelib', 'tkinter', 'turtledemo', 'ensurepip', 'lib2to3', 'pydoc_data', 'config-3*'];

export interface BuildReport {
  image: string;
  built: boolean;
  seconds: number;
  sizeBytes: number;
}

interface RootfsEntry { src: string; dest: string }

interface ServiceDef {
  service: string; // file under services/
  env?: Record<string, string>;
  ports: number[];
}

const SERVICES: Record<Exclude<TestImageName, 'kernel'>, ServiceDef> = {
  'http-echo': { service: 'http-echo.mjs', ports: [8080, 8081, 9100] },
  unhealthy: { service: 'http-echo.mjs', env: { ECHO_HEALTHZ_STATUS: '503' }, ports: [8080, 8081, 9100] },
  'grpc-echo': { service: 'grpc-echo.mjs', ports: [50051] },
  sse: { service: 'sse.mjs', ports: [8080] },
  crash: { service: 'crash.mjs', ports: [] },
};

/**
 * Builds the named test images (all by default) and what they stand on, skipping any whose
 * tag already carries the same content hash. Sequential: this machine has 2 cores.
 */
export async function buildTestImages(names: readonly TestImageName[] = TEST_IMAGE_NAMES, options: { docker?: Docker; log?: (line: string) => void } = {}): Promise<BuildReport[]> {
  const docker = options.docker ?? new Docker();
  const log = options.log ?? (() => {});
  const reports: BuildReport[] = [];
  const wanted = new Set(names);
  const services = [...wanted].filter((n): n is Exclude<TestImageName, 'kernel'> => n !== 'kernel');

  if (services.length) {
    const { report, baseHash } = await ensureNodeBase(docker, log);
    reports.push(report);
    for (const name of services) reports.push(await ensureService(docker, log, baseHash, testImage(name), SERVICES[name]));
  }
  if (wanted.has('kernel')) {
    const rootfs = pythonRootfs();
    const hash = hashOf(['kernel', BUILDER_VERSION, treeDigest(rootfs)]);
    reports.push(await ensureImage(docker, testImage('kernel'), hash, log, () => rootfsContext(rootfs, hash, ['/usr/bin/python3'])));
  }
  return reports;
}

/**
 * Variants of a service image under tags of their own, each with extra environment baked in
 * (e.g. `berth-test/grpc-echo:v2` with ECHO_REVISION=v2): really different images, as a new
 * release of a model server would be. Built from the service's own files (not FROM its
 * `:latest` tag), so a concurrent rebuild of that tag cannot change them.
 */
export async function buildServiceVariants(service: Exclude<TestImageName, 'kernel'>, variants: Array<{ tag: string; env: Record<string, string> }>, options: { docker?: Docker; log?: (line: string) => void } = {}): Promise<BuildReport[]> {
  const docker = options.docker ?? new Docker();
  const log = options.log ?? (() => {});
  const { report, baseHash } = await ensureNodeBase(docker, log);
  const reports = [report];
  const def = SERVICES[service];
  for (const v of variants) reports.push(await ensureService(docker, log, baseHash, `berth-test/${service}:${v.tag}`, { ...def, env: { ...def.env, ...v.env } }));
  return reports;
}

async function ensureNodeBase(docker: Docker, log: (line: string) => void): Promise<{ report: BuildReport; baseHash: string }> {
  const base = nodeRootfs();
  const baseHash = hashOf(['node-base', BUILDER_VERSION, treeDigest(base)]);
  return { report: await ensureImage(docker, testImage('node-base'), baseHash, log, () => rootfsContext(base, baseHash, ['/usr/bin/node'])), baseHash };
}

async function ensureService(docker: Docker, log: (line: string) => void, baseHash: string, tag: string, def: ServiceDef): Promise<BuildReport> {
  const source = readFileSync(join(IMAGES_DIR, 'services', def.service));
  const dockerfile = serviceDockerfile(def);
  const name = tag.replace(/^berth-test\//, '').replace(/:latest$/, ''); // the hash of a `:latest` image stays what it was
  const hash = hashOf([name, BUILDER_VERSION, baseHash, source, dockerfile]);
  return ensureImage(docker, tag, hash, log, () => {
    const dir = mkdtempSync(join(tmpdir(), 'berth-image-'));
    writeFileSync(join(dir, 'service.mjs'), source);
    writeFileSync(join(dir, 'Dockerfile'), `${dockerfile}LABEL ${HASH_LABEL}="${hash}"\n`);
    return dir;
  });
}

function serviceDockerfile(def: ServiceDef): string {
  let text = `FROM ${testImage('node-base')}\nCOPY service.mjs /app/service.mjs\n`;
  for (const [k, v] of Object.entries(def.env ?? {})) text += `ENV ${k}=${JSON.stringify(v)}\n`;
  if (def.ports.length) text += `EXPOSE ${def.ports.join(' ')}\n`;
  text += 'WORKDIR /app\nCMD ["/usr/bin/node", "/app/service.mjs"]\n';
  return text;
}

/** Builds `tag` from the context `makeContext` stages, unless the tag already has `hash`. */
async function ensureImage(docker: Docker, tag: string, hash: string, log: (line: string) => void, makeContext: () => string): Promise<BuildReport> {
  const started = Date.now();
  let oldId: string | null = null;
  try {
    const info = await docker.getImage(tag).inspect();
    if (info.Config?.Labels?.[HASH_LABEL] === hash) return { image: tag, built: false, seconds: 0, sizeBytes: info.Size };
    oldId = info.Id;
  } catch (err) {
    if ((err as { statusCode?: number }).statusCode !== 404) throw err;
  }
  log(`building ${tag}`);
  const dir = makeContext();
  try {
    await buildContext(docker, dir, tag);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const info = await docker.getImage(tag).inspect();
  if (info.Config?.Labels?.[HASH_LABEL] !== hash) throw new Error(`built ${tag} but it does not carry the expected ${HASH_LABEL} label`);
  if (oldId && oldId !== info.Id) await docker.getImage(oldId).remove().catch(() => {}); // still used by a container or a child image: keep it
  const seconds = (Date.now() - started) / 1000;
  log(`built ${tag} in ${seconds.toFixed(1)}s (${(info.Size / 1e6).toFixed(1)} MB)`);
  return { image: tag, built: true, seconds, sizeBytes: info.Size };
}

/** Sends the directory as a build context (tar, following symlinks) to the classic builder. */
async function buildContext(docker: Docker, dir: string, tag: string): Promise<void> {
  const tar = spawn('tar', ['-c', '-h', '-C', dir, ...EXCLUDED_NAMES.map((n) => `--exclude=${n}`), '.'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let tarErr = '';
  tar.stderr.on('data', (d) => { tarErr += d; });
  const tarDone = new Promise<number | null>((r) => tar.once('close', (code) => r(code)));
  const stream = await docker.buildImage(tar.stdout, { t: tag, rm: true, forcerm: true, pull: false } as Docker.ImageBuildOptions);
  const events = await new Promise<Array<{ stream?: string; error?: string; errorDetail?: { message?: string } }>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`building ${tag} took more than ${BUILD_TIMEOUT_MS / 1000}s`)), BUILD_TIMEOUT_MS);
    docker.modem.followProgress(stream, (err: Error | null, out: Array<{ stream?: string; error?: string }>) => {
      clearTimeout(timer);
      if (err) reject(err); else resolve(out);
    });
  });
  const code = await tarDone;
  if (code !== 0) throw new Error(`tar of the ${tag} context failed (${code}): ${tarErr.trim()}`);
  const failed = events.find((e) => e.error || e.errorDetail);
  if (failed) {
    const output = events.map((e) => e.stream ?? '').join('').trim().split('\n').slice(-10).join('\n');
    throw new Error(`docker build ${tag}: ${failed.errorDetail?.message ?? failed.error}\n${output}`);
  }
}

/** A `FROM scratch` context: rootfs/ holds symlinks to the host files (tar -h copies their contents). */
function rootfsContext(entries: RootfsEntry[], hash: string, cmd: string[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'berth-image-'));
  const root = join(dir, 'rootfs');
  for (const e of entries) {
    const at = join(root, e.dest);
    mkdirSync(dirname(at), { recursive: true });
    symlinkSync(e.src, at);
  }
  mkdirSync(join(root, 'tmp'), { recursive: true });
  chmodSync(join(root, 'tmp'), 0o1777);
  writeFileSync(join(dir, 'Dockerfile'), [
    'FROM scratch',
    'COPY rootfs/ /',
    'ENV PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8',
    `LABEL ${HASH_LABEL}="${hash}"`,
    `CMD ${JSON.stringify(cmd)}`,
    '',
  ].join('\n'));
  return dir;
}

function nodeRootfs(): RootfsEntry[] {
  return [{ src: process.execPath, dest: '/usr/bin/node' }, ...sharedLibraries([process.execPath])];
}

function pythonRootfs(): RootfsEntry[] {
  const r = spawnSync(PYTHON, ['-c', 'import sysconfig; print(sysconfig.get_paths()["stdlib"])'], { encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) throw new Error(`${PYTHON} cannot run: ${r.stderr || r.error}`);
  const stdlib = r.stdout.trim();
  const dynload = join(stdlib, 'lib-dynload');
  const modules = readdirSync(dynload).filter((f) => f.endsWith('.so')).map((f) => join(dynload, f));
  const distPackages = '/usr/lib/python3/dist-packages';
  const dillInfo = readdirSync(distPackages).filter((f) => /^dill-.*\.(egg-info|dist-info)$/.test(f));
  if (!dillInfo.length) throw new Error(`dill is not installed for ${PYTHON}: apt-get install python3-dill`);
  return [
    { src: PYTHON, dest: '/usr/bin/python3' },
    { src: stdlib, dest: stdlib },
    { src: join(distPackages, 'dill'), dest: join(distPackages, 'dill') },
    ...dillInfo.map((f) => ({ src: join(distPackages, f), dest: join(distPackages, f) })),
    ...sharedLibraries([PYTHON, ...modules]),
  ];
}

/** The libraries (and the dynamic loader) `ldd` lists for these binaries, at the paths it names. */
function sharedLibraries(binaries: string[]): RootfsEntry[] {
  const found = new Set<string>();
  const r = spawnSync('ldd', binaries, { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`ldd ${binaries.join(' ')} failed: ${r.stderr || r.error}`);
  for (const line of r.stdout.split('\n')) {
    // "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" and "\t/lib64/ld-linux-x86-64.so.2 (0x…)"
    const m = /=>\s*(\/\S+)/.exec(line) ?? /^\s+(\/\S+)\s+\(/.exec(line);
    if (m) found.add(m[1]!);
  }
  return [...found].sort().map((p) => ({ src: p, dest: p }));
}

/** Path, size and mtime of every file an image would hold (excluded names left out). */
function treeDigest(entries: RootfsEntry[]): string {
  const h = createHash('sha256');
  const excluded = EXCLUDED_NAMES.map((n) => new RegExp('^' + n.replace(/[.]/g, '\\.').replace(/\*/g, '.*') + '$'));
  const walk = (src: string, dest: string, depth: number): void => {
    if (depth > 30) return;
    const st = statSync(src);
    if (st.isDirectory()) {
      for (const name of readdirSync(src).sort()) {
        if (excluded.some((re) => re.test(name))) continue;
        walk(join(src, name), join(dest, name), depth + 1);
      }
    } else {
      h.update(`${dest}\0${st.size}\0${Math.floor(st.mtimeMs)}\0${lstatSync(src).isSymbolicLink() ? realpathSync(src) : ''}\n`);
    }
  };
  for (const e of entries) walk(e.src, e.dest, 0);
  return h.digest('hex');
}

function hashOf(parts: Array<string | Buffer>): string {
  const h = createHash('sha256');
  for (const p of parts) { h.update(p); h.update('\0'); }
  return h.digest('hex').slice(0, 32);
}

/** Command line: `node --import tsx test/images/index.ts [names…]` builds and prints sizes. */
if (process.argv[1] && realpathSync(process.argv[1]) === realpathSync(join(IMAGES_DIR, 'index.ts'))) {
  const names = process.argv.slice(2) as TestImageName[];
  const reports = await buildTestImages(names.length ? names : TEST_IMAGE_NAMES, { log: (l) => console.log(l) });
  for (const r of reports) console.log(`${r.image}\t${r.built ? `built in ${r.seconds.toFixed(1)}s` : 'up to date'}\t${(r.sizeBytes / 1e6).toFixed(1)} MB`);
}
