import Docker from 'dockerode';
import { startTestCluster } from '../test/cluster-support.ts';
import { SwarmRuntime } from '../src/runtimes/swarm.ts';
import { buildTestImages } from '../test/images/index.ts';
const keep = setInterval(() => {}, 1000);
await buildTestImages(['http-echo']);
const c = await startTestCluster({ hosts: 2 });
try {
  await c.loadImages(['berth-test/http-echo:latest']);
  const rt = new SwarmRuntime('/tmp/bswb/home3', { docker: new Docker({ socketPath: c.managerDockerHost.replace('unix://', '') }) });
  const i = await rt.start({ nodeId: 'n1', instanceId: 'f1', revision: 1, resources: { cores: 0.1, memoryGb: 0.1, gpus: 0 }, workload: { kind: 'image', image: 'berth-test/http-echo:latest', registryAuth: null, env: {}, ports: [8080] } });
  await new Promise((r) => setTimeout(r, 1500));
  let got = '';
  const un = rt.follow('n1', 'f1', (d) => { got += d.toString(); console.log('DATA', JSON.stringify(d.toString())); }, () => console.log('END'));
  await new Promise((r) => setTimeout(r, 1000));
  for (let k = 0; k < 3; k++) { const r = await fetch(`http://${i.endpoint.host}:${i.endpoint.port}/print?text=hello${k}`); console.log(await r.text()); }
  await new Promise((r) => setTimeout(r, 3000));
  console.log('got', JSON.stringify(got));
  console.log('logs', await rt.logs('n1', 'f1', 10));
  un();
  await rt.stop(i, 1000);
} finally { await c.stop(); clearInterval(keep); }
