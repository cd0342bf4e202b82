// A Docker Swarm of several "hosts" on this one machine, built by the tests themselves
// (issue 13): each host is a network namespace (`ip netns`) joined by a veth pair to a
// bridge the test creates, running its own dockerd (own --data-root, --exec-root, pidfile,
// socket, --cgroup-parent) started with `nsenter --net=…` (not `ip netns exec`, which
// remounts /sys and hides the cgroups dockerd needs). Host 1 inits the Swarm, the others
// join; images come from the main daemon by `docker save | docker load` (no registry).
//
// Addresses: only 10.213.0.0/24, which this file gives to its own bridge (.1, the root
// namespace, where Berth and the tests run) and hosts (.11, .12, …). Names are fixed
// (bridge `berthsw0`, namespaces `berthsw-hN`, state under /tmp/berth-swarm) so that a
// run that crashed is cleaned up by the next one; an owner pid file says whether the
// cluster there still belongs to a live process (then we refuse rather than break it).
//
// Containers reaching back (cell workers fetch their checkpoint from Berth on .1): the hosts'
// dockerd run without iptables, so nothing masquerades a task's traffic. Tasks with host-mode
// ports only sit on each host's default bridge, whose subnet is the host's own (--bip
// 172.31.<n>.1/24), and the root namespace routes that subnet via the host's address: a
// task's packets reach .1 with the container's address, and the answers find their way back.
//
// Failure detection: the Swarm is made with `--dispatcher-heartbeat 1s` (default 5s), so
// the manager declares a dead host Down after a few seconds and re-creates its tasks.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync, openSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import Docker from 'dockerode';
import { testImage } from './images/index.js';

export const CLUSTER_ROOT = '/tmp/berth-swarm';
/** The daemons' logs of the last cluster, kept after teardown. */
export const LAST_LOGS = '/tmp/berth-swarm-last-logs';
const BRIDGE = 'berthsw0';
const SUBNET = '10.213.0';
const NETNS_PREFIX = 'berthsw-h';
/** Host n's default bridge is <prefix>.n.0/24 (--bip), routed from the root namespace (see above). */
const BIP_PREFIX = '172.31';
const VETH_PREFIX = 'bsw-h';
/** Swarm's heartbeat: a dead host is noticed after a few of these (default 5s). */
export const DISPATCHER_HEARTBEAT = '1s';
const DAEMON_START_MS = 30_000;

export interface ClusterHost {
  name: string;
  /** The host's address on the test bridge. */
  addr: string;
  /** Its network namespace (`nsenter --net=<netns> …` runs a process on this host). */
  netns: string;
  /** unix:///… socket of this host's dockerd. */
  dockerHost: string;
  /** Swarm node id. */
  nodeId: string;
  docker: Docker;
}

export interface TestCluster {
  hosts: ClusterHost[];
  managerDockerHost: string;
  manager: Docker;
  /** Loads images from the main daemon into every host's daemon that lacks them. */
  loadImages(images: readonly string[]): Promise<void>;
  /** The machine dies: every process of the host (dockerd, containerd, shims, containers) is SIGKILLed. */
  killHost(i: number): void;
  /** Tears everything down (idempotent). */
  stop(): Promise<void>;
}

/**
 * An `http-echo` image node spread over the cluster's zones, with small reservations (three
 * 2-core "machines" that are really one). Endpoint timeout 10 s.
 */
export const SPREAD_ECHO = {
  kind: 'image', image: testImage('http-echo'),
  endpoint: { port: 8080, protocol: 'http', timeout: 10 },
  healthcheck: { protocol: 'http', path: '/healthz', port: 8080, interval: 0.5, timeout: 1, failsThreshold: 2, passesThreshold: 1 },
  resources: { cores: 0.2, memoryGb: 0.25, gpus: 0 },
  placement: { constraints: [] as string[], spread: 'zone' },
};

/** The root namespace's address on the cluster's bridge: where the hosts reach the test process. */
export const BRIDGE_ADDR = `${SUBNET}.1`;

