// Picks the runtime `berth up` runs instances on.
import type { Runtime } from './runtime.js';
import { ProcessRuntime } from './process.js';
import { DockerRuntime } from './docker.js';
import { SwarmRuntime } from './swarm.js';
import { DEFAULT_LOG_LIMITS, type LogLimits } from './log-file.js';
import type { Sandbox } from '../sandbox/sandbox.js';
import type { WorkerTransport } from './worker-endpoint.js';

export type RuntimeName = 'process' | 'docker' | 'swarm';
export const RUNTIME_NAMES: readonly RuntimeName[] = ['process', 'docker', 'swarm'];

/**
 * `sandbox`: shared with checkpoint runs; the process runtime makes its own from the environment when absent.
 * `owner`: whose instances these are, when several Berth servers share a store (container runtimes).
 * `secretKeyFile`: the server's key (--secret-key-file), from which the Swarm runtime derives instance secrets.
 */
export function createRuntime(name: RuntimeName, home: string, logLimits: LogLimits = DEFAULT_LOG_LIMITS, sandbox?: Sandbox, o: { owner?: string; workerTransport?: WorkerTransport; secretKeyFile?: string | null } = {}): Runtime {
  switch (name) {
    case 'process': return new ProcessRuntime(home, logLimits, sandbox, o.workerTransport);
    case 'docker': return new DockerRuntime(home, { logLimits, ...(o.owner ? { owner: o.owner } : {}), ...(o.workerTransport ? { workerTransport: o.workerTransport } : {}) });
    case 'swarm': return new SwarmRuntime(home, { logLimits, ...(o.owner ? { owner: o.owner } : {}), ...(o.secretKeyFile ? { secretKeyFile: o.secretKeyFile } : {}) });
    default: throw new Error(`unknown runtime ${JSON.stringify(name)}: use ${RUNTIME_NAMES.join(' or ')}`);
  }
}

export { ProcessRuntime, DockerRuntime, SwarmRuntime };
export type { Runtime };
