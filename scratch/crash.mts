import { startTestCluster } from '../test/cluster-support.ts';
const c = await startTestCluster({ hosts: 2 });
console.log('up', c.hosts.map((h) => h.addr).join(','));
process.kill(process.pid, 'SIGKILL');
