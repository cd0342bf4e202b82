// The store suite: ONE set of tests (storeSuite) run against every backend — SQLite (a file in
// a temp home) and PostgreSQL (a fresh `berth_test_<random>` database per run, dropped after) —
// as kysely runs its tests per dialect. Every Store method; uniqueness races (two inserts of one
// name at once: exactly one NAME_TAKEN) and quota races between two store instances on one
// database (= two Berth servers); migrations idempotent and concurrent; usage sums; checkpoint
// blobs round trip between two homes with sha256 refused on mismatch.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import pg from 'pg';
import { openStore, type OpenedStore } from '../src/store/index.js';
import { MAX_NODE_EVENTS, MAX_REVISIONS, MAX_TRANSITIONS } from '../src/store/rows.js';
import { PG_MIGRATIONS } from '../src/store/postgres.js';
import { BLOB_CHUNK_BYTES } from '../src/store/blobs.js';
import { BerthError } from '../src/core/errors.js';
import { newId } from '../src/core/ids.js';
import { DEFAULT_QUOTA } from '../src/folders/quotas.js';
import type { Checkpoint, NodeRecord, NodeSpec, Quota, AliasRecord } from '../src/core/types.js';
import { createTestDatabase, pgProblem, type TestDatabase } from './pg-support.js';

/** One database a backend gives the suite; open() is one more Berth server on it. */
interface Target {
  /** A migrated store, as `berth up` opens it, with its own home (its own blob cache). */
  open(): Promise<OpenedStore>;
  /** Schema versions recorded as applied. */
  versions(): Promise<number[]>;
  /** Runs SQL against the database directly (tampering tests). */
  exec(sql: string, args?: unknown[]): Promise<void>;
  /** Whether blobs are kept apart from the home (fetched and verified on another machine). */
  sharedBlobs: boolean;
  dispose(): Promise<void>;
}

type Backend = () => Promise<Target | string>;

const homes: string[] = [];
function home(): string {
  const h = mkdtempSync(join(tmpdir(), 'berth-store-'));
  homes.push(h);
  return h;
}
after(() => { for (const h of homes) rmSync(h, { recursive: true, force: true }); });

const sqlite: Backend = async () => {
  const h = home();
  const file = join(h, 'berth.db');
  return {
    open: () => openStore({ home: h, store: null }),
    versions: async () => {
      const db = new Database(file, { readonly: true });
      try { return (db.prepare('SELECT version FROM schema_migrations ORDER BY version').all() as Array<{ version: number }>).map((r) => r.version); } finally { db.close(); }
    },
    exec: async (sql, args = []) => {
      const db = new Database(file);
      try { db.prepare(sql).run(...args); } finally { db.close(); }
    },
    sharedBlobs: false,
    dispose: async () => {},
  };
};

const postgres: Backend = async () => {
  const problem = await pgProblem();
  if (problem) {
    if (process.env.CI) throw new Error(`CI must have PostgreSQL: ${problem}`);
    return problem;
  }
  const db: TestDatabase = await createTestDatabase();
  const query = async (sql: string, args: unknown[] = []): Promise<pg.QueryResult> => {
    const c = new pg.Client({ connectionString: db.url });
    await c.connect();
    try { return await c.query(sql, args); } finally { await c.end(); }
  };
  return {
    open: () => openStore({ home: home(), store: db.url }),
    versions: async () => (await query('SELECT version FROM schema_migrations ORDER BY version')).rows.map((r: { version: number }) => r.version),
    exec: async (sql, args) => { await query(sql, args); },
    sharedBlobs: true,
    dispose: () => db.drop(),
  };
};

// ---- fixtures ----

let clock = Date.parse('2026-01-01T00:00:00.000Z');
/** Increasing ISO times: orders never hang on two writes in one millisecond. */
function iso(): string { return new Date(clock++).toISOString(); }
function folder(): string { return 'f-' + randomBytes(4).toString('hex'); }

const quota = (q: Partial<Quota> = {}): Quota => ({ ...DEFAULT_QUOTA, ...q });

function checkpoint(folderId: string, name: string | null, size = 100, extra: Partial<Checkpoint> = {}): Checkpoint {
  const at = iso();
  return {
    id: newId(), name, pinned: name !== null, projectId: 'p', folderId, source: 'script', code: 'x = 1', cells: ['x = 1'], servingCell: 0,
    python: '3.11', executable: '/usr/bin/python3', packages: [], requires: [], variables: [{ name: 'x', type: 'int' }], skipped: [],
    size, sha256: 'a'.repeat(64), createdAt: at, updatedAt: at, createdBy: 'tester', ...extra,
  };
}

