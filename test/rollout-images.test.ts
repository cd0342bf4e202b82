// Rollouts of image nodes on the Docker runtime (issue 9), called over gRPC through the gateway
// under continuous bounded load: five updates to a new image tag with zero failed calls and only
// the new revision answering once each completes; a new image that never answers its health
// check, undone by itself with the old revision serving; and `berth up` killed mid-rollout
// (SIGKILL: its containers keep running), restarted on the same home: the rollout resumes or
// fails back, every instance ends on one revision, and no container is left behind.
// The images are real and different per tag: `berth-test/grpc-echo:<tag>` built with
// ECHO_REVISION=<tag> baked in, which the service sends back as the `x-echo-revision` header.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { startBerth, removeHome, waitFor, createNode, type Berth } from './helpers.js';
import { dockerProblem, containersOfHome, removeContainersOfHome } from './docker-support.js';
import { buildServiceVariants, buildTestImages, testImage, ECHO_PROTO } from './images/index.js';

let b: Berth;
let skip: string | null = null;

const REVISION_TAGS = ['v1', 'v2', 'v3', 'v4', 'v5', 'v6'];
const image = (tag: string): string => `berth-test/grpc-echo:${tag}`;
const BERTH_ENV = { BERTH_RUNTIME: 'docker', BERTH_KERNEL_IMAGE: testImage('kernel') };

/** A gRPC image node with health checks fast enough that a rollout step takes a second or two. */
const GRPC_NODE = {
  kind: 'image',
  endpoint: { port: 50051, protocol: 'grpc', timeout: 10 },
  healthcheck: { protocol: 'grpc', port: 50051, service: 'berth.test.Echo', interval: 0.2, timeout: 1, failsThreshold: 2, passesThreshold: 1 },
  scaling: { minInstances: 2, maxInstances: 2 },
};

before(async () => {
  skip = await dockerProblem();
  if (skip) {
    if (process.env.CI) throw new Error(`CI must have Docker: ${skip}`);
    console.log(`# skipping the image rollout tests: ${skip}`);
    return;
  }
  await buildTestImages(['kernel']);
  await buildServiceVariants('grpc-echo', [
    ...REVISION_TAGS.map((tag) => ({ tag, env: { ECHO_REVISION: tag } })),
    // listens on another port than the node's endpoint and health check: never Healthy
    { tag: 'deaf', env: { ECHO_REVISION: 'deaf', GRPC_PORT: '50052' } },
    // becomes Healthy, but only 8 s after it starts
    { tag: 'slow', env: { ECHO_REVISION: 'slow', ECHO_LISTEN_DELAY_MS: '8000' } },
  ]);
  b = await startBerth(undefined, BERTH_ENV);
});

after(async () => {
  if (!b) return;
  await b.stop();
  await removeContainersOfHome(b.home);
  removeHome(b.home);
});

const nodeOf = async (id: string): Promise<any> => (await b.request('GET', `/v1/nodes/${id}`)).body;
const patch = (id: string, body: unknown) => b.request('PATCH', `/v1/nodes/${id}`, body);

async function rolloutEnds(id: string, timeoutMs = 90_000): Promise<any> {
  return waitFor(`rollout of ${id} ends`, async () => {
    const n = await nodeOf(id);
    return n.rollout && n.rollout.state !== 'Progressing' ? n : undefined;
  }, timeoutMs, 50);
}

/** The node's containers (running or not) with the revision each is labelled with. */
async function containersOf(nodeId: string): Promise<Array<{ id: string; revision: string; state: string }>> {
  return (await containersOfHome(b.home))
    .filter((c) => c.Labels['berth.node-id'] === nodeId)
    .map((c) => ({ id: c.Labels['berth.instance-id'] ?? c.Id, revision: c.Labels['berth.revision'] ?? '?', state: c.State }));
}