/** Why the cluster cannot be built here, or null. */
export function clusterProblem(): string | null {
  if ((process.getuid?.() ?? 1) !== 0) return 'the Swarm test cluster needs root (network namespaces, dockerd)';
  for (const [bin, pkg] of [['ip', 'iproute2'], ['nsenter', 'util-linux'], ['dockerd', 'docker.io'], ['docker', 'docker.io']] as const) {
    if (spawnSync(bin, ['--version'], { timeout: 5000 }).error && spawnSync(bin, ['-V'], { timeout: 5000 }).error) return `${bin} not found: apt-get install ${pkg}`;
  }
  if (!existsSync('/sys/fs/cgroup')) return 'no /sys/fs/cgroup: dockerd cannot run here';
  return null;
}

/** Skips (off CI, with the reason printed) or fails (CI) when the cluster cannot be built. */
export function requireCluster(t: TestContext): boolean {
  const problem = clusterProblem();
  if (!problem) return true;
  if (process.env.CI) throw new Error(`CI must be able to build the Swarm test cluster: ${problem}`);
  console.log(`# skipping "${t.name}": ${problem}`);
  t.skip(problem);
  return false;
}

function run(cmd: string, args: string[], input?: Buffer): string {
  return execFileSync(cmd, args, { encoding: 'utf8', timeout: 60_000, stdio: ['pipe', 'pipe', 'pipe'], ...(input ? { input } : {}) });
}

