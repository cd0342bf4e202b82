// The one interface between Berth and whatever runs instances. Nothing outside
// runtimes/ knows which implementation is in use.
import type { Endpoint } from '../worker/protocol.js';

/** What a cell instance needs: the Python worker with its checkpoint. */
export interface CellWorkload {
  kind: 'cell';
  python: string;
  checkpointPath: string;
  code: string;
  requires: Array<{ name: string; version: string }>;
  inputs: Array<{ name: string; type: string }>;
  outputs: Array<{ name: string; type: string }>;
  maxResponseBytes: number;
}

export interface InstanceSpec {
  nodeId: string;
  instanceId: string;
  workload: CellWorkload;
  resources: { cores: number; memoryGb: number; gpus: number };
}

export interface ExitInfo { code: number | null; signal: string | null }

export interface RuntimeInstance {
  readonly nodeId: string;
  readonly instanceId: string;
  /** Where the gateway connects; only ever on this machine (a Unix socket or 127.0.0.1). */
  readonly endpoint: Endpoint;
  readonly pid: number | null;
  /** Resolves once when the instance stops running, for whatever reason. */
  readonly exited: Promise<ExitInfo>;
}

export interface Runtime {
  readonly name: string;
  /** Limits this runtime cannot enforce, said plainly to the user. */
  unenforced(resources: InstanceSpec['resources']): string[];
  /** Creates and starts the instance (the process or container exists when this resolves). */
  start(spec: InstanceSpec): Promise<RuntimeInstance>;
  /** Stops gracefully, then forcibly after graceMs; resolves when it is gone. */
  stop(instance: RuntimeInstance, graceMs: number): Promise<void>;
  /** Kills at once (a hung or failed instance). */
  kill(instance: RuntimeInstance): void;
  /** The last `lines` lines of an instance's log (current and past runs). */
  logs(nodeId: string, instanceId: string, lines: number): Promise<string>;
  /** Removes everything left of a node's instances (logs, sockets). */
  cleanup(nodeId: string): Promise<void>;
}