/** Waits until the node runs exactly `count` Healthy instances, all of `revision`, and its containers are just those. */
async function settledOn(nodeId: string, revision: number, count: number, timeoutMs = 60_000): Promise<void> {
  await waitFor(`${count} Healthy instances of revision ${revision} and nothing else`, async () => {
    const n = await nodeOf(nodeId);
    if (n.instances.length !== count || !n.instances.every((i: any) => i.revision === revision && i.status === 'Healthy')) return undefined;
    const cs = await containersOf(nodeId);
    const ids = new Set(n.instances.map((i: any) => i.id));
    return cs.length === count && cs.every((c) => c.revision === String(revision) && ids.has(c.id)) ? true : undefined;
  }, timeoutMs, 200);
}

interface Answer { at: number; revision: string }

/** The Echo client of one `berth up`, routing by x-node-id through its gateway. */
function echoClient(berth: Berth) {
  const def = protoLoader.loadSync(ECHO_PROTO, { keepCase: true });
  const Echo = (grpc.loadPackageDefinition(def) as any).berth.test.Echo;
  const client = new Echo(berth.url.replace('http://', ''), grpc.credentials.createInsecure());
  /** One unary call: the revision that answered (x-echo-revision), or why it failed. */
  const call = (nodeId: string, text: string): Promise<{ revision?: string; error?: string }> => new Promise((resolve) => {
    const md = new grpc.Metadata();
    md.set('x-node-id', nodeId); md.set('x-folder-id', 'default'); md.set('authorization', `Bearer ${berth.token}`);
    let revision = '';
    const c = client.Echo({ text }, md, { deadline: Date.now() + 30_000 }, (e: grpc.ServiceError | null, r: any) => {
      if (e) resolve({ error: `${e.code} ${e.details}` });
      else if (r.text !== text) resolve({ error: `wrong answer ${JSON.stringify(r.text)} to ${text}` });
      else resolve({ revision });
    });
    c.on('metadata', (m: grpc.Metadata) => { revision = String(m.get('x-echo-revision')[0] ?? ''); });
  });
  return { call, close: () => client.close() };
}

/**
 * Calls the node without pause from `concurrency` callers until stopped, bounded in count and
 * time; records every failure and, per answer, when its call started and which revision answered.
 */
function grpcLoad(client: ReturnType<typeof echoClient>, nodeId: string, concurrency = 4, maxCalls = 200_000, maxMs = 240_000) {
  let stop = false;
  let calls = 0;
  const failures: string[] = [];
  const answers: Answer[] = [];
  const deadline = Date.now() + maxMs;
  const loops = Array.from({ length: concurrency }, async (_, k) => {
    while (!stop && calls < maxCalls && Date.now() < deadline) {
      const n = calls++;
      const at = performance.now();
      const r = await client.call(nodeId, `c${k}-${n}`);
      if (r.error !== undefined) failures.push(r.error);
      else answers.push({ at, revision: r.revision! });
    }
  });
  return {
    failures, answers,
    get calls() { return calls; },
    async end(): Promise<void> { stop = true; await Promise.all(loops); },
  };
}