function quiet(cmd: string, args: string[]): void {
  spawnSync(cmd, args, { timeout: 20_000, stdio: 'ignore' });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function hostDir(n: number): string { return join(CLUSTER_ROOT, `h${n}`); }
function socketOf(n: number): string { return join(CLUSTER_ROOT, `h${n}`, 'docker.sock'); }

function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

/** SIGKILLs every process of host n: those in its network namespace and in its containers' cgroups. */
function killAllOf(n: number): void {
  const pids = new Set<number>();
  const r = spawnSync('ip', ['netns', 'pids', `${NETNS_PREFIX}${n}`], { encoding: 'utf8', timeout: 5000 });
  for (const l of (r.stdout ?? '').split('\n')) if (/^\d+$/.test(l.trim())) pids.add(Number(l));
  const pidFile = join(hostDir(n), 'dockerd.pid');
  if (existsSync(pidFile)) { const p = Number(readFileSync(pidFile, 'utf8').trim()); if (p > 0) pids.add(p); }
  for (const pid of cgroupPids(`${NETNS_PREFIX}${n}`)) pids.add(pid);
  for (const pid of pids) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
}

/** Processes in a cgroup (v1: the pids controller; v2: the unified tree), recursively. */
function cgroupPids(name: string): number[] {
  const roots = ['/sys/fs/cgroup/pids', '/sys/fs/cgroup/memory', '/sys/fs/cgroup'].map((r) => join(r, name)).filter((d) => existsSync(d));
  const out: number[] = [];
  const walk = (dir: string): void => {
    try { for (const l of readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n')) if (l.trim()) out.push(Number(l)); } catch { /* none */ }
    try { for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) walk(join(dir, e.name)); } catch { /* gone */ }
  };
  for (const r of roots) walk(r);
  return out;
}

/** Removes empty cgroup directories left by a host's containers (deepest first). */
function removeCgroups(name: string): void {
  let controllers: string[] = [];
  try { controllers = readdirSync('/sys/fs/cgroup'); } catch { return; }
  for (const c of controllers) {
    const dir = join('/sys/fs/cgroup', c, name);
    if (!existsSync(dir)) continue;
    const dirs: string[] = [];
    const walk = (d: string): void => {
      dirs.push(d);
      try { for (const e of readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) walk(join(d, e.name)); } catch { /* gone */ }
    };
    walk(dir);
    for (const d of dirs.reverse()) quiet('rmdir', [d]);
  }
}

/** Everything the cluster (this run's or a crashed earlier one's) left on the machine. */
function teardown(maxHosts = 9): void {
  for (let n = 1; n <= maxHosts; n++) killAllOf(n);
  // mounts under the state dir (data roots, netns handles, overlays), deepest first
  const mounts = readFileSync('/proc/mounts', 'utf8').split('\n').map((l) => l.split(' ')[1] ?? '')
    .filter((m) => m.startsWith(CLUSTER_ROOT + '/')).sort().reverse();
  for (const m of mounts) quiet('umount', ['-l', m]);
  for (let n = 1; n <= maxHosts; n++) {
    quiet('ip', ['netns', 'del', `${NETNS_PREFIX}${n}`]);
    quiet('ip', ['link', 'del', `${VETH_PREFIX}${n}`]);
    removeCgroups(`${NETNS_PREFIX}${n}`);
  }
  quiet('ip', ['link', 'del', BRIDGE]);
  // the daemons' logs of the last run stay for a post-mortem (small: --log-level warn)
  rmSync(LAST_LOGS, { recursive: true, force: true });
  for (let n = 1; n <= maxHosts; n++) {
    const log = join(hostDir(n), 'dockerd.log');
    if (existsSync(log)) { mkdirSync(LAST_LOGS, { recursive: true }); copyFileSync(log, join(LAST_LOGS, `h${n}-dockerd.log`)); }
  }
  rmSync(CLUSTER_ROOT, { recursive: true, force: true });
}

/** Cleans up after an earlier run that crashed; refuses when a live process owns the cluster. */
function claim(): void {
  const owner = join(CLUSTER_ROOT, 'owner.pid');
  if (existsSync(owner)) {
    const pid = Number(readFileSync(owner, 'utf8').trim());
    if (pid > 0 && pid !== process.pid && alive(pid)) throw new Error(`the Swarm test cluster in ${CLUSTER_ROOT} belongs to running process ${pid}`);
  }
  teardown();
  mkdirSync(CLUSTER_ROOT, { recursive: true });
  writeFileSync(owner, String(process.pid));
}

async function waitDaemon(d: Docker, what: string, log: string): Promise<void> {
  const deadline = Date.now() + DAEMON_START_MS;
  for (;;) {
    try { await d.ping(); return; } catch { /* not yet */ }
    if (Date.now() > deadline) {
      let tail = '';
      try { tail = readFileSync(log, 'utf8').split('\n').slice(-20).join('\n'); } catch { /* none */ }
      throw new Error(`${what} did not answer within ${DAEMON_START_MS / 1000}s:\n${tail}`);
    }
    await sleep(200);
  }
}

export async function startTestCluster(options: { hosts?: number } = {}): Promise<TestCluster> {
  const count = options.hosts ?? 3;
  claim();
  const daemons: ChildProcess[] = [];
  let stopped = false;
  const onExit = (): void => { if (!stopped) teardown(); };
  process.once('exit', onExit); // a test process that ends without stop() still leaves nothing
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    process.removeListener('exit', onExit);
    for (const d of daemons) { try { d.kill('SIGKILL'); } catch { /* gone */ } }
    teardown();
  };
  try {
    run('ip', ['link', 'add', BRIDGE, 'type', 'bridge']);
    run('ip', ['addr', 'add', `${SUBNET}.1/24`, 'dev', BRIDGE]);
    run('ip', ['link', 'set', BRIDGE, 'up']);
    const hosts: ClusterHost[] = [];
    for (let n = 1; n <= count; n++) {
      const ns = `${NETNS_PREFIX}${n}`;
      const addr = `${SUBNET}.${10 + n}`;
      run('ip', ['netns', 'add', ns]);
      run('ip', ['link', 'add', `${VETH_PREFIX}${n}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
      run('ip', ['link', 'set', `${VETH_PREFIX}${n}`, 'master', BRIDGE, 'up']);
      run('ip', ['-n', ns, 'addr', 'add', `${addr}/24`, 'dev', 'eth0']);
      run('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
      run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
      const dir = hostDir(n);
      mkdirSync(dir, { recursive: true });
      const log = join(dir, 'dockerd.log');
      const fd = openSync(log, 'a');
      const proc = spawn('nsenter', [`--net=/run/netns/${ns}`, 'dockerd',
        '--data-root', join(dir, 'data'), '--exec-root', join(dir, 'exec'), '--pidfile', join(dir, 'dockerd.pid'),
        '-H', `unix://${socketOf(n)}`, '--iptables=false', '--ip-masq=false', `--bip=${BIP_PREFIX}.${n}.1/24`,
        // a test registry on the bridge (10.213.0.1) speaks plain HTTP
        `--insecure-registry=${SUBNET}.0/24`,
        '--cgroup-parent', ns, '--log-level', 'warn'], {
        // Swarm workers try a pull before every task even of a tag they have (and use
        // theirs when it fails): the hosts have no route beyond 10.213.0.0/24, so it fails at once
        stdio: ['ignore', fd, fd], detached: true,
      });
      closeSync(fd);
      proc.unref();
      daemons.push(proc);
      hosts.push({ name: `h${n}`, addr, netns: `/run/netns/${ns}`, dockerHost: `unix://${socketOf(n)}`, nodeId: '', docker: new Docker({ socketPath: socketOf(n) }) });
    }
    for (const [i, h] of hosts.entries()) await waitDaemon(h.docker, `dockerd of ${h.name}`, join(hostDir(i + 1), 'dockerd.log'));
    for (const [i, h] of hosts.entries()) {
      const n = i + 1;
      run('nsenter', [`--net=/run/netns/${NETNS_PREFIX}${n}`, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
      // goes with the bridge when teardown deletes it
      run('ip', ['route', 'add', `${BIP_PREFIX}.${n}.0/24`, 'via', h.addr, 'dev', BRIDGE]);
    }

    const manager = hosts[0]!;
    await manager.docker.swarmInit({
      ListenAddr: `${manager.addr}:2377`, AdvertiseAddr: manager.addr,
      Spec: { Dispatcher: { HeartbeatPeriod: 1e9 * Number.parseInt(DISPATCHER_HEARTBEAT, 10) }, Orchestration: { TaskHistoryRetentionLimit: 2 } },
    });
    const swarm = await manager.docker.swarmInspect() as { JoinTokens: { Worker: string } };
    for (const h of hosts.slice(1)) {
      await h.docker.swarmJoin({ ListenAddr: `${h.addr}:2377`, AdvertiseAddr: h.addr, RemoteAddrs: [`${manager.addr}:2377`], JoinToken: swarm.JoinTokens.Worker });
    }
    // node ids, and a `zone` label per host for placement spread
    const deadline = Date.now() + 30_000;
    for (;;) {
      const nodes = await manager.docker.listNodes() as Array<{ ID: string; Status: { State: string; Addr: string } }>;
      for (const h of hosts) h.nodeId = nodes.find((x) => x.Status.Addr === h.addr && x.Status.State === 'ready')?.ID ?? '';
      if (hosts.every((h) => h.nodeId)) break;
      if (Date.now() > deadline) throw new Error(`the Swarm did not get ${count} ready nodes in 30s: ${JSON.stringify(nodes.map((x) => x.Status))}`);
      await sleep(250);
    }
    for (const [i, h] of hosts.entries()) {
      const node = manager.docker.getNode(h.nodeId);
      const info = await node.inspect() as { Version: { Index: number }; Spec: Record<string, unknown> };
      await node.update({ version: info.Version.Index, ...info.Spec, Labels: { zone: `z${i + 1}`, host: h.name } } as never);
    }

    const loaded = new Set<string>();
    const cluster: TestCluster = {
      hosts,
      managerDockerHost: manager.dockerHost,
      manager: manager.docker,
      async loadImages(images) {
        const missing = images.filter((img) => !loaded.has(img));
        if (!missing.length) return;
        // saved once from the main daemon, loaded into each host
        const file = join(CLUSTER_ROOT, 'images.tar');
        run('docker', ['save', '-o', file, ...missing]);
        try {
          for (const h of hosts) run('docker', ['-H', h.dockerHost, 'load', '-q', '-i', file]);
        } finally {
          rmSync(file, { force: true });
        }
        for (const img of missing) loaded.add(img);
      },
      killHost(i) {
        killAllOf(i + 1);
      },
      stop,
    };
    return cluster;
  } catch (err) {
    await stop();
    throw err;
  }
}
