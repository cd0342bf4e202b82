import Database from 'better-sqlite3';
import type { SecretRecord, Store } from './store.js';
import type { AliasRecord, Checkpoint, NodeRecord, NodeStatus, TokenRecord, Transition } from '../core/types.js';

/** Schema migrations, applied in order, each once, each in one transaction. */
const MIGRATIONS: string[] = [
  `CREATE TABLE tokens (
     id TEXT PRIMARY KEY, name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
     folders TEXT NOT NULL, admin INTEGER NOT NULL, created_at TEXT NOT NULL);
   CREATE TABLE checkpoints (
     id TEXT PRIMARY KEY, project_id TEXT NOT NULL, name TEXT, data TEXT NOT NULL,
     created_at TEXT NOT NULL);
   CREATE UNIQUE INDEX checkpoints_name ON checkpoints(project_id, name) WHERE name IS NOT NULL;
   CREATE TABLE nodes (
     id TEXT PRIMARY KEY, folder_id TEXT NOT NULL, name TEXT NOT NULL, checkpoint_id TEXT,
     spec TEXT NOT NULL, status TEXT NOT NULL, transitions TEXT NOT NULL,
     created_at TEXT NOT NULL, updated_at TEXT NOT NULL, created_by TEXT NOT NULL);
   CREATE UNIQUE INDEX nodes_name ON nodes(folder_id, name);
   CREATE INDEX nodes_checkpoint ON nodes(checkpoint_id);`,
  `CREATE TABLE secrets (
     id TEXT PRIMARY KEY, project_id TEXT NOT NULL, name TEXT NOT NULL, ciphertext BLOB NOT NULL,
     created_at TEXT NOT NULL, created_by TEXT NOT NULL);
   CREATE UNIQUE INDEX secrets_name ON secrets(project_id, name);`,
  `CREATE TABLE aliases (
     id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, spec TEXT NOT NULL,
     created_at TEXT NOT NULL, updated_at TEXT NOT NULL, created_by TEXT NOT NULL);`,
];

/** Node status history kept per node (older transitions are dropped). */
const MAX_TRANSITIONS = 50;

export class SqliteStore implements Store {
  private readonly db: Database.Database;

  constructor(file: string) {
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('foreign_keys = ON');
    this.db.pragma('busy_timeout = 5000');
  }

  async migrate(): Promise<void> {
    this.db.exec('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)');
    const row = this.db.prepare('SELECT MAX(version) AS v FROM schema_migrations').get() as { v: number | null };
    const current = row.v ?? 0;
    for (let v = current + 1; v <= MIGRATIONS.length; v++) {
      this.db.transaction(() => {
        this.db.exec(MIGRATIONS[v - 1]!);
        this.db.prepare('INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)').run(v, new Date().toISOString());
      })();
    }
  }

  async close(): Promise<void> { this.db.close(); }

  async insertToken(t: TokenRecord): Promise<void> {
    this.db.prepare('INSERT INTO tokens (id, name, hash, folders, admin, created_at) VALUES (?, ?, ?, ?, ?, ?)')
      .run(t.id, t.name, t.hash, JSON.stringify(t.folders), t.admin ? 1 : 0, t.createdAt);
  }

  async listTokens(): Promise<TokenRecord[]> {
    const rows = this.db.prepare('SELECT * FROM tokens ORDER BY created_at').all() as Array<Record<string, any>>;
    return rows.map((r) => ({ id: r.id, name: r.name, hash: r.hash, folders: JSON.parse(r.folders), admin: r.admin === 1, createdAt: r.created_at }));
  }

  async deleteToken(id: string): Promise<boolean> {
    return this.db.prepare('DELETE FROM tokens WHERE id = ?').run(id).changes > 0;
  }

  async insertCheckpoint(c: Checkpoint): Promise<void> {
    this.db.prepare('INSERT INTO checkpoints (id, project_id, name, data, created_at) VALUES (?, ?, ?, ?, ?)')
      .run(c.id, c.projectId, c.name, JSON.stringify(c), c.createdAt);
  }

  async getCheckpoint(id: string): Promise<Checkpoint | undefined> {
    const row = this.db.prepare('SELECT data FROM checkpoints WHERE id = ?').get(id) as { data: string } | undefined;
    return row && JSON.parse(row.data);
  }

  async getCheckpointByName(projectId: string, name: string): Promise<Checkpoint | undefined> {
    const row = this.db.prepare('SELECT data FROM checkpoints WHERE project_id = ? AND name = ?').get(projectId, name) as { data: string } | undefined;
    return row && JSON.parse(row.data);
  }

  async listCheckpoints(): Promise<Checkpoint[]> {
    const rows = this.db.prepare('SELECT data FROM checkpoints ORDER BY created_at').all() as Array<{ data: string }>;
    return rows.map((r) => JSON.parse(r.data));
  }

  async renameCheckpoint(id: string, name: string | null, updatedAt: string): Promise<void> {
    this.db.transaction(() => {
      const row = this.db.prepare('SELECT data FROM checkpoints WHERE id = ?').get(id) as { data: string } | undefined;
      if (!row) return;
      const c = JSON.parse(row.data) as Checkpoint;
      c.name = name; c.pinned = name !== null; c.updatedAt = updatedAt;
      this.db.prepare('UPDATE checkpoints SET name = ?, data = ? WHERE id = ?').run(name, JSON.stringify(c), id);
    })();
  }

