// Several Berth servers on one PostgreSQL (`berth up --store postgres://…`): who leads, and what
// travels between the servers. Everything here goes through the database the servers already
// share, so there is no second cluster protocol to secure or to find peers for.
//
// - Lease: the server holding a session-level advisory lock runs the controller. The lock lives
//   as long as that server's database session: when the server dies (kill -9 included) the
//   database ends the session and frees the lock at once; when its machine or network dies, TCP
//   keepalives end it within about 11 s. A follower, trying every LEASE_POLL_MS, takes it. A
//   leader whose session breaks, or stops answering for LEASE_CHECK_TIMEOUT_MS, cannot know
//   whether another took over: it stops (onLost), it never carries on as a second leader.
// - Routing snapshots: the leader upserts the latest into `peer_snapshot` and notifies
//   `berth_snapshot` in the same transaction (delivered on commit). Followers read the row on each
//   notification and once after every (re)connect (catch-up). Writes are coalesced: while one is
//   in flight only the newest waiting snapshot is kept. Each leadership has a term; followers
//   order snapshots by (term, version), so a new leader's counter starting again is not "old".
// - Changes (tokens, aliases): a notification only; the other servers re-read them from the store.
// - Followers' gateways send instance events (notifications) and their load (a row per server,
//   then a notification) to the leader, which acts on them off every call path.
import pg from 'pg';
import { randomUUID } from 'node:crypto';
import type { RoutingSnapshot } from '../routing/snapshot.js';
import type { LoadReport } from '../gateway/routing-table.js';
import { parseSnapshot } from '../routing/snapshot.js';

/** How often a follower tries to take the lease (takeover time after a leader dies is about this). */
const LEASE_POLL_MS = 500;
/** A server's row is refreshed this often; one not seen for PEER_STALE_MS is not counted. */
const HEARTBEAT_MS = 1000;
export const PEER_STALE_MS = 5000;
const RECONNECT_MS = 500;
/**
 * The leader checks its lease's session this often (with the lease poll) and stops when it does
 * not answer within LEASE_CHECK_TIMEOUT_MS. The database notices a dead peer through TCP
 * keepalives (SESSION_KEEPALIVES: about 11 s), so a cut-off leader stops before another can lead.
 */
