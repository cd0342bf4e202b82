import Database from 'better-sqlite3';
import type { SecretRecord, Store } from './store.js';
import type { OpenInstance, UsageDelta, UsageQuery, UsageRow } from '../usage/store.js';
import type { AliasRecord, AuditEntry, Checkpoint, NodeEvent, NodeRecord, NodeRevision, NodeStatus, Quota, TokenRecord, Transition } from '../core/types.js';
import {
  MAX_AUDIT_ROWS, MAX_NODE_EVENTS, MAX_REVISIONS, MAX_TRANSITIONS, nameTaken, nodeCheckpointId, nodeNotFound, quotaExceeded, revisionConflict,
  rowToAlias, rowToAudit, rowToCheckpoint, rowToNode, rowToNodeEvent, rowToOpenInstance, rowToRevision, rowToSecret, rowToToken, usageTotals,
  type AliasRow, type AuditRow, type NodeEventRow, type NodeRow, type OpenInstanceRow, type RevisionRow, type SecretRow, type TokenRow, type UsageSumsRow,
} from './rows.js';

/**
 * Schema migrations, version = position (from 1), applied in order, each once, each in one
 * transaction. A null is a number taken by work not merged here yet: skipped, and applied
 * whenever it arrives (versions are applied by what is missing, not by the highest seen).
 */
const MIGRATIONS: Array<string | null> = [
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
  // folders own everything: roles per folder on tokens, checkpoint and secret names unique per
  // folder, quotas per folder, and an audit log of every control-plane change
  `ALTER TABLE tokens ADD COLUMN roles TEXT;
   UPDATE tokens SET roles = CASE WHEN admin = 1 THEN '{"*":"admin"}'
     ELSE (SELECT json_group_object(value, 'editor') FROM json_each(tokens.folders)) END;
   ALTER TABLE checkpoints ADD COLUMN folder_id TEXT NOT NULL DEFAULT 'default';
   UPDATE checkpoints SET folder_id = COALESCE(json_extract(data, '$.folderId'), 'default');
   DROP INDEX checkpoints_name;
   CREATE UNIQUE INDEX checkpoints_name ON checkpoints(folder_id, name) WHERE name IS NOT NULL;
   ALTER TABLE secrets ADD COLUMN folder_id TEXT NOT NULL DEFAULT 'default';
   DROP INDEX secrets_name;
   CREATE UNIQUE INDEX secrets_name ON secrets(folder_id, name);
   CREATE TABLE folders (id TEXT PRIMARY KEY, quota TEXT NOT NULL, updated_at TEXT NOT NULL);
   CREATE TABLE audit (
     id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, token_id TEXT, token_name TEXT,
     action TEXT NOT NULL, folder_id TEXT, resource_id TEXT, result TEXT NOT NULL, status INTEGER NOT NULL);
   CREATE INDEX audit_folder ON audit(folder_id, id);`,
  // revisions: what a node's instances run, one row per change that restarts them; the node
  // row holds the current one and its last rollout
  `ALTER TABLE nodes ADD COLUMN revision INTEGER NOT NULL DEFAULT 1;
   ALTER TABLE nodes ADD COLUMN rollout TEXT;
   CREATE TABLE node_revisions (
     node_id TEXT NOT NULL, revision INTEGER NOT NULL, spec TEXT NOT NULL, cause TEXT NOT NULL,
     created_at TEXT NOT NULL, created_by TEXT NOT NULL, PRIMARY KEY (node_id, revision));
   INSERT INTO node_revisions SELECT id, 1, spec, 'created', created_at, created_by FROM nodes;`,
  // 6: node events: scale decisions with their reason, wakes, failed starts, rollouts (bounded per node)
  `CREATE TABLE node_events (
     id INTEGER PRIMARY KEY AUTOINCREMENT, node_id TEXT NOT NULL, at TEXT NOT NULL, type TEXT NOT NULL,
     reason TEXT NOT NULL, details TEXT NOT NULL);
   CREATE INDEX node_events_node ON node_events(node_id, id);`,
  // 7: usage accounting (src/usage/, docs/usage.md): one row per hour, folder, node and preset,
  // added to as usage accrues; and the instance runs open at the last write
  `CREATE TABLE usage (
     hour INTEGER NOT NULL, folder_id TEXT NOT NULL, node_id TEXT NOT NULL, preset TEXT NOT NULL,
     node_name TEXT, instance_seconds REAL NOT NULL DEFAULT 0, calls INTEGER NOT NULL DEFAULT 0,
     bytes_in INTEGER NOT NULL DEFAULT 0, bytes_out INTEGER NOT NULL DEFAULT 0,
     PRIMARY KEY (folder_id, hour, node_id, preset)) WITHOUT ROWID;
   CREATE INDEX usage_hour ON usage(hour);
   CREATE TABLE usage_open (
     instance_id TEXT PRIMARY KEY, folder_id TEXT NOT NULL, node_id TEXT NOT NULL, preset TEXT NOT NULL,
     until INTEGER NOT NULL);`,
  // 8: checkpoint blobs in the database — PostgreSQL only (postgres.ts): with SQLite they stay
  // files under <home>/checkpoints (blobs.ts, FileBlobStore); the number is kept in step
  `SELECT 1;`,
];

