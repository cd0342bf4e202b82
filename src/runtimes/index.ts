// Picks the runtime `berth up` runs instances on.
import type { Runtime } from './runtime.js';
import { ProcessRuntime } from './process.js';
import { DockerRuntime } from './docker.js';
import { DEFAULT_LOG_LIMITS, type LogLimits } from './log-file.js';

export type RuntimeName = 'process' | 'docker';
export const RUNTIME_NAMES: readonly RuntimeName[] = ['process', 'docker'];

export function createRuntime(name: RuntimeName, home: string, logLimits: LogLimits = DEFAULT_LOG_LIMITS): Runtime {
  switch (name) {
    case 'process': return new ProcessRuntime(home, logLimits);
    case 'docker': return new DockerRuntime(home, { logLimits });
    default: throw new Error(`unknown runtime ${JSON.stringify(name)}: use ${RUNTIME_NAMES.join(' or ')}`);
  }
}

export { ProcessRuntime, DockerRuntime };
export type { Runtime };
