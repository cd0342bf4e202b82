import { startTestCluster } from '../test/cluster-support.ts';
const c = await startTestCluster({ hosts: 3 });
console.log('up again', c.hosts.map((h) => h.addr).join(','));
await c.stop();