/** A unique index said no: the name is taken (the database decides, not a read before the write). */
function isUniqueViolation(err: unknown): boolean {
  return (err as { code?: string }).code === 'SQLITE_CONSTRAINT_UNIQUE';
}

/** Re-exported: older imports read it from here. */
export { MAX_NODE_EVENTS };

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
    const applied = new Set((this.db.prepare('SELECT version FROM schema_migrations').all() as Array<{ version: number }>).map((r) => r.version));
    for (let v = 1; v <= MIGRATIONS.length; v++) {
      const sql = MIGRATIONS[v - 1];
      if (sql === null || sql === undefined || applied.has(v)) continue;
      this.db.transaction(() => {
        this.db.exec(sql);
        this.db.prepare('INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)').run(v, new Date().toISOString());
      })();
    }
  }

  async close(): Promise<void> { this.db.close(); }

  async insertToken(t: TokenRecord): Promise<void> {
    // folders/admin are kept filled for the schema of version 1; roles is what counts
    this.db.prepare('INSERT INTO tokens (id, name, hash, folders, admin, roles, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)')
      .run(t.id, t.name, t.hash, JSON.stringify(Object.keys(t.roles)), t.roles['*'] === 'admin' ? 1 : 0, JSON.stringify(t.roles), t.createdAt);
  }

  async listTokens(): Promise<TokenRecord[]> {
    const rows = this.db.prepare('SELECT * FROM tokens ORDER BY created_at').all() as TokenRow[];
    return rows.map(rowToToken);
  }

  async deleteToken(id: string): Promise<boolean> {
    return this.db.prepare('DELETE FROM tokens WHERE id = ?').run(id).changes > 0;
  }

  async insertCheckpoint(c: Checkpoint, quota: Quota): Promise<void> {
    this.db.transaction(() => {
      const { used } = this.db.prepare('SELECT COALESCE(SUM(json_extract(data, \'$.size\')), 0) AS used FROM checkpoints WHERE folder_id = ?').get(c.folderId) as { used: number };
      if (used + c.size > quota.maxCheckpointBytes) throw quotaExceeded('maxCheckpointBytes', quota.maxCheckpointBytes, used + c.size);
      try {
        this.db.prepare('INSERT INTO checkpoints (id, project_id, folder_id, name, data, created_at) VALUES (?, ?, ?, ?, ?, ?)')
          .run(c.id, c.projectId, c.folderId, c.name, JSON.stringify(c), c.createdAt);
      } catch (err) {
        if (isUniqueViolation(err)) throw nameTaken.checkpoint(c.folderId, c.name);
        throw err;
      }
    })();
  }

  async getCheckpoint(id: string): Promise<Checkpoint | undefined> {
    const row = this.db.prepare('SELECT data FROM checkpoints WHERE id = ?').get(id) as { data: string } | undefined;
    return row && rowToCheckpoint(row);
  }

  async getCheckpointByName(folderId: string, name: string): Promise<Checkpoint | undefined> {
    const row = this.db.prepare('SELECT data FROM checkpoints WHERE folder_id = ? AND name = ?').get(folderId, name) as { data: string } | undefined;
    return row && rowToCheckpoint(row);
  }

  async listCheckpoints(): Promise<Checkpoint[]> {
    const rows = this.db.prepare('SELECT data FROM checkpoints ORDER BY created_at').all() as Array<{ data: string }>;
    return rows.map(rowToCheckpoint);
  }

  async renameCheckpoint(id: string, name: string | null, updatedAt: string): Promise<void> {
    this.db.transaction(() => {
      const row = this.db.prepare('SELECT data FROM checkpoints WHERE id = ?').get(id) as { data: string } | undefined;
      if (!row) return;
      const c = rowToCheckpoint(row);
      c.name = name; c.pinned = name !== null; c.updatedAt = updatedAt;
      try {
        this.db.prepare('UPDATE checkpoints SET name = ?, data = ? WHERE id = ?').run(name, JSON.stringify(c), id);
      } catch (err) {
        if (isUniqueViolation(err)) throw nameTaken.checkpoint(c.folderId, name);
        throw err;
      }
    })();
  }

  async pruneAutosaves(folderId: string, session: string, keep: number): Promise<string[]> {
    return this.db.transaction(() => {
      const rows = this.db.prepare(`SELECT id FROM checkpoints WHERE folder_id = ? AND name IS NULL
          AND json_extract(data, '$.autosave.session') = ? ORDER BY created_at DESC, rowid DESC LIMIT -1 OFFSET ?`)
        .all(folderId, session, keep) as Array<{ id: string }>;
      const del = this.db.prepare('DELETE FROM checkpoints WHERE id = ? AND name IS NULL AND NOT EXISTS (SELECT 1 FROM nodes WHERE checkpoint_id = ?)');
      return rows.filter((r) => del.run(r.id, r.id).changes > 0).map((r) => r.id);
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
    try {
      this.db.prepare('INSERT INTO secrets (id, project_id, folder_id, name, ciphertext, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?)')
        .run(s.id, s.projectId, s.folderId, s.name, s.ciphertext, s.createdAt, s.createdBy);
    } catch (err) {
      if (isUniqueViolation(err)) throw nameTaken.secret(s.folderId, s.name);
      throw err;
    }
  }

  async getSecretByName(folderId: string, name: string): Promise<SecretRecord | undefined> {
    const row = this.db.prepare('SELECT * FROM secrets WHERE folder_id = ? AND name = ?').get(folderId, name) as SecretRow | undefined;
    return row && rowToSecret(row);
  }

  async listSecrets(): Promise<SecretRecord[]> {
    return (this.db.prepare('SELECT * FROM secrets ORDER BY created_at').all() as SecretRow[]).map(rowToSecret);
  }

  async deleteSecret(id: string): Promise<boolean> {
    return this.db.prepare('DELETE FROM secrets WHERE id = ?').run(id).changes > 0;
  }

  async insertAlias(a: AliasRecord): Promise<void> {
    try {
      this.db.prepare('INSERT INTO aliases (id, name, spec, created_at, updated_at, created_by) VALUES (?, ?, ?, ?, ?, ?)')
        .run(a.id, a.spec.name, JSON.stringify(a.spec), a.createdAt, a.updatedAt, a.createdBy);
    } catch (err) {
      if (isUniqueViolation(err)) throw nameTaken.alias(a.spec.name);
      throw err;
    }
  }

  async updateAlias(a: AliasRecord): Promise<void> {
    this.db.prepare('UPDATE aliases SET name = ?, spec = ?, updated_at = ? WHERE id = ?').run(a.spec.name, JSON.stringify(a.spec), a.updatedAt, a.id);
  }

  async listAliases(): Promise<AliasRecord[]> {
    return (this.db.prepare('SELECT * FROM aliases ORDER BY created_at').all() as AliasRow[]).map(rowToAlias);
  }

  async deleteAlias(id: string): Promise<boolean> {
    return this.db.prepare('DELETE FROM aliases WHERE id = ?').run(id).changes > 0;
  }

  async insertNode(n: NodeRecord, quota: Quota): Promise<void> {
    this.db.transaction(() => {
      const row = this.db.prepare(`SELECT COUNT(*) AS nodes, COALESCE(SUM(json_extract(spec, '$.scaling.maxInstances')), 0) AS instances
        FROM nodes WHERE folder_id = ?`).get(n.spec.folderId) as { nodes: number; instances: number };
      if (row.nodes + 1 > quota.maxNodes) throw quotaExceeded('maxNodes', quota.maxNodes, row.nodes + 1);
      const instances = row.instances + n.spec.scaling.maxInstances;
      if (instances > quota.maxInstances) throw quotaExceeded('maxInstances', quota.maxInstances, instances);
      try {
        this.db.prepare(`INSERT INTO nodes (id, folder_id, name, checkpoint_id, spec, revision, rollout, status, transitions, created_at, updated_at, created_by)
          VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
          .run(n.id, n.spec.folderId, n.spec.name, nodeCheckpointId(n),
            JSON.stringify(n.spec), n.revision, n.rollout && JSON.stringify(n.rollout), n.status, JSON.stringify(n.transitions), n.createdAt, n.updatedAt, n.createdBy);
        this.insertRevision({ nodeId: n.id, revision: n.revision, spec: n.spec, cause: 'created', createdAt: n.createdAt, createdBy: n.createdBy });
      } catch (err) {
        if (isUniqueViolation(err)) throw nameTaken.node(n.spec.folderId, n.spec.name);
        throw err;
      }
    })();
  }

  async getNode(id: string): Promise<NodeRecord | undefined> {
    const row = this.db.prepare('SELECT * FROM nodes WHERE id = ?').get(id) as NodeRow | undefined;
    return row && rowToNode(row);
  }

  async listNodes(): Promise<NodeRecord[]> {
    const rows = this.db.prepare('SELECT * FROM nodes ORDER BY created_at').all() as NodeRow[];
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

  async updateNodeSpec(n: NodeRecord, quota: Quota, revision?: NodeRevision): Promise<void> {
    this.db.transaction(() => {
      const row = this.db.prepare(`SELECT COALESCE(SUM(json_extract(spec, '$.scaling.maxInstances')), 0) AS instances
        FROM nodes WHERE folder_id = ? AND id != ?`).get(n.spec.folderId, n.id) as { instances: number };
      const instances = row.instances + n.spec.scaling.maxInstances;
      if (instances > quota.maxInstances) throw quotaExceeded('maxInstances', quota.maxInstances, instances);
      this.writeNode(n);
      if (revision) {
        const last = this.db.prepare('SELECT MAX(revision) AS r FROM node_revisions WHERE node_id = ?').get(n.id) as { r: number | null };
        if (revision.revision <= (last.r ?? 0)) throw revisionConflict(n.id);
        this.insertRevision(revision);
      }
    })();
  }

  async setNodeRevision(n: NodeRecord): Promise<void> {
    this.db.transaction(() => this.writeNode(n))();
  }

  async listRevisions(nodeId: string): Promise<NodeRevision[]> {
    const rows = this.db.prepare('SELECT * FROM node_revisions WHERE node_id = ? ORDER BY revision DESC').all(nodeId) as RevisionRow[];
    return rows.map(rowToRevision);
  }

  /** The node row's spec, revision and rollout (checkpoint_id follows the spec: it decides CHECKPOINT_IN_USE). */
  private writeNode(n: NodeRecord): void {
    const changes = this.db.prepare('UPDATE nodes SET spec = ?, checkpoint_id = ?, revision = ?, rollout = ?, updated_at = ? WHERE id = ?')
      .run(JSON.stringify(n.spec), nodeCheckpointId(n), n.revision, n.rollout && JSON.stringify(n.rollout), n.updatedAt, n.id).changes;
    if (changes === 0) throw nodeNotFound(n.id);
  }

  private insertRevision(r: NodeRevision): void {
    this.db.prepare('INSERT INTO node_revisions (node_id, revision, spec, cause, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?)')
      .run(r.nodeId, r.revision, JSON.stringify(r.spec), r.cause, r.createdAt, r.createdBy);
    this.db.prepare('DELETE FROM node_revisions WHERE node_id = ? AND revision <= ?').run(r.nodeId, r.revision - MAX_REVISIONS);
  }

  async deleteNode(id: string): Promise<void> {
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM node_revisions WHERE node_id = ?').run(id);
      this.db.prepare('DELETE FROM node_events WHERE node_id = ?').run(id);
      this.db.prepare('DELETE FROM nodes WHERE id = ?').run(id);
    })();
  }

  async getQuota(folderId: string): Promise<Partial<Quota> | undefined> {
    const row = this.db.prepare('SELECT quota FROM folders WHERE id = ?').get(folderId) as { quota: string } | undefined;
    return row && JSON.parse(row.quota);
  }

  async setQuota(folderId: string, quota: Partial<Quota>, updatedAt: string): Promise<void> {
    this.db.prepare('INSERT INTO folders (id, quota, updated_at) VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE SET quota = excluded.quota, updated_at = excluded.updated_at')
      .run(folderId, JSON.stringify(quota), updatedAt);
  }

  async folderUsage(folderId: string): Promise<{ nodes: number; instances: number; checkpointBytes: number }> {
    const n = this.db.prepare(`SELECT COUNT(*) AS nodes, COALESCE(SUM(json_extract(spec, '$.scaling.maxInstances')), 0) AS instances
      FROM nodes WHERE folder_id = ?`).get(folderId) as { nodes: number; instances: number };
    const c = this.db.prepare('SELECT COALESCE(SUM(json_extract(data, \'$.size\')), 0) AS bytes FROM checkpoints WHERE folder_id = ?').get(folderId) as { bytes: number };
    return { nodes: n.nodes, instances: n.instances, checkpointBytes: c.bytes };
  }

  async insertNodeEvent(e: Omit<NodeEvent, 'id'>): Promise<void> {
    // events are rare (decisions, not calls): trimming on each write keeps every node bounded exactly
    this.db.transaction(() => {
      this.db.prepare('INSERT INTO node_events (node_id, at, type, reason, details) VALUES (?, ?, ?, ?, ?)')
        .run(e.nodeId, e.at, e.type, e.reason, JSON.stringify(e.details));
      this.db.prepare(`DELETE FROM node_events WHERE node_id = ? AND id <= (
        SELECT id FROM node_events WHERE node_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)`).run(e.nodeId, e.nodeId, MAX_NODE_EVENTS);
    })();
  }

  async listNodeEvents(q: { nodeId: string; limit: number; before?: number }): Promise<NodeEvent[]> {
    const rows = this.db.prepare(`SELECT * FROM node_events WHERE node_id = ? ${q.before !== undefined ? 'AND id < ?' : ''} ORDER BY id DESC LIMIT ?`)
      .all(...(q.before !== undefined ? [q.nodeId, q.before, q.limit] : [q.nodeId, q.limit])) as NodeEventRow[];
    return rows.map(rowToNodeEvent);
  }

  async insertAudit(e: Omit<AuditEntry, 'id'>): Promise<void> {
    const { lastInsertRowid } = this.db.prepare(`INSERT INTO audit (at, token_id, token_name, action, folder_id, resource_id, result, status)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?)`).run(e.at, e.tokenId, e.tokenName, e.action, e.folderId, e.resourceId, e.result, e.status);
    // bounded: trim in batches, not on every write
    if (Number(lastInsertRowid) % 1000 === 0) this.db.prepare('DELETE FROM audit WHERE id <= ?').run(Number(lastInsertRowid) - MAX_AUDIT_ROWS);
  }

  async listAudit(q: { folders: string[] | null; limit: number; before?: number }): Promise<AuditEntry[]> {
    const where: string[] = [];
    const args: unknown[] = [];
    if (q.folders) { where.push(`folder_id IN (${q.folders.map(() => '?').join(', ')})`); args.push(...q.folders); }
    if (q.before !== undefined) { where.push('id < ?'); args.push(q.before); }
    const rows = this.db.prepare(`SELECT * FROM audit ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY id DESC LIMIT ?`)
      .all(...args, q.limit) as AuditRow[];
    return rows.map(rowToAudit);
  }

  // ---- usage (src/usage/) ----

  async writeUsage(deltas: UsageDelta[], open: OpenInstance[], ended: string[]): Promise<void> {
    const add = this.db.prepare(`INSERT INTO usage (hour, folder_id, node_id, preset, node_name, instance_seconds, calls, bytes_in, bytes_out)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
      ON CONFLICT (folder_id, hour, node_id, preset) DO UPDATE SET
        node_name = COALESCE(excluded.node_name, node_name), instance_seconds = instance_seconds + excluded.instance_seconds,
        calls = calls + excluded.calls, bytes_in = bytes_in + excluded.bytes_in, bytes_out = bytes_out + excluded.bytes_out`);
    const keep = this.db.prepare(`INSERT INTO usage_open (instance_id, folder_id, node_id, preset, until) VALUES (?, ?, ?, ?, ?)
      ON CONFLICT (instance_id) DO UPDATE SET folder_id = excluded.folder_id, node_id = excluded.node_id, preset = excluded.preset, until = excluded.until`);
    const drop = this.db.prepare('DELETE FROM usage_open WHERE instance_id = ?');
    this.db.transaction(() => {
      for (const d of deltas) add.run(d.hour, d.folderId, d.nodeId, d.preset, d.nodeName, d.instanceSeconds, d.calls, d.bytesIn, d.bytesOut);
      for (const id of ended) drop.run(id);
      for (const o of open) keep.run(o.instanceId, o.folderId, o.nodeId, o.preset, o.until);
    })();
  }

  async openInstances(): Promise<OpenInstance[]> {
    return (this.db.prepare('SELECT * FROM usage_open').all() as OpenInstanceRow[]).map(rowToOpenInstance);
  }

  async queryUsage(q: UsageQuery): Promise<UsageRow[]> {
    const where = ['hour >= ?', 'hour < ?'];
    const args: unknown[] = [q.from, q.to];
    if (q.folders) { where.push(`folder_id IN (${q.folders.map(() => '?').join(', ')})`); args.push(...q.folders); }
    const sums = 'SUM(instance_seconds) AS instance_seconds, SUM(calls) AS calls, SUM(bytes_in) AS bytes_in, SUM(bytes_out) AS bytes_out';
    const cond = where.join(' AND ');
    type Sums = UsageSumsRow;
    const totals = usageTotals;
    if (q.groupBy === 'folder') {
      const rows = this.db.prepare(`SELECT folder_id, ${sums} FROM usage WHERE ${cond} GROUP BY folder_id ORDER BY folder_id`).all(...args) as Sums[];
      return rows.map((r) => ({ folderId: r.folder_id, ...totals(r) }));
    }
    if (q.groupBy === 'day') {
      const rows = this.db.prepare(`SELECT folder_id, (hour / 86400000) * 86400000 AS day, ${sums} FROM usage WHERE ${cond}
        GROUP BY folder_id, day ORDER BY folder_id, day`).all(...args) as Array<Sums & { day: number }>;
      return rows.map((r) => ({ folderId: r.folder_id, day: new Date(r.day).toISOString().slice(0, 10), ...totals(r) }));
    }
    // the node's name now, or the last one written with its usage (a deleted node)
    const rows = this.db.prepare(`SELECT u.folder_id, u.node_id, u.preset,
        COALESCE((SELECT json_extract(spec, '$.name') FROM nodes WHERE id = u.node_id), MAX(u.node_name)) AS node_name, ${sums}
      FROM usage u WHERE ${cond} GROUP BY u.folder_id, u.node_id, u.preset ORDER BY u.folder_id, node_name, u.node_id, u.preset`)
      .all(...args) as Array<Sums & { node_id: string; preset: string; node_name: string | null }>;
    return rows.map((r) => ({ folderId: r.folder_id, nodeId: r.node_id, nodeName: r.node_name, preset: r.preset, ...totals(r) }));
  }
}