function spec(folderId: string, name: string, maxInstances = 1, checkpointId = 'ck'): NodeSpec {
  return {
    kind: 'cell', name, description: 'é ✓ "quoted"', folderId, projectId: 'p', permissions: { folders: [folderId] },
    resources: { cores: 1, memoryGb: 1, gpus: 0 },
    scaling: { minInstances: 0, maxInstances, sessionsPerInstance: 1, queueSize: 4, scaleDownDelaySeconds: 60 },
    healthcheck: { protocol: 'worker', timeout: 1, interval: 5, failsThreshold: 3, passesThreshold: 1 },
    checkpointId, inputs: [], outputs: [{ name: 'y', type: 'int' }], environment: { python: '/usr/bin/python3' }, timeout: 30,
  };
}

function node(folderId: string, name: string, maxInstances = 1, checkpointId = 'ck'): NodeRecord {
  const at = iso();
  return {
    id: newId(), spec: spec(folderId, name, maxInstances, checkpointId), revision: 1, rollout: null, status: 'Created',
    transitions: [{ status: 'Created', at }], createdAt: at, updatedAt: at, createdBy: 'tester',
  };
}

function alias(name: string, folderId = 'default'): AliasRecord {
  const at = iso();
  return {
    id: newId(), createdAt: at, updatedAt: at, createdBy: 'tester',
    spec: { name, description: '', folderId, projectId: 'p', backends: [{ nodeId: 'n1', weight: 100 }], executionAcl: { folders: [folderId], isPublic: false }, proxyMetadata: { headers: [] }, sticky: null, mirror: null },
  };
}

async function code(p: Promise<unknown>): Promise<string> {
  try { await p; return 'ok'; } catch (err) {
    if (err instanceof BerthError) return err.code;
    throw err;
  }
}

// ---- the suite ----