test('five updates of an image node to a new image tag under gRPC load: zero failed calls, the new revision answers after each', async (t) => {
  if (skip) return t.skip(skip);
  const node = await createNode(b, { ...GRPC_NODE, name: 'grpc-rolling', image: image('v1') });
  const client = echoClient(b);
  assert.equal((await client.call(node.id, 'first')).revision, 'v1');
  const load = grpcLoad(client, node.id);
  // per rollout: from when it was seen Complete to when the next update was sent, only its tag may answer
  const windows: Array<{ from: number; to: number; tag: string }> = [];
  try {
    for (let v = 2; v <= 6; v++) {
      const tag = REVISION_TAGS[v - 1]!;
      if (windows.length) windows.at(-1)!.to = performance.now();
      const r = await patch(node.id, { image: image(tag) });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.deepEqual(r.body.changed, ['image']);
      assert.equal(r.body.revision, v);
      const done = await rolloutEnds(node.id);
      windows.push({ from: performance.now(), to: Infinity, tag });
      assert.equal(done.rollout.state, 'Complete', JSON.stringify(done.rollout));
      assert.equal(done.image, image(tag));
      assert.equal(done.status, 'Healthy');
      assert.deepEqual(done.instances.map((i: any) => i.revision), [v, v]);
      const cs = await containersOf(node.id);
      assert.deepEqual(cs.map((c) => c.revision), [String(v), String(v)], 'the old containers are gone, the new ones labelled with the revision');
      for (let i = 0; i < 10; i++) assert.equal((await client.call(node.id, `after-${v}-${i}`)).revision, tag, 'after the rollout only the new image answers');
      await new Promise((res) => setTimeout(res, 300)); // some load on this revision alone
    }
  } finally {
    await load.end();
    client.close();
  }
  assert.ok(load.calls > 200, `load ran (${load.calls} calls)`);
  assert.deepEqual(load.failures, [], `${load.failures.length} of ${load.calls} calls failed`);
  for (const w of windows) {
    const wrong = load.answers.filter((a) => a.at >= w.from && a.at < w.to && a.revision !== w.tag);
    const right = load.answers.filter((a) => a.at >= w.from && a.at < w.to && a.revision === w.tag).length;
    assert.deepEqual(wrong, [], `calls started after the rollout to ${w.tag} completed were answered by another revision`);
    assert.ok(right > 0, `the load reached ${w.tag}`);
  }
  const seen = new Set(load.answers.map((a) => a.revision));
  assert.deepEqual([...seen].sort(), REVISION_TAGS, 'every revision answered some of the load');
  const h = await b.request('GET', `/v1/nodes/${node.id}/revisions`);
  assert.deepEqual(h.body.revisions.map((r: any) => r.revision), [6, 5, 4, 3, 2, 1]);
  assert.equal(h.body.revisions[0].cause, 'update (image)');
  assert.equal((await b.request('DELETE', `/v1/nodes/${node.id}`)).status, 200);
});

test('a new image that never answers its health check: the rollout fails by its deadline, the old revision serves with zero failed calls', async (t) => {
  if (skip) return t.skip(skip);
  const node = await createNode(b, { ...GRPC_NODE, name: 'grpc-guarded', image: image('v1'), rollout: { deadlineSeconds: 8 } });
  const client = echoClient(b);
  const load = grpcLoad(client, node.id, 3);
  let failed: any;
  try {
    const r = await patch(node.id, { image: image('deaf') });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.revision, 2);
    // meanwhile a revision-2 container runs beside the old ones
    await waitFor('a container of revision 2', async () => (await containersOf(node.id)).some((c) => c.revision === '2') || undefined, 30_000);
    failed = await rolloutEnds(node.id, 60_000);
    await settledOn(node.id, 1, 2);
    for (let i = 0; i < 10; i++) assert.equal((await client.call(node.id, `after-${i}`)).revision, 'v1');
  } finally {
    await load.end();
    client.close();
  }
  assert.equal(failed.rollout.state, 'Failed', JSON.stringify(failed.rollout));
  assert.equal(failed.rollout.revision, 2);
  assert.equal(failed.rollout.from, 1);
  // the reason says which revision and why: its deadline, or the checks it kept failing
  assert.match(failed.rollout.reason, /revision 2 (were not all Healthy within 8s|keep failing)/);
  assert.equal(failed.revision, 1, 'back on the revision it started from');
  assert.equal(failed.image, image('v1'));
  assert.match(failed.transitions.at(-1).reason, /rollout to revision 2 failed/);
  assert.ok(load.calls > 50, `load ran (${load.calls} calls)`);
  assert.deepEqual(load.failures, [], `${load.failures.length} of ${load.calls} calls failed`);
  assert.deepEqual([...new Set(load.answers.map((a) => a.revision))], ['v1'], 'only the old image ever answered');
  const cli = b.cli('node', 'rollout', 'status', 'grpc-guarded');
  assert.match(cli.stdout + cli.stderr, /Failed/);
  assert.equal((await b.request('DELETE', `/v1/nodes/${node.id}`)).status, 200);
});

