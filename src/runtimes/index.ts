// Picks the runtime `berth up` runs instances on.
import type { Runtime } from './runtime.js';
import { ProcessRuntime } from './process.js';
import { DockerRuntime } from './docker.js';
import { SwarmRuntime } from './swarm.js';
import { DEFAULT_LOG_LIMITS, type LogLimits } from './log-file.js';
import type { Sandbox } from '../sandbox/sandbox.js';

export type RuntimeName = 'process' | 'docker' | 'swarm';
export const RUNTIME_NAMES: readonly RuntimeName[] = ['process', 'docker', 'swarm'];

/** `sandbox`: shared with checkpoint runs; the process runtime makes its own from the environment when absent. */
export function createRuntime(name: RuntimeName, home: string, logLimits: LogLimits = DEFAULT_LOG_LIMITS, sandbox?: Sandbox): Runtime {
  switch (name) {
    case 'process': return new ProcessRuntime(home, logLimits, sandbox);
    case 'docker': return new DockerRuntime(home, { logLimits });
    case 'swarm': return new SwarmRuntime(home, { logLimits });
    default: throw new Error(`unknown runtime ${JSON.stringify(name)}: use ${RUNTIME_NAMES.join(' or ')}`);
  }
}

export { ProcessRuntime, DockerRuntime, SwarmRuntime };
export type { Runtime };