const LEASE_CHECK_TIMEOUT_MS = 5000;
const SESSION_KEEPALIVES = 'SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3';
/** An arbitrary constant: the advisory lock key of "the controller of this database". */
const LEADER_LOCK = 0x6265727468; // "berth"

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS peer_cluster (id INT PRIMARY KEY CHECK (id = 1), cluster_id TEXT NOT NULL, key_check TEXT);
  CREATE TABLE IF NOT EXISTS peer_servers (
    id TEXT PRIMARY KEY, url TEXT NOT NULL, started_at TIMESTAMPTZ NOT NULL, seen_at TIMESTAMPTZ NOT NULL);
  CREATE TABLE IF NOT EXISTS peer_leader (
    id INT PRIMARY KEY CHECK (id = 1), server_id TEXT NOT NULL, url TEXT NOT NULL, term BIGINT NOT NULL, since TIMESTAMPTZ NOT NULL);
  CREATE TABLE IF NOT EXISTS peer_snapshot (
    id INT PRIMARY KEY CHECK (id = 1), term BIGINT NOT NULL, version BIGINT NOT NULL, body TEXT NOT NULL);
  CREATE TABLE IF NOT EXISTS peer_load (server_id TEXT PRIMARY KEY, report TEXT NOT NULL, at TIMESTAMPTZ NOT NULL);`;

export type PeerEvent =
  | { t: 'refused'; nodeId: string; instanceId: string; reason: string }
  | { t: 'timedOut'; nodeId: string; instanceId: string; timeoutSeconds: number }
  | { t: 'held'; nodeId: string };

export type PeerChange = 'tokens' | 'aliases';

export interface PeerServer { id: string; url: string; leader: boolean; seenAt: string }

export interface PeerHandlers {
  /** This server took the lease (`term`: its leadership's number): start the controller. */
  elected(term: number): Promise<void>;
  /** The leader's session broke: another server may lead now; this one must stop leading at once. */
  lost(reason: string): void;
  snapshot(s: RoutingSnapshot): void;
  changed(kind: PeerChange): void;
  /** Leader only: what followers' gateways saw. */
  event(e: PeerEvent): void;
  load(serverId: string, report: LoadReport | null): void;
}

export class PeerBus {
  readonly serverId = randomUUID();
  clusterId = '';
  private readonly pool: pg.Pool;
  private session: pg.Client | null = null;
  private leading = false;
  private term = 0;
  private leaderUrl: string | null = null;
  private closed = false;
  /** Set while taking the lease and starting the controller (a second poll must not start it again). */
  private electing = false;
  private checking = false;
  private timers: NodeJS.Timeout[] = [];
  /** Snapshot coalescing (leader). */
  private writing = false;
  private nextSnapshot: RoutingSnapshot | null = null;
  /** Followers: the newest (term, version) applied. */
  private seen = { term: 0, version: 0 };
  private reading = false;
  private readAgain = false;

  private url = '';
  private on!: PeerHandlers;

  private constructor(private readonly dsn: string) {
    this.pool = new pg.Pool({ connectionString: dsn, max: 4 });
    this.pool.on('error', () => undefined); // an idle client's error: the next query reconnects
  }

  /** Connects and creates the coordination tables if missing (the cluster id is known from here on); `start()` joins. */
  static async connect(dsn: string): Promise<PeerBus> {
    const bus = new PeerBus(dsn);
    const c = await bus.pool.connect();
    try {
      await c.query('BEGIN');
      await c.query('SELECT pg_advisory_xact_lock($1)', [LEADER_LOCK + 1]); // two servers starting at once
      await c.query(SCHEMA);
      await c.query('INSERT INTO peer_cluster VALUES (1, $1) ON CONFLICT (id) DO NOTHING', [randomUUID()]);
      bus.clusterId = (await c.query<{ cluster_id: string }>('SELECT cluster_id FROM peer_cluster')).rows[0].cluster_id;
      await c.query('COMMIT');
    } catch (err) {
      await c.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      c.release();
    }
    return bus;
  }

  /**
   * Every server must decrypt every secret: the first one records its key's fingerprint, the
   * others must match it. Returns a message saying what to do when they do not.
   */
  async checkSecretKey(keyCheck: string): Promise<string | null> {
    const r = await this.pool.query<{ key_check: string }>(
      `UPDATE peer_cluster SET key_check = COALESCE(key_check, $1) WHERE id = 1 RETURNING key_check`, [keyCheck]);
    if (r.rows[0]?.key_check === keyCheck) return null;
    return 'this server\'s secret key differs from the one the other Berth servers on this database use: copy secret.key from one of them into this server\'s home, or pass the same --secret-key-file to every server';
  }

  get isLeader(): boolean { return this.leading; }
  /** Where the leader's control API answers (followers relay to it); null while nobody leads. */
  get leader(): string | null { return this.leading ? this.url : this.leaderUrl; }

  /**
   * Joins: this server (its control API at `url`) is listed, follows the leader's snapshots and
   * changes, and tries to take the lease.
   */
  async start(url: string, handlers: PeerHandlers): Promise<void> {
    this.url = url;
    this.on = handlers;
    await this.heartbeat();
    await this.openSession();
    this.timers.push(setInterval(() => { void (this.leading ? this.checkLease() : this.tryLead()); }, LEASE_POLL_MS));
    this.timers.push(setInterval(() => { void this.heartbeat().catch(() => undefined); }, HEARTBEAT_MS));
    await this.tryLead(); // the first server leads before it says it is up
  }

  // ---- leader → followers ----

  publishSnapshot(s: RoutingSnapshot): void {
    if (!this.leading) return;
    this.nextSnapshot = s;
    if (!this.writing) void this.writeSnapshots();
  }

  /** Tells the other servers to re-read `kind` from the store (this one changed it). */
  changed(kind: PeerChange): void {
    void this.pool.query('SELECT pg_notify($1, $2)', ['berth_change', `${this.serverId} ${kind}`]).catch(() => undefined);
  }

  // ---- followers → leader ----

  event(e: PeerEvent): void {
    void this.pool.query('SELECT pg_notify($1, $2)', ['berth_event', JSON.stringify(e)]).catch(() => undefined);
  }

  async sendLoad(report: LoadReport): Promise<void> {
    await this.pool.query(
      `WITH w AS (INSERT INTO peer_load VALUES ($1, $2, now()) ON CONFLICT (server_id) DO UPDATE SET report = $2, at = now())
       SELECT pg_notify('berth_load', $1)`, [this.serverId, JSON.stringify(report)]);
  }

  /** The servers seen in the last PEER_STALE_MS, leader marked. */
  async servers(): Promise<PeerServer[]> {
    const r = await this.pool.query<{ id: string; url: string; seen_at: Date; leader: boolean }>(
      `SELECT s.id, s.url, s.seen_at, (l.server_id IS NOT NULL) AS leader FROM peer_servers s
       LEFT JOIN peer_leader l ON l.server_id = s.id
       WHERE s.seen_at > now() - make_interval(secs => $1) ORDER BY s.started_at`, [PEER_STALE_MS / 1000]);
    return r.rows.map((x) => ({ id: x.id, url: x.url, leader: x.leader, seenAt: x.seen_at.toISOString() }));
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.timers) clearInterval(t);
    await this.pool.query('DELETE FROM peer_servers WHERE id = $1', [this.serverId]).catch(() => undefined);
    await this.pool.query('DELETE FROM peer_load WHERE server_id = $1', [this.serverId]).catch(() => undefined);
    // ending the session frees the lease at once: a follower takes over without waiting for a timeout
    await this.session?.end().catch(() => undefined);
    await this.pool.end().catch(() => undefined);
  }

  // ---- internals ----

  private async heartbeat(): Promise<void> {
    await this.pool.query(
      `INSERT INTO peer_servers VALUES ($1, $2, now(), now()) ON CONFLICT (id) DO UPDATE SET seen_at = now()`,
      [this.serverId, this.url]);
    if (!this.leading) await this.readLeader();
  }

  private async readLeader(): Promise<void> {
    const r = await this.pool.query<{ url: string }>('SELECT url FROM peer_leader WHERE id = 1');
    this.leaderUrl = r.rows[0]?.url ?? null;
  }

  /** The session: LISTENs, and holds the lease once taken. A follower's broken session is reopened; a leader's ends its leadership. */
  private async openSession(): Promise<void> {
    const c = new pg.Client({ connectionString: this.dsn, keepAlive: true });
    c.on('error', () => undefined);
    c.on('end', () => {
      if (this.closed || this.session !== c) return;
      this.session = null;
      if (this.leading) this.stepDown('the database session holding the controller lease ended');
      else this.reopen();
    });
    c.on('notification', (n) => this.notified(n.channel, n.payload ?? ''));
    try {
      await c.connect();
      await c.query(`${SESSION_KEEPALIVES}; LISTEN berth_snapshot; LISTEN berth_change; LISTEN berth_event; LISTEN berth_load; LISTEN berth_leader`);
    } catch (err) {
      await c.end().catch(() => undefined);
      throw err;
    }
    this.session = c;
    // catch-up: what changed while this server was not listening
    this.readSnapshot();
    this.on.changed('tokens');
    this.on.changed('aliases');
  }

  /** A follower's session broke: reopen it, again and again until the database answers. */
  private reopen(): void {
    setTimeout(() => { if (!this.closed) this.openSession().catch(() => this.reopen()); }, RECONNECT_MS).unref();
  }

  /** This server can no longer be sure it holds the lease: it stops leading, and says so. */
  private stepDown(reason: string): void {
    if (!this.leading) return;
    this.leading = false;
    const c = this.session;
    this.session = null;
    void c?.end().catch(() => undefined);
    this.on.lost(reason);
  }

  private async checkLease(): Promise<void> {
    const c = this.session;
    if (!c || this.checking || this.electing) return;
    this.checking = true;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([c.query('SELECT 1'), new Promise((_, reject) => { timer = setTimeout(() => reject(new Error('no answer')), LEASE_CHECK_TIMEOUT_MS); })]);
    } catch (err) {
      this.stepDown(`the database session holding the controller lease did not answer (${(err as Error).message})`);
    } finally {
      clearTimeout(timer);
      this.checking = false;
    }
  }

  private async tryLead(): Promise<void> {
    const c = this.session;
    if (this.leading || this.electing || this.closed || !c) return;
    this.electing = true;
    try {
      let got = false;
      try {
        got = (await c.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1) AS ok', [LEADER_LOCK])).rows[0].ok;
      } catch { return; }
      if (!got || this.closed) return;
      this.leading = true;
      try {
        const r = await this.pool.query<{ term: string }>(
          `INSERT INTO peer_leader VALUES (1, $1, $2, 1, now())
           ON CONFLICT (id) DO UPDATE SET server_id = $1, url = $2, term = peer_leader.term + 1, since = now()
           RETURNING term`, [this.serverId, this.url]);
        this.term = Number(r.rows[0].term);
        await this.pool.query('SELECT pg_notify($1, $2)', ['berth_leader', this.url]).catch(() => undefined);
        await this.on.elected(this.term);
      } catch (err) {
        // holding the lease without a working controller would leave the cluster with none
        this.stepDown(`this server took the controller lease but could not start the controller: ${(err as Error).message}`);
      }
    } finally {
      this.electing = false;
    }
  }

  private notified(channel: string, payload: string): void {
    switch (channel) {
      case 'berth_snapshot': if (!this.leading) this.readSnapshot(); return;
      case 'berth_change': {
        const [from, kind] = payload.split(' ');
        if (from !== this.serverId && (kind === 'tokens' || kind === 'aliases')) this.on.changed(kind);
        return;
      }
      case 'berth_leader': if (!this.leading) this.leaderUrl = payload; return;
      case 'berth_event':
        if (!this.leading) return;
        try { this.on.event(JSON.parse(payload) as PeerEvent); } catch { /* not ours */ }
        return;
      case 'berth_load':
        if (this.leading && payload !== this.serverId) void this.readLoad(payload);
        return;
    }
  }

  private async writeSnapshots(): Promise<void> {
    this.writing = true;
    try {
      while (this.nextSnapshot && this.leading) {
        const s = this.nextSnapshot;
        this.nextSnapshot = null;
        await this.pool.query(
          `WITH w AS (INSERT INTO peer_snapshot VALUES (1, $1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET term = $1, version = $2, body = $3)
           SELECT pg_notify('berth_snapshot', $2::text)`, [this.term, s.version, JSON.stringify(s)]).catch(() => undefined);
      }
    } finally {
      this.writing = false;
    }
  }

  /** Reads the newest snapshot; a notification arriving meanwhile reads once more after. */
  private readSnapshot(): void {
    if (this.reading) { this.readAgain = true; return; }
    this.reading = true;
    void (async () => {
      try {
        do {
          this.readAgain = false;
          const r = await this.pool.query<{ term: string; version: string; body: string }>('SELECT term, version, body FROM peer_snapshot WHERE id = 1').catch(() => null);
          const row = r?.rows[0];
          if (!row) continue;
          const term = Number(row.term); const version = Number(row.version);
          if (term < this.seen.term || (term === this.seen.term && version <= this.seen.version)) continue;
          try {
            this.on.snapshot(parseSnapshot(row.body));
            this.seen = { term, version };
          } catch (err) {
            console.error(`[berth] routing snapshot ${term}/${version} from the leader not applied: ${(err as Error).message}`);
          }
        } while (this.readAgain && !this.closed);
      } finally {
        this.reading = false;
      }
    })();
  }

  private async readLoad(serverId: string): Promise<void> {
    const r = await this.pool.query<{ report: string }>('SELECT report FROM peer_load WHERE server_id = $1', [serverId]).catch(() => null);
    const text = r?.rows[0]?.report;
    let report: LoadReport | null = null;
    try { report = text ? JSON.parse(text) as LoadReport : null; } catch { /* a row that is not a report: as if gone */ }
    this.on.load(serverId, report);
  }
}
