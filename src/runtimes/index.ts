// Picks the runtime `berth up` runs instances on.
import type { Runtime } from './runtime.js';
import { ProcessRuntime } from './process.js';
import { DockerRuntime } from './docker.js';

export type RuntimeName = 'process' | 'docker';
export const RUNTIME_NAMES: readonly RuntimeName[] = ['process', 'docker'];

export function createRuntime(name: RuntimeName, home: string): Runtime {
  switch (name) {
    case 'process': return new ProcessRuntime(home);
    case 'docker': return new DockerRuntime(home);
    default: throw new Error(`unknown runtime ${JSON.stringify(name)}: use ${RUNTIME_NAMES.join(' or ')}`);
  }
}

export { ProcessRuntime, DockerRuntime };
export type { Runtime };