  async deleteCheckpoint(id: string): Promise<{ deleted: boolean; usedBy: string[] }> {
    // check-and-delete in one transaction, so a node created meanwhile cannot slip in
    return this.db.transaction(() => {
      const users = this.db.prepare('SELECT id FROM nodes WHERE checkpoint_id = ?').all(id) as Array<{ id: string }>;
      if (users.length > 0) return { deleted: false, usedBy: users.map((u) => u.id) };
      const changes = this.db.prepare('DELETE FROM checkpoints WHERE id = ?').run(id).changes;
      return { deleted: changes > 0, usedBy: [] };
    })();
  }

  async insertSecret(s: SecretRecord): Promise<void> {
    this.db.prepare('INSERT INTO secrets (id, project_id, name, ciphertext, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?)')
      .run(s.id, s.projectId, s.name, s.ciphertext, s.createdAt, s.createdBy);
  }

  async getSecretByName(projectId: string, name: string): Promise<SecretRecord | undefined> {
    const row = this.db.prepare('SELECT * FROM secrets WHERE project_id = ? AND name = ?').get(projectId, name) as Record<string, any> | undefined;
    return row && rowToSecret(row);
  }

  async listSecrets(): Promise<SecretRecord[]> {
    return (this.db.prepare('SELECT * FROM secrets ORDER BY created_at').all() as Array<Record<string, any>>).map(rowToSecret);
  }

  async deleteSecret(id: string): Promise<boolean> {
    return this.db.prepare('DELETE FROM secrets WHERE id = ?').run(id).changes > 0;
  }

  async insertAlias(a: AliasRecord): Promise<void> {
    this.db.prepare('INSERT INTO aliases (id, name, spec, created_at, updated_at, created_by) VALUES (?, ?, ?, ?, ?, ?)')
      .run(a.id, a.spec.name, JSON.stringify(a.spec), a.createdAt, a.updatedAt, a.createdBy);
  }

  async updateAlias(a: AliasRecord): Promise<void> {
    this.db.prepare('UPDATE aliases SET name = ?, spec = ?, updated_at = ? WHERE id = ?').run(a.spec.name, JSON.stringify(a.spec), a.updatedAt, a.id);
  }

  async listAliases(): Promise<AliasRecord[]> {
    return (this.db.prepare('SELECT * FROM aliases ORDER BY created_at').all() as Array<Record<string, any>>).map((r) => ({
      id: r.id, spec: JSON.parse(r.spec), createdAt: r.created_at, updatedAt: r.updated_at, createdBy: r.created_by,
    }));
  }

  async deleteAlias(id: string): Promise<boolean> {
    return this.db.prepare('DELETE FROM aliases WHERE id = ?').run(id).changes > 0;
  }

  async insertNode(n: NodeRecord): Promise<void> {
    this.db.prepare(`INSERT INTO nodes (id, folder_id, name, checkpoint_id, spec, status, transitions, created_at, updated_at, created_by)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
      .run(n.id, n.spec.folderId, n.spec.name, n.spec.kind === 'cell' ? n.spec.checkpointId : null,
        JSON.stringify(n.spec), n.status, JSON.stringify(n.transitions), n.createdAt, n.updatedAt, n.createdBy);
  }

  async getNode(id: string): Promise<NodeRecord | undefined> {
    const row = this.db.prepare('SELECT * FROM nodes WHERE id = ?').get(id) as Record<string, any> | undefined;
    return row && rowToNode(row);
  }

  async listNodes(): Promise<NodeRecord[]> {
    const rows = this.db.prepare('SELECT * FROM nodes ORDER BY created_at').all() as Array<Record<string, any>>;
    return rows.map(rowToNode);
  }

  async updateNodeStatus(id: string, status: NodeStatus, transition: Transition<NodeStatus>): Promise<void> {
    this.db.transaction(() => {
      const row = this.db.prepare('SELECT transitions FROM nodes WHERE id = ?').get(id) as { transitions: string } | undefined;
      if (!row) return;
      const transitions = [...JSON.parse(row.transitions), transition].slice(-MAX_TRANSITIONS);
      this.db.prepare('UPDATE nodes SET status = ?, transitions = ?, updated_at = ? WHERE id = ?')
        .run(status, JSON.stringify(transitions), transition.at, id);
    })();
  }

  async deleteNode(id: string): Promise<void> {
    this.db.prepare('DELETE FROM nodes WHERE id = ?').run(id);
  }
}

function rowToSecret(r: Record<string, any>): SecretRecord {
  return { id: r.id, projectId: r.project_id, name: r.name, ciphertext: r.ciphertext, createdAt: r.created_at, createdBy: r.created_by };
}

function rowToNode(r: Record<string, any>): NodeRecord {
  return {
    id: r.id, spec: JSON.parse(r.spec), status: r.status, transitions: JSON.parse(r.transitions),
    createdAt: r.created_at, updatedAt: r.updated_at, createdBy: r.created_by,
  };
}