test('berth up killed mid-rollout and restarted on the same home: the rollout resumes, or fails back; one revision in the end, no orphan containers', async (t) => {
  if (skip) return t.skip(skip);
  // A: the new image is slow to start (8 s): killed while its first instance is still Preparing
  const resumes = await createNode(b, { ...GRPC_NODE, name: 'grpc-resumes', image: image('v1'), rollout: { deadlineSeconds: 180 } });
  // B: the new image never gets Healthy; its deadline runs out while berth up is down
  const failsBack = await createNode(b, { ...GRPC_NODE, name: 'grpc-fails-back', image: image('v1'), rollout: { deadlineSeconds: 12 } });
  assert.equal((await patch(resumes.id, { image: image('slow') })).status, 200);
  assert.equal((await patch(failsBack.id, { image: image('deaf') })).status, 200);
  await waitFor('a running revision-2 container of each node', async () => {
    const [a, c] = await Promise.all([containersOf(resumes.id), containersOf(failsBack.id)]);
    return a.some((x) => x.revision === '2' && x.state === 'running') && c.some((x) => x.revision === '2' && x.state === 'running') ? true : undefined;
  }, 30_000);
  const mid = await nodeOf(resumes.id);
  assert.equal(mid.rollout.state, 'Progressing', 'killed while the rollout is half done');
  assert.deepEqual(mid.instances.map((i: any) => i.revision).sort(), [1, 1, 2]);
  const newInMid = mid.instances.find((i: any) => i.revision === 2);

  assert.equal(await b.stop('SIGKILL'), null);
  const left = await containersOfHome(b.home);
  assert.ok(left.filter((c) => c.State === 'running').length === 6, `the containers outlive berth up: ${JSON.stringify(left.map((c) => [c.Labels['berth.node-id'], c.Labels['berth.revision'], c.State, c.Status]))}`);
  b = await startBerth(b.home, BERTH_ENV);

  // after the restart, calls to both go on without failing while the rollouts finish
  const client = echoClient(b);
  const loadA = grpcLoad(client, resumes.id, 2);
  const loadB = grpcLoad(client, failsBack.id, 2);
  let a: any, c: any;
  try {
    [a, c] = await Promise.all([rolloutEnds(resumes.id, 120_000), rolloutEnds(failsBack.id, 120_000)]);
    await Promise.all([settledOn(resumes.id, 2, 2, 90_000), settledOn(failsBack.id, 1, 2, 90_000)]);
  } finally {
    await Promise.all([loadA.end(), loadB.end()]);
  }
  try {
    assert.equal(a.rollout.state, 'Complete', JSON.stringify(a.rollout));
    assert.equal(a.revision, 2);
    const final = (await nodeOf(resumes.id)).instances;
    const adopted = final.find((i: any) => i.id === newInMid.id);
    assert.ok(adopted, 'the revision-2 instance started before the kill was adopted and kept (the rollout resumed)');
    assert.ok(adopted.transitions.some((tr: any) => tr.reason === 'adopted after a restart'));
    for (let i = 0; i < 5; i++) assert.equal((await client.call(resumes.id, `a-${i}`)).revision, 'slow');
    assert.equal(c.rollout.state, 'Failed', JSON.stringify(c.rollout));
    assert.equal(c.revision, 1);
    assert.match(c.rollout.reason, /revision 2 (were not all Healthy within 12s|keep failing)/);
    for (let i = 0; i < 5; i++) assert.equal((await client.call(failsBack.id, `c-${i}`)).revision, 'v1');
  } finally {
    client.close();
  }
  assert.deepEqual(loadA.failures, [], `${loadA.failures.length} of ${loadA.calls} calls to the resumed node failed`);
  assert.deepEqual(loadB.failures, [], `${loadB.failures.length} of ${loadB.calls} calls to the failed-back node failed`);
  assert.ok(loadA.calls > 20 && loadB.calls > 20, `load ran (${loadA.calls}, ${loadB.calls} calls)`);
  assert.deepEqual([...new Set(loadB.answers.map((x) => x.revision))], ['v1']);

  // no orphans: every container of this home belongs to an instance Berth shows
  const shown = new Set<string>();
  for (const id of [resumes.id, failsBack.id]) for (const i of (await nodeOf(id)).instances) shown.add(i.id);
  const all = await containersOfHome(b.home);
  assert.deepEqual(all.map((x) => x.Labels['berth.instance-id']).filter((id) => !shown.has(id!)), [], 'containers no instance owns');
  assert.equal(all.length, 4);
});
