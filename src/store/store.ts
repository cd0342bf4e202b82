import type { AliasRecord, Checkpoint, NodeRecord, NodeStatus, Secret, TokenRecord, Transition } from '../core/types.js';

/** A secret as stored: the value only ever encrypted. */
export interface SecretRecord extends Secret { ciphertext: Buffer }

/**
 * Where Berth keeps its resources. One interface, several backends (SQLite is the
 * embedded default); every backend runs the same test suite.
 * Writes are atomic: a failed call leaves nothing half-written.
 */
export interface Store {
  migrate(): Promise<void>;
  close(): Promise<void>;

  insertToken(t: TokenRecord): Promise<void>;
  listTokens(): Promise<TokenRecord[]>;
  deleteToken(id: string): Promise<boolean>;

  insertCheckpoint(c: Checkpoint): Promise<void>;
  getCheckpoint(id: string): Promise<Checkpoint | undefined>;
  getCheckpointByName(projectId: string, name: string): Promise<Checkpoint | undefined>;
  listCheckpoints(): Promise<Checkpoint[]>;
  renameCheckpoint(id: string, name: string | null, updatedAt: string): Promise<void>;
  /** Deletes unless a node uses it; returns the ids of the nodes that do. */
  deleteCheckpoint(id: string): Promise<{ deleted: boolean; usedBy: string[] }>;

  insertSecret(s: SecretRecord): Promise<void>;
  getSecretByName(projectId: string, name: string): Promise<SecretRecord | undefined>;
  listSecrets(): Promise<SecretRecord[]>;
  deleteSecret(id: string): Promise<boolean>;

  insertAlias(a: AliasRecord): Promise<void>;
  /** Replaces an alias's spec in one write: callers never see a half-applied change. */
  updateAlias(a: AliasRecord): Promise<void>;
  listAliases(): Promise<AliasRecord[]>;
  deleteAlias(id: string): Promise<boolean>;

  insertNode(n: NodeRecord): Promise<void>;
  getNode(id: string): Promise<NodeRecord | undefined>;
  listNodes(): Promise<NodeRecord[]>;
  updateNodeStatus(id: string, status: NodeStatus, transition: Transition<NodeStatus>): Promise<void>;
  deleteNode(id: string): Promise<void>;
}
