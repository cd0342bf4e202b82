// The resources Berth stores, as the API shows them (camelCase, like the modelled platform).

export const INSTANCE_STATUSES = ['Undefined', 'Created', 'Started', 'Preparing', 'Healthy', 'Unhealthy', 'Deleting', 'Outdated'] as const;
export type InstanceStatus = (typeof INSTANCE_STATUSES)[number];
export const NODE_STATUSES = ['Created', 'Healthy', 'Unhealthy', 'Suspended', 'Deleting'] as const;
export type NodeStatus = (typeof NODE_STATUSES)[number];

/** The plain variable types; `type` may also be list[T], ndarray[dtype,shape…] or dataframe (core/var-types.ts). */
export const VARIABLE_TYPES = ['int', 'float', 'str', 'bool', 'list', 'dict', 'bytes', 'any'] as const;
export type VariableType = (typeof VARIABLE_TYPES)[number];

/** `type` is a canonical type string (core/var-types.ts); an input with `default` may be left out. */
export interface Variable { name: string; type: string; description?: string; default?: unknown }
export interface Transition<S extends string> { status: S; at: string; reason?: string }

export interface Package { name: string; version: string }

export interface Checkpoint {
  id: string;
  name: string | null;           // pinned when named
  pinned: boolean;
  projectId: string;
  folderId: string;
  source: 'script' | 'notebook' | 'kernel';
  code: string;                   // the serving cell
  cells: string[];                // every cell that was run (empty for kernel snapshots)
  servingCell: number;
  python: string;
  executable: string;
  packages: Package[];
  requires: Package[];
  variables: Array<{ name: string; type: string }>;
  skipped: Array<{ name: string; type: string; reason: string }>;
  /** Live-kernel checkpoints: the kernel cell that made it (its execution count, its source). */
  cell?: CheckpointCell | null;
  /** Recorded by `%berth_autocheckpoint`: unpinned, the kernel session's most recent `keep` kept. */
  autosave?: CheckpointAutosave | null;
  size: number;
  sha256: string;
  createdAt: string;
  updatedAt: string;
  createdBy: string;
}

export interface CheckpointCell { number: number | null; code: string }
export interface CheckpointAutosave { session: string; keep: number }

export interface Resources { preset?: string; cores: number; memoryGb: number; gpus: number }

export interface Scaling {
  minInstances: number;
  maxInstances: number;
  sessionsPerInstance: number;
  /** Calls that may wait for a free session before callers get 503. */
  queueSize: number;
  /** The autoscaler's stabilisation window: instances go only after this long with less load (to zero: with no call at all). */
  scaleDownDelaySeconds: number;
  /** minInstances 0: seconds a call is held while an instance starts, then 503 (absent: SCALING_DEFAULTS). */
  holdTimeout?: number;
  /** Calls in flight per session the autoscaler aims for, 0.1–1 (absent: SCALING_DEFAULTS). */
  targetUtilization?: number;
  /** Cell nodes, process runtime: fork instances from a template (default true; absent in older specs means true). */
  fork?: boolean;
}

/** What optional scaling fields mean when a spec leaves them out (stored only when given). */
export const SCALING_DEFAULTS = { holdTimeout: 60, targetUtilization: 1 } as const;

export interface Healthcheck {
  /** worker: the cell worker's ping; endpoint: the endpoint answers in its protocol (image nodes without a declared check). */
  protocol: 'http' | 'grpc' | 'endpoint' | 'worker';
  port?: number;
  path?: string;
  service?: string;
  timeout: number;      // seconds
  interval: number;     // seconds
  failsThreshold: number;
  passesThreshold: number;
}

/** Node spec `placement`: the cluster engine's constraint expressions, and a machine label to spread over. */
export interface NodePlacement { constraints: string[]; spread?: string }

export interface NodeSpecCommon {
  name: string;
  description: string;
  folderId: string;
  projectId: string;
  permissions: { folders: string[] };
  resources: Resources;
  scaling: Scaling;
  healthcheck: Healthcheck;
  /** outbound (default): the host's network; none: no network at all. Absent in specs stored before it existed. */
  network?: 'outbound' | 'none';
  /** Cluster runtimes (swarm): where instances may run and what to spread them over; absent: anywhere. */
  placement?: NodePlacement;
  /** How a new revision replaces the instances; absent means ROLLOUT_DEFAULTS. */
  rollout?: RolloutSettings;
}

export interface RolloutSettings {
  /** Instances of the new revision that may run beyond the node's count during a rollout. */
  maxSurge: number;
  /** Instances the node may run below its count during a rollout (0: never fewer Healthy ones). */
  maxUnavailable: number;
  /** A rollout whose new instances are not all Healthy by then stops and the old revision stays. */
  deadlineSeconds: number;
}

export const ROLLOUT_DEFAULTS: RolloutSettings = { maxSurge: 1, maxUnavailable: 0, deadlineSeconds: 300 };

