import Docker from 'dockerode';
import { startTestCluster } from '/work/wt/swarm/test/cluster-support.ts';
import { SwarmRuntime } from '/work/wt/swarm/src/runtimes/swarm.ts';
const t0 = Date.now(); const keep = setInterval(() => {}, 1000);
const el = () => ((Date.now() - t0) / 1000).toFixed(1);
const c = await startTestCluster({ hosts: 3 });
try {
  await c.loadImages(['berth-test/http-echo:latest']);
  const rt = new SwarmRuntime('/tmp/bswb/home', { docker: new Docker({ socketPath: c.managerDockerHost.replace('unix://', '') }) });
  console.log(el(), 'check', await rt.check(), rt.unenforced({ cores: 4, memoryGb: 32, gpus: 0 }));
  const insts = await Promise.all([1, 2, 3].map((i) => rt.start({ nodeId: 'n1', instanceId: 'i' + i, revision: 1, resources: { cores: 0.1, memoryGb: 0.1, gpus: 0 }, workload: { kind: 'image', image: 'berth-test/http-echo:latest', registryAuth: null, env: { A: 'b' }, ports: [8080, 9100] }, placement: { constraints: [], spread: 'zone' } })));
  console.log(el(), insts.map((i) => [i.endpoint, (i as any).machine]));
  const { execSync } = await import("node:child_process"); for (const i of insts) console.log(el(), execSync(`curl -sS -m 3 http://${i.endpoint.host}:${i.endpoint.port}/healthz 2>&1 || true`).toString());
  for (const i of insts) { for (let k = 0; k < 50; k++) { try { const r = await fetch(`http://${i.endpoint.host}:${i.endpoint.port}/healthz`, { signal: AbortSignal.timeout(2000) }); console.log(el(), i.instanceId, r.status); break; } catch { await new Promise(r => setTimeout(r, 100)); } } }
  const victim = insts.find((i) => (i as any).machine !== c.hosts[0]!.nodeId)!;
  const hostIdx = c.hosts.findIndex((h) => h.nodeId === (victim as any).machine);
  console.log(el(), 'killing host', hostIdx);
  c.killHost(hostIdx);
  const info = await victim.exited;
  console.log(el(), 'exited', info);
  const again = await rt.start({ nodeId: 'n1', instanceId: victim.instanceId, revision: 1, resources: { cores: 0.1, memoryGb: 0.1, gpus: 0 }, workload: { kind: 'image', image: 'berth-test/http-echo:latest', registryAuth: null, env: {}, ports: [8080, 9100] } });
  console.log(el(), 'again', again.endpoint, (again as any).machine);
  console.log(await rt.logs('n1', victim.instanceId, 20));
  const listed = await new SwarmRuntime('/tmp/bswb/home', { docker: new Docker({ socketPath: c.managerDockerHost.replace('unix://', '') }) }).list();
  console.log(el(), 'listed', listed.map(i => [i.instanceId, i.endpoint]));
  const rest = [...insts.filter((i) => i !== victim), again]; await Promise.all(rest.map((i) => rt.stop(i, 1000)));
  console.log(el(), 'stopped', await Promise.all(rest.map((i) => i.exited)));
  console.log(await rt.logs('n1', 'i1', 5));
  await rt.close?.();
} finally {
  await c.stop();
  console.log(el(), "down"); clearInterval(keep);
}
