import { parseNodeSpec } from '../src/core/node-spec.ts';
try { parseNodeSpec({ kind: 'cell', name: 'cell-on-swarm', checkpointId: 'whatever' } as any, { defaultFolder: 'default', defaultProject: 'default', defaultPython: '/usr/bin/python3' }); console.log('ok'); } catch (e) { console.log(e); }