export interface CellNodeSpec extends NodeSpecCommon {
  kind: 'cell';
  checkpointId: string;
  inputs: Variable[];
  outputs: Variable[];
  /** python: interpreter (process runtime); image: kernel image with Python and dill (container runtimes). */
  environment: { python: string; image?: string; username?: string; passwordSecret?: string };
  /** Per-call timeout in seconds. */
  timeout: number;
}

export interface Endpoint {
  port: number;
  protocol: 'http' | 'http2' | 'grpc';
  /** Seconds a call may take in all. */
  timeout: number;
  /** Seconds a connection may stay silent before it is closed. */
  idleTimeout: number;
}

export interface ImageNodeSpec extends NodeSpecCommon {
  kind: 'image';
  image: string;
  username?: string;
  passwordSecret?: string;
  env: Record<string, string>;
  /** Linux capabilities the container keeps (all others are dropped); from CAPABILITIES. */
  capabilities?: string[];
  endpoint: Endpoint;
  telemetry?: { path: string; port: number; format: 'prometheus' };
}

export type NodeSpec = CellNodeSpec | ImageNodeSpec;

export interface Secret { id: string; name: string; folderId: string; projectId: string; createdAt: string; createdBy: string }

export interface InstanceView {
  id: string;
  nodeId: string;
  /** The node revision it runs. */
  revision: number;
  status: InstanceStatus;
  endpoint: string | null;
  pid: number | null;
  restarts: number;
  lastError: string | null;
  inFlight: number;
  createdAt: string;
  updatedAt: string;
  transitions: Array<Transition<InstanceStatus>>;
}

/** The last rollout of a node: to `revision` from `from`. Kept after it ends, so the node shows how it went. */
export interface Rollout {
  revision: number;
  from: number;
  state: 'Progressing' | 'Complete' | 'Failed';
  reason?: string;
  startedAt: string;
  finishedAt?: string;
}

/** One version of what a node's instances run; a new one for each change that restarts them. */
export interface NodeRevision {
  nodeId: string;
  revision: number;
  spec: NodeSpec;
  /** Why it exists: created, update (fields), rollback to N. */
  cause: string;
  createdAt: string;
  createdBy: string;
}

export interface NodeRecord {
  id: string;
  spec: NodeSpec;
  /** The revision `spec` is: what new instances run. */
  revision: number;
  rollout: Rollout | null;
  status: NodeStatus;
  transitions: Array<Transition<NodeStatus>>;
  createdAt: string;
  updatedAt: string;
  createdBy: string;
}

/** What a token may do in a folder: admin ⊇ editor ⊇ (executor, viewer). */
export const ROLES = ['admin', 'editor', 'executor', 'viewer'] as const;
export type Role = (typeof ROLES)[number];

export interface TokenRecord {
  id: string;
  name: string;
  hash: string;
  /** Role per folder id; the folder `*` means every folder (the admin token holds `{'*': 'admin'}`). */
  roles: Record<string, Role>;
  createdAt: string;
}

/** Per-folder limits an admin sets; the defaults keep one tenant from exhausting a machine. */
export interface Quota {
  /** Sum of `scaling.maxInstances` over the folder's nodes. */
  maxInstances: number;
  maxNodes: number;
  /** Sum of the folder's checkpoint blob sizes. */
  maxCheckpointBytes: number;
  /** One checkpoint upload or run request body. */
  maxUploadBytes: number;
  /** Checkpoint runs of the folder running at once. */
  maxCheckpointRuns: number;
}

export interface AuditEntry {
  id: number;
  at: string;
  tokenId: string | null;
  tokenName: string | null;
  /** e.g. node.create, alias.update, token.delete */
  action: string;
  folderId: string | null;
  resourceId: string | null;
  /** ok, or the error code the change was refused with */
  result: string;
  status: number;
}

/** Something that happened to a node (GET /v1/nodes/{id}/events): scale decisions with their reason, wakes, failed starts, rollouts. */
export interface NodeEvent {
  id: number;
  nodeId: string;
  /** ISO time. */
  at: string;
  /** kebab-case: scale-up, scale-down, scale-to-zero, wake, start-failed, rollout-started, rollout-complete, rollout-failed, suspended, resumed. */
  type: string;
  /** In words, for people. */
  reason: string;
  /** Numbers behind the decision (from, to, calls in flight…). */
  details: Record<string, unknown>;
}

export interface AliasBackend { nodeId: string; weight: number }

export interface AliasSpec {
  name: string;
  description: string;
  folderId: string;
  projectId: string;
  backends: AliasBackend[];
  executionAcl: { folders: string[]; isPublic: boolean };
  proxyMetadata: { headers: Array<{ name: string; value: string }> };
  /** Calls carrying the same value in this header reach the same node and instance. */
  sticky: { header: string } | null;
  /** A share of calls is also sent to a shadow node; its answers are compared, then dropped. */
  mirror: { nodeId: string; percent: number } | null;
}

export interface AliasRecord {
  id: string;
  spec: AliasSpec;
  createdAt: string;
  updatedAt: string;
  createdBy: string;
}