function storeSuite(name: string, backend: Backend): void {
  describe(`store: ${name}`, () => {
    let target: Target;
    let a: OpenedStore; // two servers on one database
    let b: OpenedStore;
    let skip: string | null = null;

    before(async () => {
      const t = await backend();
      if (typeof t === 'string') { skip = t; console.log(`# skipping the ${name} store suite: ${t}`); return; }
      target = t;
      a = await target.open();
      b = await target.open();
    });
    after(async () => {
      await a?.store.close();
      await b?.store.close();
      await target?.dispose();
    });
    const it = (title: string, fn: () => Promise<void>): void => {
      test(title, async (t) => { if (skip) { t.skip(skip); return; } await fn(); });
    };

    it('migrations: applied once each, again is a no-op, several servers starting at once agree', async () => {
      const expected = PG_MIGRATIONS.map((m, i) => (m === null ? 0 : i + 1)).filter(Boolean);
      assert.deepEqual(await target.versions(), expected);
      await a.store.migrate();
      await b.store.migrate();
      assert.deepEqual(await target.versions(), expected);
      // a fresh database, three servers migrating it at once
      const fresh = await backend();
      assert.ok(typeof fresh !== 'string');
      try {
        const opened = await Promise.all([fresh.open(), fresh.open(), fresh.open()]);
        assert.deepEqual(await fresh.versions(), expected);
        await opened[0]!.store.insertToken({ id: newId(), name: 't', hash: newId(), roles: { '*': 'admin' }, createdAt: iso() });
        assert.equal((await opened[2]!.store.listTokens()).length, 1);
        for (const o of opened) await o.store.close();
      } finally {
        await fresh.dispose();
      }
    });

    it('tokens: insert, list in creation order, delete', async () => {
      const t1 = { id: newId(), name: 'one', hash: newId(), roles: { '*': 'admin' as const }, createdAt: iso() };
      const t2 = { id: newId(), name: 'two', hash: newId(), roles: { f1: 'editor' as const, f2: 'viewer' as const }, createdAt: iso() };
      await a.store.insertToken(t1);
      await a.store.insertToken(t2);
      const listed = (await b.store.listTokens()).filter((t) => t.id === t1.id || t.id === t2.id);
      assert.deepEqual(listed, [t1, t2]);
      assert.equal(await b.store.deleteToken(t1.id), true);
      assert.equal(await b.store.deleteToken(t1.id), false);
      assert.deepEqual((await a.store.listTokens()).filter((t) => t.id === t1.id), []);
    });

    it('checkpoints: insert, get, by name, list, rename, NAME_TAKEN, bytes quota, delete unless used', async () => {
      const f = folder();
      const c1 = checkpoint(f, 'model', 300, { cell: { number: 3, code: 'x = 1' } });
      await a.store.insertCheckpoint(c1, quota());
      assert.deepEqual(await b.store.getCheckpoint(c1.id), c1);
      assert.deepEqual(await b.store.getCheckpointByName(f, 'model'), c1);
      assert.equal(await b.store.getCheckpointByName(folder(), 'model'), undefined);
      assert.equal(await b.store.getCheckpoint('nope'), undefined);
      // names are unique per folder; another folder may use it
      assert.equal(await code(b.store.insertCheckpoint(checkpoint(f, 'model'), quota())), 'NAME_TAKEN');
      await b.store.insertCheckpoint(checkpoint(folder(), 'model'), quota());
      // unnamed ones never collide
      const u1 = checkpoint(f, null, 100);
      await a.store.insertCheckpoint(u1, quota());
      await a.store.insertCheckpoint(checkpoint(f, null, 100), quota());
      assert.deepEqual(await a.store.folderUsage(f), { nodes: 0, instances: 0, checkpointBytes: 500 });
      assert.equal(await code(a.store.insertCheckpoint(checkpoint(f, null, 501), quota({ maxCheckpointBytes: 1000 }))), 'QUOTA_EXCEEDED');
      await a.store.insertCheckpoint(checkpoint(f, null, 500), quota({ maxCheckpointBytes: 1000 }));
      const listed = (await b.store.listCheckpoints()).filter((c) => c.folderId === f);
      assert.deepEqual(listed.map((c) => c.size), [300, 100, 100, 500]);
      // pin, rename onto a taken name, unpin
      const at = iso();
      await b.store.renameCheckpoint(u1.id, 'pinned', at);
      assert.deepEqual(await a.store.getCheckpoint(u1.id), { ...u1, name: 'pinned', pinned: true, updatedAt: at });
      assert.equal(await code(a.store.renameCheckpoint(u1.id, 'model', iso())), 'NAME_TAKEN');
      assert.equal((await a.store.getCheckpoint(u1.id))!.name, 'pinned');
      await a.store.renameCheckpoint(u1.id, null, iso());
      assert.equal((await a.store.getCheckpoint(u1.id))!.pinned, false);
      await a.store.renameCheckpoint('nope', 'x', iso()); // nothing there: nothing happens
      // a node's checkpoint stays
      const n = node(f, 'user', 1, c1.id);
      await a.store.insertNode(n, quota());
      assert.deepEqual(await b.store.deleteCheckpoint(c1.id), { deleted: false, usedBy: [n.id] });
      await a.store.deleteNode(n.id);
      assert.deepEqual(await b.store.deleteCheckpoint(c1.id), { deleted: true, usedBy: [] });
      assert.deepEqual(await b.store.deleteCheckpoint(c1.id), { deleted: false, usedBy: [] });
      assert.equal(await a.store.getCheckpoint(c1.id), undefined);
    });

    it('checkpoints: pruneAutosaves keeps the newest, pinned ones and those a node uses', async () => {
      const f = folder();
      const mk = (session: string): Checkpoint => checkpoint(f, null, 10, { source: 'kernel', autosave: { session, keep: 2 } });
      const s1 = [mk('s1'), mk('s1'), mk('s1'), mk('s1'), mk('s1')];
      const other = mk('s2');
      for (const c of [...s1, other]) await a.store.insertCheckpoint(c, quota());
      await a.store.renameCheckpoint(s1[0]!.id, 'keepme', iso()); // pinned: stays whatever its age
      await a.store.insertNode(node(f, 'on-autosave', 1, s1[1]!.id), quota()); // used: stays
      const pruned = await b.store.pruneAutosaves(f, 's1', 2);
      assert.deepEqual(pruned.sort(), [s1[2]!.id].sort());
      const left = new Set((await a.store.listCheckpoints()).filter((c) => c.folderId === f).map((c) => c.id));
      assert.deepEqual([...left].sort(), [s1[0]!.id, s1[1]!.id, s1[3]!.id, s1[4]!.id, other.id].sort());
      assert.deepEqual(await b.store.pruneAutosaves(f, 's1', 2), []);
    });

    it('secrets: bytes round trip, NAME_TAKEN per folder, list, delete', async () => {
      const f = folder();
      const ciphertext = randomBytes(300);
      const s = { id: newId(), name: 'pw', folderId: f, projectId: 'p', createdAt: iso(), createdBy: 'tester', ciphertext };
      await a.store.insertSecret(s);
      const got = await b.store.getSecretByName(f, 'pw');
      assert.ok(got && Buffer.isBuffer(got.ciphertext));
      assert.deepEqual(got, s);
      assert.equal(await code(b.store.insertSecret({ ...s, id: newId() })), 'NAME_TAKEN');
      await b.store.insertSecret({ ...s, id: newId(), folderId: folder() });
      assert.deepEqual((await a.store.listSecrets()).filter((x) => x.folderId === f), [s]);
      assert.equal(await a.store.deleteSecret(s.id), true);
      assert.equal(await a.store.deleteSecret(s.id), false);
      assert.equal(await a.store.getSecretByName(f, 'pw'), undefined);
    });

    it('aliases: global names, update, list, delete', async () => {
      const name = 'al-' + randomBytes(3).toString('hex');
      const al = alias(name);
      await a.store.insertAlias(al);
      assert.equal(await code(b.store.insertAlias(alias(name, folder()))), 'NAME_TAKEN');
      const changed = { ...al, spec: { ...al.spec, description: 'new', backends: [{ nodeId: 'n2', weight: 1 }] }, updatedAt: iso() };
      await b.store.updateAlias(changed);
      assert.deepEqual((await a.store.listAliases()).filter((x) => x.id === al.id), [changed]);
      assert.equal(await a.store.deleteAlias(al.id), true);
      assert.equal(await a.store.deleteAlias(al.id), false);
    });

    it('nodes: insert, get, list, NAME_TAKEN, node and instance quotas, status history bounded', async () => {
      const f = folder();
      const n1 = node(f, 'one', 2);
      await a.store.insertNode(n1, quota());
      assert.deepEqual(await b.store.getNode(n1.id), n1);
      assert.equal(await b.store.getNode('nope'), undefined);
      assert.equal(await code(b.store.insertNode(node(f, 'one'), quota())), 'NAME_TAKEN');
      await b.store.insertNode(node(folder(), 'one'), quota());
      assert.deepEqual(await b.store.listRevisions(n1.id), [{ nodeId: n1.id, revision: 1, spec: n1.spec, cause: 'created', createdAt: n1.createdAt, createdBy: 'tester' }]);
      assert.equal(await code(a.store.insertNode(node(f, 'two'), quota({ maxNodes: 1 }))), 'QUOTA_EXCEEDED');
      assert.equal(await code(a.store.insertNode(node(f, 'two', 3), quota({ maxInstances: 4 }))), 'QUOTA_EXCEEDED');
      const n2 = node(f, 'two', 2);
      await a.store.insertNode(n2, quota({ maxInstances: 4 }));
      assert.deepEqual(await a.store.folderUsage(f), { nodes: 2, instances: 4, checkpointBytes: 0 });
      assert.deepEqual((await b.store.listNodes()).filter((n) => n.spec.folderId === f).map((n) => n.id), [n1.id, n2.id]);
      let last = '';
      for (let i = 0; i < MAX_TRANSITIONS + 5; i++) {
        last = iso();
        await (i % 2 ? a : b).store.updateNodeStatus(n1.id, i % 2 ? 'Healthy' : 'Unhealthy', { status: i % 2 ? 'Healthy' : 'Unhealthy', at: last, reason: `r${i}` });
      }
      const got = (await a.store.getNode(n1.id))!;
      assert.equal(got.transitions.length, MAX_TRANSITIONS);
      assert.equal(got.transitions.at(-1)!.reason, `r${MAX_TRANSITIONS + 4}`);
      assert.equal(got.status, 'Unhealthy'); // the last one (an even i)
      assert.equal(got.updatedAt, last);
      await a.store.updateNodeStatus('nope', 'Healthy', { status: 'Healthy', at: iso() }); // nothing there: nothing happens
    });

    it('nodes: spec updates with revisions (CONFLICT, quota, bounded), rollout, delete', async () => {
      const f = folder();
      const n = node(f, 'rev', 1, `${f}-ck1`);
      await a.store.insertNode(n, quota());
      const next = (r: number, maxInstances = 1): { rec: NodeRecord; rev: { nodeId: string; revision: number; spec: NodeSpec; cause: string; createdAt: string; createdBy: string } } => {
        const s = spec(f, 'rev', maxInstances, `${f}-ck${r}`);
        const at = iso();
        return {
          rec: { ...n, spec: s, revision: r, rollout: { revision: r, from: r - 1, state: 'Progressing', startedAt: at }, updatedAt: at },
          rev: { nodeId: n.id, revision: r, spec: s, cause: 'update (checkpointId)', createdAt: at, createdBy: 'tester' },
        };
      };
      const u2 = next(2);
      await b.store.updateNodeSpec(u2.rec, quota(), u2.rev);
      assert.deepEqual(await a.store.getNode(n.id), u2.rec);
      assert.equal(await code(a.store.updateNodeSpec(next(2).rec, quota(), next(2).rev)), 'CONFLICT');
      assert.deepEqual((await a.store.getNode(n.id))!.spec, u2.rec.spec);
      assert.equal(await code(a.store.updateNodeSpec(next(3, 5).rec, quota({ maxInstances: 4 }), next(3, 5).rev)), 'QUOTA_EXCEEDED');
      assert.equal(await code(a.store.updateNodeSpec({ ...next(3).rec, id: 'nope' }, quota())), 'NODE_NOT_FOUND');
      // the checkpoint column follows the spec: the old checkpoint is free, the new one in use
      assert.deepEqual(await a.store.deleteCheckpoint(`${f}-ck1`), { deleted: false, usedBy: [] });
      assert.deepEqual(await a.store.deleteCheckpoint(`${f}-ck2`), { deleted: false, usedBy: [n.id] });
      for (let r = 3; r <= MAX_REVISIONS + 5; r++) { const u = next(r); await (r % 2 ? a : b).store.updateNodeSpec(u.rec, quota(), u.rev); }
      const revs = await b.store.listRevisions(n.id);
      assert.equal(revs.length, MAX_REVISIONS);
      assert.deepEqual(revs.map((r) => r.revision).slice(0, 2), [MAX_REVISIONS + 5, MAX_REVISIONS + 4]);
      // rollout progress
      const done = { ...(await a.store.getNode(n.id))! };
      done.rollout = { ...done.rollout!, state: 'Complete', finishedAt: iso() };
      await b.store.setNodeRevision(done);
      assert.deepEqual(await a.store.getNode(n.id), done);
      assert.equal(await code(b.store.setNodeRevision({ ...done, id: 'nope' })), 'NODE_NOT_FOUND');
      await a.store.insertNodeEvent({ nodeId: n.id, at: iso(), type: 'scale-up', reason: 'r', details: {} });
      await a.store.deleteNode(n.id);
      assert.equal(await b.store.getNode(n.id), undefined);
      assert.deepEqual(await b.store.listRevisions(n.id), []);
      assert.deepEqual(await b.store.listNodeEvents({ nodeId: n.id, limit: 10 }), []);
    });

    it('quotas: unset, set, replaced', async () => {
      const f = folder();
      assert.equal(await a.store.getQuota(f), undefined);
      await a.store.setQuota(f, { maxNodes: 3 }, iso());
      assert.deepEqual(await b.store.getQuota(f), { maxNodes: 3 });
      await b.store.setQuota(f, { maxInstances: 7, maxCheckpointBytes: 5 * 1024 ** 3 }, iso());
      assert.deepEqual(await a.store.getQuota(f), { maxInstances: 7, maxCheckpointBytes: 5 * 1024 ** 3 });
    });

    it('node events: newest first, paging, bounded per node', async () => {
      const id = newId();
      const other = newId();
      await a.store.insertNodeEvent({ nodeId: other, at: iso(), type: 'wake', reason: 'other', details: {} });
      for (let i = 0; i < MAX_NODE_EVENTS + 5; i++) {
        await (i % 2 ? a : b).store.insertNodeEvent({ nodeId: id, at: iso(), type: 'scale-up', reason: `e${i}`, details: { from: i, to: i + 1, nested: { ok: true } } });
      }
      const first = await a.store.listNodeEvents({ nodeId: id, limit: 3 });
      assert.deepEqual(first.map((e) => e.reason), [`e${MAX_NODE_EVENTS + 4}`, `e${MAX_NODE_EVENTS + 3}`, `e${MAX_NODE_EVENTS + 2}`]);
      assert.deepEqual(first[0]!.details, { from: MAX_NODE_EVENTS + 4, to: MAX_NODE_EVENTS + 5, nested: { ok: true } });
      assert.equal(typeof first[0]!.id, 'number');
      const page = await b.store.listNodeEvents({ nodeId: id, limit: 2, before: first[2]!.id });
      assert.deepEqual(page.map((e) => e.reason), [`e${MAX_NODE_EVENTS + 1}`, `e${MAX_NODE_EVENTS}`]);
      const all = await b.store.listNodeEvents({ nodeId: id, limit: 5000 });
      assert.equal(all.length, MAX_NODE_EVENTS);
      assert.equal(all.at(-1)!.reason, 'e5');
      assert.equal((await a.store.listNodeEvents({ nodeId: other, limit: 5 })).length, 1);
    });

    it('audit: newest first, by folder, paging', async () => {
      const f1 = folder();
      const f2 = folder();
      const entries = [f1, f2, f1, null, f1].map((folderId, i) => ({
        at: iso(), tokenId: i === 3 ? null : 't1', tokenName: i === 3 ? null : 'admin', action: `node.create`, folderId, resourceId: `r${i}`, result: i === 1 ? 'NAME_TAKEN' : 'ok', status: i === 1 ? 409 : 201,
      }));
      for (const [i, e] of entries.entries()) await (i % 2 ? a : b).store.insertAudit(e);
      const mine = await a.store.listAudit({ folders: [f1, f2], limit: 10 });
      assert.deepEqual(mine.map((e) => e.resourceId), ['r4', 'r2', 'r1', 'r0']);
      assert.deepEqual({ ...mine[2]!, id: 0 }, { ...entries[1]!, id: 0 });
      assert.ok(mine.every((e) => typeof e.id === 'number'));
      assert.deepEqual((await a.store.listAudit({ folders: [f1], limit: 2, before: mine[0]!.id })).map((e) => e.resourceId), ['r2', 'r0']);
      const every = await b.store.listAudit({ folders: null, limit: 5 });
      assert.deepEqual(every.map((e) => e.resourceId), ['r4', 'r3', 'r2', 'r1', 'r0']);
      assert.deepEqual(await b.store.listAudit({ folders: [], limit: 5 }), []);
    });

    it('usage: upserts add up (from two servers), open runs replaced and ended, grouped queries', async () => {
      const f = folder();
      const g = folder();
      const H = Date.parse('2026-03-01T10:00:00.000Z');
      const n = node(f, 'metered', 1);
      await a.store.insertNode(n, quota());
      const d = (folderId: string, nodeId: string, hour: number, preset: string, s: number, calls: number, nodeName: string | null = null) =>
        ({ hour, folderId, nodeId, nodeName, preset, instanceSeconds: s, calls, bytesIn: calls * 10, bytesOut: calls * 100 });
      await a.store.writeUsage([d(f, n.id, H, 'small', 1.0004, 2, 'metered'), d(g, 'gone', H, 'small', 5, 1, 'old-name')],
        [{ instanceId: 'i1', folderId: f, nodeId: n.id, preset: 'small', until: H + 1000 }], []);
      await Promise.all([
        a.store.writeUsage([d(f, n.id, H, 'small', 2, 3)], [{ instanceId: 'i1', folderId: f, nodeId: n.id, preset: 'small', until: H + 2000 }], []),
        b.store.writeUsage([d(f, n.id, H, 'small', 0.5, 1), d(f, n.id, H + 86_400_000, 'large', 7, 4)],
          [{ instanceId: 'i2', folderId: f, nodeId: n.id, preset: 'large', until: H + 3000 }], []),
      ]);
      const open = (await b.store.openInstances()).filter((o) => o.folderId === f).sort((x, y) => x.instanceId.localeCompare(y.instanceId));
      assert.deepEqual(open, [
        { instanceId: 'i1', folderId: f, nodeId: n.id, preset: 'small', until: H + 2000 },
        { instanceId: 'i2', folderId: f, nodeId: n.id, preset: 'large', until: H + 3000 },
      ]);
      await a.store.writeUsage([], [], ['i1']);
      assert.deepEqual((await a.store.openInstances()).filter((o) => o.folderId === f).map((o) => o.instanceId), ['i2']);
      const range = { from: H, to: H + 2 * 86_400_000 };
      const byNode = await a.store.queryUsage({ folders: [f, g], ...range, groupBy: 'node' });
      assert.deepEqual(byNode, [
        { folderId: f, nodeId: n.id, nodeName: 'metered', preset: 'large', instanceSeconds: 7, calls: 4, bytesIn: 40, bytesOut: 400 },
        { folderId: f, nodeId: n.id, nodeName: 'metered', preset: 'small', instanceSeconds: 3.5, calls: 6, bytesIn: 60, bytesOut: 600 },
        { folderId: g, nodeId: 'gone', nodeName: 'old-name', preset: 'small', instanceSeconds: 5, calls: 1, bytesIn: 10, bytesOut: 100 },
      ].sort((x, y) => (x.folderId < y.folderId ? -1 : x.folderId > y.folderId ? 1 : 0)));
      assert.deepEqual(await b.store.queryUsage({ folders: [f], ...range, groupBy: 'folder' }),
        [{ folderId: f, instanceSeconds: 10.5, calls: 10, bytesIn: 100, bytesOut: 1000 }]);
      assert.deepEqual(await b.store.queryUsage({ folders: [f], ...range, groupBy: 'day' }), [
        { folderId: f, day: '2026-03-01', instanceSeconds: 3.5, calls: 6, bytesIn: 60, bytesOut: 600 },
        { folderId: f, day: '2026-03-02', instanceSeconds: 7, calls: 4, bytesIn: 40, bytesOut: 400 },
      ]);
      assert.deepEqual(await b.store.queryUsage({ folders: [f], from: H + 3_600_000, to: H + 86_400_000, groupBy: 'folder' }), []);
      const every = await b.store.queryUsage({ folders: null, ...range, groupBy: 'folder' });
      assert.ok(every.some((r) => r.folderId === f) && every.some((r) => r.folderId === g));
    });

    it('races: two servers inserting one name at once — exactly one wins, the other gets NAME_TAKEN', async () => {
      for (let round = 0; round < 5; round++) {
        const f = folder();
        const nodes = await Promise.all([code(a.store.insertNode(node(f, 'same'), quota())), code(b.store.insertNode(node(f, 'same'), quota()))]);
        assert.deepEqual(nodes.sort(), ['NAME_TAKEN', 'ok']);
        const cps = await Promise.all([code(a.store.insertCheckpoint(checkpoint(f, 'same'), quota())), code(b.store.insertCheckpoint(checkpoint(f, 'same'), quota()))]);
        assert.deepEqual(cps.sort(), ['NAME_TAKEN', 'ok']);
        const s = (): { id: string; name: string; folderId: string; projectId: string; createdAt: string; createdBy: string; ciphertext: Buffer } =>
          ({ id: newId(), name: 'same', folderId: f, projectId: 'p', createdAt: iso(), createdBy: 't', ciphertext: Buffer.from('x') });
        assert.deepEqual((await Promise.all([code(a.store.insertSecret(s())), code(b.store.insertSecret(s()))])).sort(), ['NAME_TAKEN', 'ok']);
        const an = 'race-' + f;
        assert.deepEqual((await Promise.all([code(a.store.insertAlias(alias(an))), code(b.store.insertAlias(alias(an)))])).sort(), ['NAME_TAKEN', 'ok']);
        assert.equal((await a.store.listNodes()).filter((n) => n.spec.folderId === f).length, 1);
      }
    });

    it('races: two servers inserting at once never pass a quota together', async () => {
      for (let round = 0; round < 3; round++) {
        const f = folder();
        // 8 inserts at once, split over the two servers; room for 3 nodes
        const results = await Promise.all(Array.from({ length: 8 }, (_, i) => code((i % 2 ? a : b).store.insertNode(node(f, `n${i}`), quota({ maxNodes: 3 })))));
        assert.equal(results.filter((r) => r === 'ok').length, 3, results.join());
        assert.equal(results.filter((r) => r === 'QUOTA_EXCEEDED').length, 5);
        assert.equal((await a.store.folderUsage(f)).nodes, 3);
        // instances: each wants 2 of 5
        const g = folder();
        const inst = await Promise.all(Array.from({ length: 6 }, (_, i) => code((i % 2 ? a : b).store.insertNode(node(g, `m${i}`, 2), quota({ maxInstances: 5 })))));
        assert.equal(inst.filter((r) => r === 'ok').length, 2, inst.join());
        // checkpoint bytes: each 400 of 1000
        const h = folder();
        const cps = await Promise.all(Array.from({ length: 6 }, (_, i) => code((i % 2 ? a : b).store.insertCheckpoint(checkpoint(h, null, 400), quota({ maxCheckpointBytes: 1000 })))));
        assert.equal(cps.filter((r) => r === 'ok').length, 2, cps.join());
        assert.equal((await b.store.folderUsage(h)).checkpointBytes, 800);
        // spec updates raising instances at once: 2 nodes of 1 each, both asking for 3 of 5
        const k = folder();
        const n1 = node(k, 'u1', 1);
        const n2 = node(k, 'u2', 1);
        await a.store.insertNode(n1, quota());
        await a.store.insertNode(n2, quota());
        const up = (n: NodeRecord): NodeRecord => ({ ...n, spec: spec(k, n.spec.name, 3), updatedAt: iso() });
        const ups = await Promise.all([code(a.store.updateNodeSpec(up(n1), quota({ maxInstances: 5 }))), code(b.store.updateNodeSpec(up(n2), quota({ maxInstances: 5 })))]);
        assert.deepEqual(ups.sort(), ['QUOTA_EXCEEDED', 'ok']);
      }
    });

    it('races: two updates of one node to the same revision — one CONFLICT', async () => {
      const f = folder();
      const n = node(f, 'twice', 1);
      await a.store.insertNode(n, quota());
      for (let r = 2; r < 6; r++) {
        const mk = (who: string): [NodeRecord, { nodeId: string; revision: number; spec: NodeSpec; cause: string; createdAt: string; createdBy: string }] => {
          const s = spec(f, 'twice', 1, `ck-${who}-${r}`);
          return [{ ...n, spec: s, revision: r, updatedAt: iso() }, { nodeId: n.id, revision: r, spec: s, cause: who, createdAt: iso(), createdBy: who }];
        };
        const [x, y] = [mk('a'), mk('b')];
        const res = await Promise.all([code(a.store.updateNodeSpec(x[0], quota(), x[1])), code(b.store.updateNodeSpec(y[0], quota(), y[1]))]);
        assert.deepEqual([...res].sort(), ['CONFLICT', 'ok']);
        const winner = res[0] === 'ok' ? 'a' : 'b';
        assert.equal((await a.store.listRevisions(n.id))[0]!.cause, winner);
        assert.equal(((await b.store.getNode(n.id))!.spec as { checkpointId: string }).checkpointId, `ck-${winner}-${r}`);
      }
    });

    it('races: a node updated while deleted — one or the other, never a deadlock', async () => {
      for (let round = 0; round < 10; round++) {
        const f = folder();
        const n = node(f, 'doomed', 1);
        await a.store.insertNode(n, quota());
        for (let r = 2; r < 4; r++) await a.store.updateNodeSpec({ ...n, revision: r }, quota(), { nodeId: n.id, revision: r, spec: n.spec, cause: 'u', createdAt: iso(), createdBy: 't' });
        const rev = { nodeId: n.id, revision: 4, spec: n.spec, cause: 'u', createdAt: iso(), createdBy: 't' };
        const [upd] = await Promise.all([code(a.store.updateNodeSpec({ ...n, revision: 4 }, quota(), rev)), b.store.deleteNode(n.id)]);
        assert.ok(['ok', 'NODE_NOT_FOUND'].includes(upd), upd);
        assert.equal(await a.store.getNode(n.id), undefined);
        assert.deepEqual(await a.store.listRevisions(n.id), []);
      }
    });

    it('races: a checkpoint deleted while a node is created on it — never both', async () => {
      for (let round = 0; round < 5; round++) {
        const f = folder();
        const c = checkpoint(f, 'base');
        await a.store.insertCheckpoint(c, quota());
        const n = node(f, 'on-it', 1, c.id);
        const [del] = await Promise.all([b.store.deleteCheckpoint(c.id), a.store.insertNode(n, quota())]);
        if (del.deleted) {
          // the delete went first: the node came after (the API checks the checkpoint before)
          assert.deepEqual(del.usedBy, []);
        } else {
          assert.deepEqual(del.usedBy, [n.id]);
          assert.ok(await a.store.getCheckpoint(c.id));
        }
      }
    });

    it('blobs: put on one server, materialised on another, verified by sha256', async () => {
      const bytes = randomBytes(2 * BLOB_CHUNK_BYTES + 12345);
      const sha256 = createHash('sha256').update(bytes).digest('hex');
      const id = newId();
      mkdirSync(join(a.blobs.localPath(id), '..'), { recursive: true });
      writeFileSync(a.blobs.localPath(id), bytes);
      await a.blobs.put({ id, sha256 }, bytes.length);
      const path = await b.blobs.materialize({ id, sha256 });
      assert.deepEqual(readFileSync(path), bytes);
      if (!target.sharedBlobs) {
        assert.equal(path, a.blobs.localPath(id)); // one machine: the file is the blob
      } else {
        assert.notEqual(path, a.blobs.localPath(id));
        // concurrent asks share one fetch; a second ask uses the cache
        rmSync(path);
        const [p1, p2] = await Promise.all([b.blobs.materialize({ id, sha256 }), b.blobs.materialize({ id, sha256 })]);
        assert.equal(p1, p2);
        assert.deepEqual(readFileSync(p1), bytes);
        // at start, cached files of checkpoints that no longer exist go; the others stay
        writeFileSync(b.blobs.localPath('deleted-elsewhere'), 'x');
        assert.equal(await b.blobs.pruneCache!(new Set([id])), 1);
        assert.equal(existsSync(b.blobs.localPath('deleted-elsewhere')), false);
        assert.equal(existsSync(p1), true);
        // a wrong expected hash: refused, nothing left where instances read
        const other = await target.open();
        try {
          await assert.rejects(other.blobs.materialize({ id, sha256: 'f'.repeat(64) }), /sha256/);
          assert.equal(existsSync(other.blobs.localPath(id)), false);
          // bytes changed in the database: refused the same way
          await target.exec('UPDATE blob_chunks SET data = $1 WHERE blob_id = $2 AND seq = 1', [randomBytes(BLOB_CHUNK_BYTES), id]);
          await assert.rejects(other.blobs.materialize({ id, sha256 }), /sha256/);
          assert.equal(existsSync(other.blobs.localPath(id)), false);
          await a.blobs.delete(id);
          await assert.rejects(other.blobs.materialize({ id, sha256 }), /not in the store/);
        } finally {
          await other.store.close();
        }
      }
      await a.blobs.delete(id);
      assert.equal(existsSync(a.blobs.localPath(id)), false);
    });
  });
}

storeSuite('sqlite', sqlite);
storeSuite('postgres', postgres);

test('store URLs in messages: the password is never shown', async () => {
  const { redactUrl } = await import('../src/store/postgres.js');
  const { storeProblem } = await import('../src/store/index.js');
  assert.equal(redactUrl('postgres://berth:hunter2@db.example:5432/berth'), 'postgres://berth:***@db.example:5432/berth');
  assert.doesNotMatch(redactUrl('postgresql://u@h/db?password=hunter2'), /hunter2/);
  assert.doesNotMatch(redactUrl('postgres://u:hunter2@[not-a-host/db'), /hunter2/);
  assert.equal(storeProblem(null), null);
  assert.equal(storeProblem('postgresql://u@h/db'), null);
  assert.match(storeProblem('mysql://u:hunter2@h/db')!, /must be a postgres:\/\//);
  assert.doesNotMatch(storeProblem('mysql://u:hunter2@h/db')!, /hunter2/);
});
