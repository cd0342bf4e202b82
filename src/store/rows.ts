// What every store backend shares: the rows as the databases return them (snake_case columns,
// JSON kept as text, timestamps as the ISO strings the API shows), the one mapping from a row
// to a record, the limits that keep tables bounded, and the errors a refused write raises.
// SqliteStore and PostgresStore both use these, so a record reads the same from either.
import type { SecretRecord } from './store.js';
import type { OpenInstance, UsageRow } from '../usage/store.js';
import type { AliasRecord, AuditEntry, Checkpoint, NodeEvent, NodeRecord, NodeRevision, NodeStatus, Quota, TokenRecord } from '../core/types.js';
import { BerthError } from '../core/errors.js';

export interface TokenRow { id: string; name: string; hash: string; roles: string; created_at: string }
export interface CheckpointRow { data: string }
export interface SecretRow { id: string; folder_id: string; project_id: string; name: string; ciphertext: Buffer; created_at: string; created_by: string }
export interface AliasRow { id: string; spec: string; created_at: string; updated_at: string; created_by: string }
export interface NodeRow { id: string; spec: string; revision: number; rollout: string | null; status: NodeStatus; transitions: string; created_at: string; updated_at: string; created_by: string }
export interface RevisionRow { node_id: string; revision: number; spec: string; cause: string; created_at: string; created_by: string }
export interface AuditRow { id: number; at: string; token_id: string | null; token_name: string | null; action: string; folder_id: string | null; resource_id: string | null; result: string; status: number }
export interface NodeEventRow { id: number; node_id: string; at: string; type: string; reason: string; details: string }
export interface OpenInstanceRow { instance_id: string; folder_id: string; node_id: string; preset: string; until: number }
/** Usage sums per group (queryUsage). */
export interface UsageSumsRow { folder_id: string; instance_seconds: number; calls: number; bytes_in: number; bytes_out: number }

/** Events kept per node (the oldest are dropped past this). */
export const MAX_NODE_EVENTS = 1000;
/** Audit rows kept (the oldest are dropped past this). */
export const MAX_AUDIT_ROWS = 200_000;
/** Node status history kept per node (older transitions are dropped). */
export const MAX_TRANSITIONS = 50;
/** Revisions kept per node (the oldest are dropped; the current one always stays). */
export const MAX_REVISIONS = 20;

export function rowToToken(r: TokenRow): TokenRecord {
  return { id: r.id, name: r.name, hash: r.hash, roles: JSON.parse(r.roles), createdAt: r.created_at };
}

export function rowToCheckpoint(r: CheckpointRow): Checkpoint {
  return JSON.parse(r.data) as Checkpoint;
}

export function rowToSecret(r: SecretRow): SecretRecord {
  return { id: r.id, folderId: r.folder_id, projectId: r.project_id, name: r.name, ciphertext: r.ciphertext, createdAt: r.created_at, createdBy: r.created_by };
}

export function rowToAlias(r: AliasRow): AliasRecord {
  return { id: r.id, spec: JSON.parse(r.spec), createdAt: r.created_at, updatedAt: r.updated_at, createdBy: r.created_by };
}

export function rowToNode(r: NodeRow): NodeRecord {
  return {
    id: r.id, spec: JSON.parse(r.spec), revision: r.revision, rollout: r.rollout === null ? null : JSON.parse(r.rollout),
    status: r.status, transitions: JSON.parse(r.transitions),
    createdAt: r.created_at, updatedAt: r.updated_at, createdBy: r.created_by,
  };
}

export function rowToRevision(r: RevisionRow): NodeRevision {
  return { nodeId: r.node_id, revision: r.revision, spec: JSON.parse(r.spec), cause: r.cause, createdAt: r.created_at, createdBy: r.created_by };
}

export function rowToAudit(r: AuditRow): AuditEntry {
  return {
    id: r.id, at: r.at, tokenId: r.token_id, tokenName: r.token_name, action: r.action,
    folderId: r.folder_id, resourceId: r.resource_id, result: r.result, status: r.status,
  };
}

export function rowToNodeEvent(r: NodeEventRow): NodeEvent {
  return { id: r.id, nodeId: r.node_id, at: r.at, type: r.type, reason: r.reason, details: JSON.parse(r.details) as Record<string, unknown> };
}

export function rowToOpenInstance(r: OpenInstanceRow): OpenInstance {
  return { instanceId: r.instance_id, folderId: r.folder_id, nodeId: r.node_id, preset: r.preset, until: r.until };
}

export function usageTotals(r: UsageSumsRow): Pick<UsageRow, 'instanceSeconds' | 'calls' | 'bytesIn' | 'bytesOut'> {
  return { instanceSeconds: Math.round(r.instance_seconds * 1000) / 1000, calls: r.calls, bytesIn: r.bytes_in, bytesOut: r.bytes_out };
}

/** The node row's checkpoint column: it decides CHECKPOINT_IN_USE. */
export function nodeCheckpointId(n: NodeRecord): string | null {
  return n.spec.kind === 'cell' ? n.spec.checkpointId : null;
}

export function quotaExceeded(field: keyof Quota, limit: number, wanted: number): BerthError {
  return new BerthError('QUOTA_EXCEEDED', `folder quota ${field} is ${limit}; this change needs ${wanted}`, { quota: field, limit, wanted });
}

/** What a unique index refusing a name becomes (the database decides, not a read before the write). */
export const nameTaken = {
  checkpoint: (folderId: string, name: string | null): BerthError =>
    new BerthError('NAME_TAKEN', `a checkpoint named "${name}" already exists in folder ${folderId}`, { field: 'name', name }),
  secret: (folderId: string, name: string): BerthError =>
    new BerthError('NAME_TAKEN', `a secret named "${name}" already exists in folder ${folderId}`, { field: 'name', name }),
  // alias names are global (callers address them by name alone): say no more than that it is taken
  alias: (name: string): BerthError =>
    new BerthError('NAME_TAKEN', `the alias name "${name}" is not available`, { field: 'name', name }),
  node: (folderId: string, name: string): BerthError =>
    new BerthError('NAME_TAKEN', `a node named "${name}" already exists in folder ${folderId}`, { field: 'name', name }),
};

export function revisionConflict(nodeId: string): BerthError {
  return new BerthError('CONFLICT', `node ${nodeId} changed meanwhile: try again`, { nodeId });
}

export function nodeNotFound(nodeId: string): BerthError {
  return new BerthError('NODE_NOT_FOUND', `node ${nodeId} not found`, { nodeId });
}
