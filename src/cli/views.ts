// The shapes the control API answers with, as the CLI reads them: the stored resources of
// core/types.ts plus what the API adds on top (live status, instances, related aliases…).
// Kept here, not in core, because only the CLI consumes them as types; the server builds them in src/api.
import type {
  AliasBackend, AliasSpec, AuditEntry, Checkpoint, InstanceView, NodeEvent, NodeSpec, NodeStatus, Quota, Role, Rollout, Secret, Transition,
} from '../core/types.js';

/** A checkpoint; `log` is what the run printed (only in the answer to a create). */
export type CheckpointView = Checkpoint & { log?: string };

/** What every node answer carries besides its spec (api/nodes.ts nodeView). */
export interface NodeLive {
  id: string;
  status: NodeStatus;
  createdAt: string;
  updatedAt: string;
  createdBy: string;
  transitions: Array<Transition<NodeStatus>>;
  instances: InstanceView[];
  queued: number;
  /** minInstances 0 and no instance running: calls are held while one starts. */
  scaledToZero: boolean;
  relatedAliases: string[];
  warnings: string[];
  revision: number;
  /** The last rollout, with how far it got (instances of the new revision, of older ones, Healthy new ones). */
  rollout: (Rollout & { updated?: number; outdated?: number; healthy?: number }) | null;
  /** In the answer to an update: the top-level fields that changed. */
  changed?: string[];
}
export type NodeView = NodeSpec & NodeLive;

/** PATCH /v1/nodes/{id}?dryRun=true */
export interface UpdatePlan {
  dryRun: true;
  nodeId: string;
  changed: string[];
  rollout: boolean;
  revision: number;
  diff: Array<{ field: string; from: unknown; to: unknown }>;
}

export interface RevisionList {
  nodeId: string;
  current: number;
  revisions: Array<{ revision: number; current: boolean; cause: string; createdAt: string; createdBy: string; runs: { checkpointId?: string; image?: string }; changed: string[] }>;
}

/** A backend as the alias answer shows it: its weight plus its node's live state. */
export interface AliasBackendStatus extends AliasBackend {
  nodeStatus: NodeStatus | 'Deleted';
  healthyInstances: number;
}

/** Shadow-traffic counters of an alias with a mirror (aliases/table.ts mirrorStatus). */
export interface MirrorStatus {
  shadowNodeId: string;
  percent: number;
  sent: number;
  compared: number;
  differing: number;
  differingRatio: number;
  shadowErrors: number;
  skipped: number;
  primaryP50Ms: number | null;
  shadowP50Ms: number | null;
  primaryP99Ms: number | null;
  shadowP99Ms: number | null;
}

export type AliasView = AliasSpec & {
  id: string;
  createdAt: string;
  updatedAt: string;
  createdBy: string;
  status: { backends: AliasBackendStatus[]; mirror: MirrorStatus | null };
};

/** A token without its secret (api/tokens.ts tokenView). */
export interface TokenView {
  id: string;
  name: string;
  roles: Record<string, Role>;
  folders: string[];
  admin: boolean;
  createdAt: string;
}
/** The answer to a token create: the only time the token itself is shown. */
export type NewTokenView = TokenView & { token: string };
export type WhoAmI = TokenView & { defaultFolder: string };

export interface FolderView {
  id: string;
  quota: Quota;
  usage: { nodes: number; instances: number; checkpointBytes: number };
}

/** The answer to a delete (secrets and aliases also name what was deleted). */
export interface Deleted { id: string; deleted: true; name?: string; folderId?: string }

/** GET /v1/nodes/{id}/events */
export interface NodeEventList { nodeId: string; events: NodeEvent[] }

export interface NodeLogs { nodeId: string; logs: Array<{ instanceId: string; text: string }> }

/** An execute answer; `output` holds the output variables. */
export interface ExecuteAnswer { output?: Record<string, unknown>; [key: string]: unknown }

export interface NodeList { nodes: NodeView[] }
export interface CheckpointList { checkpoints: CheckpointView[] }
export interface AliasList { aliases: AliasView[] }
export interface SecretList { secrets: Secret[] }
export interface TokenList { tokens: TokenView[] }
export interface AuditList { entries: AuditEntry[] }
