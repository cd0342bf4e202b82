// Benchmark for "Berth on a cluster" (issue 13): two Berth servers on one PostgreSQL in front of
// an image node whose three instances run on a three-host Docker Swarm built on this machine
// (test/cluster-support.ts: network namespaces, one dockerd each). In one run:
//
//   throughput   the same node through one server's gateway, then through both at once (one
//                wrk per server, the same connections each), header-routed GET /healthz;
//                req/s and the Berth servers' CPU per call
//   propagation  an alias's weights flipped through the leader's control API, timed until the
//                other server's gateway routes by the new weights (p50, p99 over --flips)
//   failover     the leader killed with SIGKILL under a bounded load through the other server:
//                time until the other server leads, until its controller acts again (a scaling
//                change through it carried out), and the calls that failed meanwhile
//
// Anchors, side by side: one server's throughput is the anchor for two (goal ≥ 1.8×); the goal
// for failover is < 5 s with no failed call that was not in flight on the dead server.
// Everything runs on one 2-core machine: the load generator, both servers, PostgreSQL, three
// dockerds and the instances share the same two cores, so "two gateways" cannot double here —
// the run reports the machine's CPU beside the numbers.
//
//   node --import tsx bench/cluster.ts [--duration 10] [--connections 16] [--flips 50] [--keep]
import { writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { startBerth, removeHome, tempHome, waitFor, createNode, type Berth } from '../test/helpers.js';
import { buildTestImages, testImage } from '../test/images/index.js';
import { SPREAD_ECHO, clusterProblem, startTestCluster, type TestCluster } from '../test/cluster-support.js';
import { createTestDatabase, pgProblem, type TestDatabase } from '../test/pg-support.js';
import { WRK, ROOT, berthCommand, log, posInt, percentile, runTool, cpuSnapshot, cpuUse, treeOf, machine, gitHead, sleep } from './lib.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string): string => { const i = args.indexOf(`--${name}`); return i >= 0 ? args[i + 1]! : dflt; };
const DURATION = posInt(opt('duration', '10'), '--duration', 2, 120);
const CONNECTIONS = posInt(opt('connections', '16'), '--connections', 1, 256);
const FLIPS = posInt(opt('flips', '50'), '--flips', 5, 500);
const KEEP = args.includes('--keep');
const LUA = join(ROOT, 'bench/gateway.lua');
const OUT = join(ROOT, 'bench/results');


interface Load { rps: number; requests: number; errors: number; p50_us: number; p99_us: number; cpu_s: number }

async function wrk(url: string, headers: Record<string, string>, seconds: number): Promise<Load> {
  const h = Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]);
  const r = await runTool([WRK, '-t1', `-c${CONNECTIONS}`, `-d${seconds}s`, '--timeout', '5s', '--latency', '-s', LUA, ...h, url], seconds);
  const line = r.out.split('\n').find((l) => l.startsWith('BENCH_RESULT '));
  if (r.code !== 0 || !line) throw new Error(`wrk failed (exit ${r.code}):\n${r.out}\n${r.err}`);
  const j = JSON.parse(line.slice('BENCH_RESULT '.length));
  const e = j.errors;
  return { rps: j.requests / (j.duration_us / 1e6), requests: j.requests, errors: e.connect + e.read + e.write + e.status + e.timeout, p50_us: j.latency_us.p50, p99_us: j.latency_us.p99, cpu_s: r.cpu_s };
}

const headersFor = (b: Berth, nodeId: string): Record<string, string> => ({ 'x-node-id': nodeId, 'x-folder-id': 'default', authorization: `Bearer ${b.token}` });

