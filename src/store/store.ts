import type { UsageStore } from '../usage/store.js';
import type { AliasRecord, AuditEntry, Checkpoint, NodeEvent, NodeRecord, NodeRevision, NodeStatus, Quota, Secret, TokenRecord, Transition } from '../core/types.js';

/** A secret as stored: the value only ever encrypted. */
export interface SecretRecord extends Secret { ciphertext: Buffer }

/**
 * Where Berth keeps its resources. One interface, several backends (SQLite is the
 * embedded default); every backend runs the same test suite.
 * Writes are atomic: a failed call leaves nothing half-written. Uniqueness (NAME_TAKEN) and
 * quotas (QUOTA_EXCEEDED) are decided inside the write's transaction, never by a read before it.
 */
export interface Store extends UsageStore {
  migrate(): Promise<void>;
  close(): Promise<void>;

  insertToken(t: TokenRecord): Promise<void>;
  listTokens(): Promise<TokenRecord[]>;
  deleteToken(id: string): Promise<boolean>;

  /** Refused past the folder's maxCheckpointBytes, or when the name is taken in the folder. */
  insertCheckpoint(c: Checkpoint, quota: Quota): Promise<void>;
  getCheckpoint(id: string): Promise<Checkpoint | undefined>;
  getCheckpointByName(folderId: string, name: string): Promise<Checkpoint | undefined>;
  listCheckpoints(): Promise<Checkpoint[]>;
  renameCheckpoint(id: string, name: string | null, updatedAt: string): Promise<void>;
  /**
   * Deletes the folder's unpinned autosaves of a kernel session past its `keep` most recent
   * (pinned ones stay, whatever their age); returns the ids deleted. One transaction.
   */
  pruneAutosaves(folderId: string, session: string, keep: number): Promise<string[]>;
  /** Deletes unless a node uses it; returns the ids of the nodes that do. */
  deleteCheckpoint(id: string): Promise<{ deleted: boolean; usedBy: string[] }>;

  insertSecret(s: SecretRecord): Promise<void>;
  getSecretByName(folderId: string, name: string): Promise<SecretRecord | undefined>;
  listSecrets(): Promise<SecretRecord[]>;
  deleteSecret(id: string): Promise<boolean>;

  insertAlias(a: AliasRecord): Promise<void>;
  /** Replaces an alias's spec in one write: callers never see a half-applied change. */
  updateAlias(a: AliasRecord): Promise<void>;
  listAliases(): Promise<AliasRecord[]>;
  deleteAlias(id: string): Promise<boolean>;

  /** Refused past the folder's maxNodes / maxInstances, or when the name is taken in the folder. */
  insertNode(n: NodeRecord, quota: Quota): Promise<void>;
  getNode(id: string): Promise<NodeRecord | undefined>;
  listNodes(): Promise<NodeRecord[]>;
  updateNodeStatus(id: string, status: NodeStatus, transition: Transition<NodeStatus>): Promise<void>;
  /**
   * Replaces a node's spec, revision and rollout, with the new revision's row when given (one
   * transaction); refused past the folder's maxInstances (this node's new value counted), and
   * with CONFLICT when that revision number exists already (two updates at once).
   */
  updateNodeSpec(n: NodeRecord, quota: Quota, revision?: NodeRevision): Promise<void>;
  /** Rollout progress: the node's spec, revision and rollout as the controller decided (a failed rollout goes back). */
  setNodeRevision(n: NodeRecord): Promise<void>;
  /** Newest first; the last 20 are kept. */
  listRevisions(nodeId: string): Promise<NodeRevision[]>;
  deleteNode(id: string): Promise<void>;

  /** The limits an admin set for a folder (unset fields take the defaults). */
  getQuota(folderId: string): Promise<Partial<Quota> | undefined>;
  setQuota(folderId: string, quota: Partial<Quota>, updatedAt: string): Promise<void>;
  folderUsage(folderId: string): Promise<{ nodes: number; instances: number; checkpointBytes: number }>;

  /** Appends a node event; only the newest MAX_NODE_EVENTS per node are kept. */
  insertNodeEvent(e: Omit<NodeEvent, 'id'>): Promise<void>;
  /** Newest first; `before`: ids below it (paging). */
  listNodeEvents(q: { nodeId: string; limit: number; before?: number }): Promise<NodeEvent[]>;

  insertAudit(e: Omit<AuditEntry, 'id'>): Promise<void>;
  /** Newest first; `folders: null` means every folder. */
  listAudit(q: { folders: string[] | null; limit: number; before?: number }): Promise<AuditEntry[]>;
}
