import Docker from 'dockerode';
import { startTestCluster } from '../test/cluster-support.ts';
import { SwarmRuntime } from '../src/runtimes/swarm.ts';
const t0 = Date.now();
const el = () => ((Date.now() - t0) / 1000).toFixed(1);
const c = await startTestCluster({ hosts: 3 });
try {
  await c.loadImages(['berth-test/http-echo:latest']);
  const rt = new SwarmRuntime('/tmp/bswb/home2', { docker: new Docker({ socketPath: c.managerDockerHost.replace('unix://', '') }) });
  console.log(el(), 'starting');
  const p = rt.start({ nodeId: 'n1', instanceId: 'x1', revision: 1, resources: { cores: 0.5, memoryGb: 0.25, gpus: 0 }, workload: { kind: 'image', image: 'berth-test/http-echo:latest', registryAuth: null, env: { A: 'b' }, ports: [8080, 9100], capabilities: ['NET_BIND_SERVICE'] } });
  const timer = setInterval(async () => { console.log(el(), 'tasks', JSON.stringify((await c.manager.listTasks() as any[]).map((t) => [t.DesiredState, t.Status.State, t.Status.Err]))); }, 2000);
  const i = await p;
  clearInterval(timer);
  console.log(el(), 'started', i.endpoint);
  const keep = process.argv[2] === 'keep' ? setInterval(() => {}, 1000) : null;
  for (let k = 0; k < 40; k++) {
    try { const r = await fetch(`http://${i.endpoint.host}:${i.endpoint.port}/healthz`, { signal: AbortSignal.timeout(500) }); console.log(el(), 'fetch', r.status, await r.text()); break; }
    catch (e) { console.log(el(), 'fetch err', (e as Error).message, (e as any).cause?.code); await new Promise((r) => setTimeout(r, 50)); }
  }
  if (keep) clearInterval(keep);
  await rt.stop(i, 1000);
} finally { await c.stop(); console.log(el(), 'down'); }