async function main(): Promise<void> {
  const problem = clusterProblem() ?? (await pgProblem());
  if (problem) throw new Error(problem);
  let cluster: TestCluster | null = null;
  let db: TestDatabase | null = null;
  const servers: Berth[] = [];
  const homes = [tempHome(), tempHome()];
  const alive = setInterval(() => undefined, 1000); // calls to the cluster's addresses wait on detached daemons
  try {
    await buildTestImages(['http-echo']);
    log('starting the three-host Swarm');
    cluster = await startTestCluster({ hosts: 3 });
    await cluster.loadImages([testImage('http-echo')]);
    db = await createTestDatabase();
    const env = { BERTH_STORE: db.url, BERTH_RUNTIME: 'swarm', DOCKER_HOST: cluster.managerDockerHost };
    const a = await startBerth(homes[0], env, { cli: berthCommand() });
    servers.push(a);
    const b = await startBerth(homes[1], { ...env, BERTH_SECRET_KEY_FILE: join(homes[0]!, 'secret.key') }, { cli: berthCommand() });
    servers.push(b);
    await waitFor('B known to the leader', async () => (await b.request('GET', '/v1/whoami')).status === 200, 5000, 20);
    log('servers up; creating the node (3 instances, one per host)');
    const node = await createNode(a, { ...SPREAD_ECHO, name: 'bench-echo', env: { BENCH_NODE: 'bench-echo' }, scaling: { minInstances: 3, maxInstances: 3, sessionsPerInstance: 64 } });
    const other = await createNode(a, { ...SPREAD_ECHO, name: 'bench-other', env: { BENCH_NODE: 'bench-other' }, scaling: { minInstances: 1, maxInstances: 1 } });
    await waitFor('B routes it', async () => (await fetch(b.url + '/healthz', { headers: headersFor(b, node.id) })).status === 200, 10_000, 20);

    // ---- throughput: one gateway, then two ----
    const pidsOf = (s: Berth): number[] => treeOf(s.proc.pid!);
    await wrk(a.url + '/healthz', headersFor(a, node.id), 2); // warm-up
    await wrk(b.url + '/healthz', headersFor(b, node.id), 2);
    log('one gateway');
    let s0 = cpuSnapshot({ a: pidsOf(a), b: pidsOf(b) });
    const one = await wrk(a.url + '/healthz', headersFor(a, node.id), DURATION);
    let s1 = cpuSnapshot({ a: pidsOf(a), b: pidsOf(b) });
    const oneCpu = cpuUse(s0, s1, one.cpu_s, 0);
    log('two gateways');
    s0 = cpuSnapshot({ a: pidsOf(a), b: pidsOf(b) });
    const [ta, tb] = await Promise.all([wrk(a.url + '/healthz', headersFor(a, node.id), DURATION), wrk(b.url + '/healthz', headersFor(b, node.id), DURATION)]);
    s1 = cpuSnapshot({ a: pidsOf(a), b: pidsOf(b) });
    const twoCpu = cpuUse(s0, s1, ta.cpu_s + tb.cpu_s, 0);
    const twoRps = ta.rps + tb.rps;
    const usPerCall = (cores: number, rps: number): number => (cores / rps) * 1e6;

    // ---- propagation: an alias's weights flipped through the leader, seen at the other server ----
    log(`propagation: ${FLIPS} alias flips`);
    const alias = await a.request('POST', '/v1/aliases', { name: 'bench-flip', folderId: 'default', backends: [{ nodeId: node.id, weight: 1 }] });
    if (alias.status !== 201) throw new Error(`alias: ${JSON.stringify(alias.body)}`);
    const aliasHeaders = { 'x-node-alias': 'bench-flip', 'x-folder-id': 'default', authorization: `Bearer ${b.token}` };
    const servedBy = async (): Promise<string> => {
      const r = await fetch(b.url + '/env', { headers: aliasHeaders });
      const text = await r.text();
      return text.includes('bench-other') ? other.id : node.id;
    };
    const flips: number[] = [];
    for (let i = 0; i < FLIPS; i++) {
      const to = i % 2 === 0 ? other.id : node.id;
      const r = await a.request('PATCH', '/v1/aliases/bench-flip', { backends: [{ nodeId: to, weight: 1 }] });
      if (r.status !== 200) throw new Error(`flip: ${JSON.stringify(r.body)}`);
      const answered = performance.now();
      await waitFor('the other server routes by the new weights', async () => (await servedBy()) === to, 5000, 1);
      flips.push(performance.now() - answered);
    }
    flips.sort((x, y) => x - y);

    // ---- failover: the leader killed under load through the other server ----
    log('failover: SIGKILL to the leader under load through the other server');
    let ok = 0; const failed: string[] = []; let stop = false;
    const until = Date.now() + 30_000;
    const load = Promise.all(Array.from({ length: 8 }, async () => {
      while (!stop && Date.now() < until) {
        try {
          const r = await fetch(b.url + '/healthz', { headers: headersFor(b, node.id), signal: AbortSignal.timeout(10_000) });
          await r.arrayBuffer();
          if (r.status === 200) ok++; else failed.push(`HTTP ${r.status}`);
        } catch (err) { failed.push((err as Error).message); }
      }
    }));
    await sleep(1000);
    const killedAt = performance.now();
    a.proc.kill('SIGKILL');
    await waitFor('B leads', async () => {
      const r = await b.request('GET', '/v1/servers').catch(() => null);
      return r?.status === 200 && r.body.servers?.some((s: { leader: boolean; url: string }) => s.leader && s.url === b.url);
    }, 20_000, 20);
    const leadsMs = performance.now() - killedAt;
    const scaled = await b.request('PATCH', `/v1/nodes/${other.id}`, { scaling: { minInstances: 2, maxInstances: 2 } });
    if (scaled.status !== 200 && scaled.status !== 202) throw new Error(`scale through the new leader: ${JSON.stringify(scaled.body)}`);
    await waitFor('the new leader\'s controller started an instance', async () => (await b.request('GET', `/v1/nodes/${other.id}`)).body.instances.length === 2, 60_000, 50);
    const actsMs = performance.now() - killedAt;
    await sleep(1000);
    stop = true;
    await load;

    const result = {
      machine: machine({ berth: gitHead(), hosts: '3 (network namespaces, one dockerd each, Swarm)' }),
      throughput: {
        one: { rps: one.rps, errors: one.errors, p50_us: one.p50_us, p99_us: one.p99_us, berth_us_per_call: usPerCall(oneCpu.a!, one.rps), machine_cores: oneCpu.machine },
        two: { rps: twoRps, per_server: [ta.rps, tb.rps], errors: ta.errors + tb.errors, berth_us_per_call: usPerCall(twoCpu.a! + twoCpu.b!, twoRps), machine_cores: twoCpu.machine },
        ratio: twoRps / one.rps,
      },
      propagation_ms: { flips: flips.length, p50: percentile(flips, 50), p99: percentile(flips, 99), max: flips[flips.length - 1] },
      failover: { leads_ms: leadsMs, controller_acts_ms: actsMs, calls_ok: ok, calls_failed: failed.length, failures: [...new Set(failed)].slice(0, 5) },
    };
    mkdirSync(OUT, { recursive: true });
    const file = join(OUT, `cluster-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
    writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
    const f = (x: number, d = 0): string => x.toFixed(d);
    console.log(`
| through | req/s | ratio | p50 / p99 (ms) | Berth CPU per call | machine cores busy |
|---|---|---|---|---|---|
| one server | ${f(one.rps)} | 1.00× | ${f(one.p50_us / 1000, 2)} / ${f(one.p99_us / 1000, 2)} | ${f(result.throughput.one.berth_us_per_call)} µs | ${f(oneCpu.machine!, 2)} |
| two servers | ${f(twoRps)} (${f(ta.rps)} + ${f(tb.rps)}) | ${f(result.throughput.ratio, 2)}× | — | ${f(result.throughput.two.berth_us_per_call)} µs | ${f(twoCpu.machine!, 2)} |

routing change (alias weights through the leader) seen at the other server: p50 ${f(result.propagation_ms.p50, 1)} ms, p99 ${f(result.propagation_ms.p99, 1)} ms (${flips.length} flips)
failover: the other server leads ${f(leadsMs)} ms after SIGKILL; its controller carried out a change ${f(actsMs)} ms after; calls through it: ${ok} ok, ${failed.length} failed ${failed.length ? JSON.stringify(result.failover.failures) : ''}
results: ${file}`);
  } finally {
    clearInterval(alive);
    for (const s of servers) await s.stop().catch(() => undefined);
    if (!KEEP) {
      await cluster?.stop();
      await db?.drop().catch(() => undefined);
      for (const h of homes) removeHome(h);
    }
  }
}

main().catch((err: unknown) => { console.error(err); process.exit(1); });
