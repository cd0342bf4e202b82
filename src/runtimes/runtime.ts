// The one interface between Berth and whatever runs instances. Nothing outside
// runtimes/ knows which implementation is in use.
import type { Endpoint } from '../worker/protocol.js';
import type { CheckpointGrants } from './checkpoint-grants.js';

export interface RegistryAuth { username: string; password: string }

/** A cell instance: Berth's Python worker restoring a checkpoint. */
export interface CellWorkload {
  kind: 'cell';
  /** Interpreter on this machine (process runtime). */
  python: string;
  /** Kernel image with Python and dill (container runtimes); the worker code is Berth's, mounted in. */
  kernelImage: string | null;
  registryAuth: RegistryAuth | null;
  checkpointPath: string;
  /** The blob's sha256 as recorded at upload: a worker that fetches the blob (issue 13) verifies it. */
  checkpointSha256?: string;
  code: string;
  requires: Array<{ name: string; version: string }>;
  inputs: Array<{ name: string; type: string }>;
  outputs: Array<{ name: string; type: string }>;
  maxResponseBytes: number;
  /**
   * Fork the instance from a template process of its node revision that restored the
   * checkpoint once (process runtime; `scaling.fork`). Absent or false: a fresh process.
   */
  fork?: boolean;
}

/** An image instance: any container image serving its own API. */
export interface ImageWorkload {
  kind: 'image';
  image: string;
  registryAuth: RegistryAuth | null;
  env: Record<string, string>;
  /** Container ports to reach from the gateway (endpoint, health check, telemetry). */
  ports: number[];
  /** Capabilities kept (all others dropped). */
  capabilities?: string[];
}

export type Workload = CellWorkload | ImageWorkload;

/** Where instances may run on a cluster runtime (the node spec's `placement`). */
export interface Placement {
  /** The engine's own constraint expressions (Swarm: `node.labels.zone==z1`, `node.role!=manager`). */
  constraints: string[];
  /** A machine label to spread a node's instances over evenly (Swarm: `node.labels.<spread>`). */
  spread?: string;
}

export interface InstanceSpec {
  nodeId: string;
  instanceId: string;
  /** The node revision it runs (kept with the instance, so a restarted Berth knows it when adopting). */
  revision: number;
  workload: Workload;
  resources: { cores: number; memoryGb: number; gpus: number };
  /** none: no network at all (loopback only); outbound (the default): the host's network. */
  network?: 'outbound' | 'none';
  /** Cluster runtimes only (`supportsPlacement`); the API refuses it elsewhere. */
  placement?: Placement;
}

/** Filters on a log read. */
export interface LogQuery {
  /** Only lines containing this text. */
  search?: string;
}

export interface ExitInfo { code: number | null; signal: string | null; error?: string }

export interface RuntimeInstance {
  readonly nodeId: string;
  readonly instanceId: string;
  /** From InstanceSpec; undefined for instances started before revisions existed. */
  readonly revision?: number;
  /**
   * Where Berth reaches the instance. Cell: the worker's socket. Image: the first of
   * `workload.ports` (127.0.0.1 on one machine; a cluster runtime gives the machine's
   * address). Fixed for the handle's life: when a cluster moves the instance, `exited`
   * resolves and the next start() of the same instance gives a handle with the new endpoint.
   */
  readonly endpoint: Endpoint;
  /** Image instances: each container port of `workload.ports` → where it is reached. */
  readonly ports: ReadonlyMap<number, Endpoint>;
  readonly pid: number | null;
  /** Resolves once when the instance stops running, for whatever reason. */
  readonly exited: Promise<ExitInfo>;
}

export interface Runtime {
  readonly name: string;
  /** Whether image nodes can run here (container runtimes only). */
  readonly supportsImages: boolean;
  /** Whether cell nodes can run here; absent means they can. */
  readonly supportsCells?: boolean;
  /** Whether the node spec's `placement` is honoured (cluster runtimes); absent means not. */
  readonly supportsPlacement?: boolean;
  /** Checks the runtime can work (daemon reachable…); a clear message when not. */
  check(): Promise<string | null>;
  /** Limits this runtime cannot enforce, said plainly to the user. */
  unenforced(resources: InstanceSpec['resources']): string[];
  /** Creates and starts the instance (pulling its image if needed); resolves once it exists. */
  start(spec: InstanceSpec): Promise<RuntimeInstance>;
  /** Stops gracefully, then forcibly after graceMs; resolves when it is gone. */
  stop(instance: RuntimeInstance, graceMs: number): Promise<void>;
  /** Kills at once (a hung or failed instance). */
  kill(instance: RuntimeInstance): void;
  /**
   * Instances an earlier `berth up` left running (containers carry node and instance
   * labels). The controller adopts the ones it still wants and stops the rest.
   */
  list(): Promise<RuntimeInstance[]>;
  /** The last `lines` lines of an instance's log (read from the end: O(lines), never the whole log). */
  logs(nodeId: string, instanceId: string, lines: number, query?: LogQuery): Promise<string>;
  /**
   * New log output as it is written, until the instance's log ends (`onEnd`, also when it
   * has ended already). Returns the unsubscribe.
   */
  follow(nodeId: string, instanceId: string, onData: (chunk: Buffer) => void, onEnd: () => void): () => void;
  /** Removes everything left of a node's instances (logs, sockets). */
  cleanup(nodeId: string): Promise<void>;
  /**
   * Runtimes that fork instances from templates (process): the revisions of a node whose
   * templates stay alive even with no instance (the current one, also when scaled to zero);
   * the templates of other revisions go once their last instance has. Called on every reconcile.
   */
  keepTemplates?(nodeId: string, revisions: readonly number[]): void;
  /** What the runtime wants said about a node (why its instances are not forked). */
  nodeWarnings?(nodeId: string): string[];
  /** Checkpoints this runtime's workers fetch from Berth instead of reading a local path (process runtime, TCP workers). */
  readonly checkpointGrants?: CheckpointGrants;
  /** Ends what the runtime keeps beside instances (templates), at shutdown. */
  close?(): Promise<void>;
}
