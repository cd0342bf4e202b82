// One Berth server among several on one PostgreSQL: what it does as leader and as follower.
// Every server serves the control API and the gateway on its own port. The leader runs the
// controller: its snapshots go to its own gateway and, through the bus, to every follower's;
// followers' instance events and load come back to it. A follower relays control-API requests
// to the leader (the caller's token is checked there) and serves calls from the snapshots it
// receives; when the leader dies, the first follower to take the lease starts the controller,
// which adopts the running instances (container runtimes), and stops relaying.
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { InstanceEvents, LoadSource, RoutingSnapshot, SnapshotSink } from '../routing/snapshot.js';
import type { LoadReport } from '../gateway/routing-table.js';
import type { Auth } from '../core/auth.js';
import type { AliasTable } from '../aliases/table.js';
import type { Store } from '../store/store.js';
import { relayControl } from '../cluster/relay.js';
import { PEER_STALE_MS, type PeerBus, type PeerChange, type PeerEvent } from './bus.js';

/** A follower's load goes to the leader this often when it changed, and at least every KEEPALIVE_MS. */
const LOAD_MS = 100;
const LOAD_KEEPALIVE_MS = 2000;

export interface PeeringDeps {
  bus: PeerBus;
  /** The controller: followers' instance events go to it while this server leads. */
  controller: InstanceEvents;
  /** This server's gateway: one routing table, or its gateway workers together. */
  gateway: SnapshotSink & LoadSource & { loadReport(): LoadReport };
  auth: Auth;
  aliases: AliasTable;
  store: Store;
  /** This server took the lease: start the controller and attach it to `sink`. */
  lead(sink: SnapshotSink & LoadSource): Promise<void>;
  /** The lease is lost: this server must stop acting as the controller at once. */
  lost(reason: string): void;
}

/**
 * What this server's gateway tells the controller: straight to it while this server leads,
 * through the bus to the leader otherwise.
 */
export function peerEvents(bus: PeerBus, controller: InstanceEvents): InstanceEvents {
  return {
    refused: (nodeId, instanceId, reason) => (bus.isLeader ? controller.refused(nodeId, instanceId, reason) : bus.event({ t: 'refused', nodeId, instanceId, reason })),
    timedOut: (nodeId, instanceId, timeoutSeconds) => (bus.isLeader ? controller.timedOut(nodeId, instanceId, timeoutSeconds) : bus.event({ t: 'timedOut', nodeId, instanceId, timeoutSeconds })),
    held: (nodeId) => (bus.isLeader ? controller.held(nodeId) : bus.event({ t: 'held', nodeId })),
  };
}

export class Peering {
  /** Local snapshot versions: the routing table orders snapshots by them, whoever leads. */
  private localVersion = 0;
  private readonly remote = new Map<string, { report: LoadReport; at: number }>();
  private loadTimer: NodeJS.Timeout | null = null;

  /** Set while re-reading what another server changed: that is no change of ours to announce. */
  private reloading = 0;

  constructor(private readonly d: PeeringDeps) {
    d.auth.onChange(() => { if (!this.reloading) d.bus.changed('tokens'); });
    d.aliases.onChange(() => { if (!this.reloading) d.bus.changed('aliases'); });
  }

  get leading(): boolean { return this.d.bus.isLeader; }

  /** Control-API requests this server does not answer itself go to the leader. */
  readonly relay = relayControl(() => {
    const url = this.d.bus.leader;
    return url ? { url } : { unavailable: 'no Berth server holds the controller lease yet; retry shortly' };
  });

  /** The control handler of the data plane: answered here when leading, relayed otherwise. */
  control(local: (req: IncomingMessage, res: ServerResponse) => void): (req: IncomingMessage, res: ServerResponse) => void {
    return (req, res) => (this.leading ? local(req, res) : this.relay(req, res));
  }

  async start(url: string): Promise<void> {
    const { bus } = this.d;
    await bus.start(url, {
      elected: async () => { this.stopLoad(); await this.d.lead(this.sink); },
      lost: (reason) => this.d.lost(reason),
      snapshot: (s) => this.applyLocal(s),
      changed: (kind) => void this.reload(kind),
      event: (e) => this.act(e),
      load: (serverId, report) => {
        if (report) this.remote.set(serverId, { report, at: Date.now() });
        else this.remote.delete(serverId);
      },
    });
    if (!bus.isLeader) this.startLoad();
    // what this server changed before it joined (its admin token, made at start) reaches the others
    bus.changed('tokens');
  }

  stop(): void { this.stopLoad(); }

  /** Leader: an event a follower's gateway saw. */
  private act(e: PeerEvent): void {
    const c = this.d.controller;
    if (e.t === 'refused') c.refused(e.nodeId, e.instanceId, e.reason);
    else if (e.t === 'timedOut') c.timedOut(e.nodeId, e.instanceId, e.timeoutSeconds);
    else c.held(e.nodeId);
  }

  // ---- leader: what the controller is attached to ----

  /** Snapshots to this server's gateway and to every follower; load summed over every server's gateway. */
  readonly sink: SnapshotSink & LoadSource = {
    apply: (s: RoutingSnapshot) => {
      this.applyLocal(s);
      this.d.bus.publishSnapshot(s);
    },
    node: (nodeId: string) => {
      const own = this.d.gateway.node(nodeId);
      let { busy, waiting } = own;
      for (const r of this.live()) {
        const n = r.nodes[nodeId];
        if (n) { busy += n.busy; waiting += n.waiting; }
      }
      return { busy, waiting };
    },
    instance: (nodeId: string, instanceId: string) => {
      const own = this.d.gateway.instance(nodeId, instanceId);
      let { busy, lastUsedAt } = own;
      for (const r of this.live()) {
        const i = r.nodes[nodeId]?.instances[instanceId];
        if (i) { busy += i.busy; lastUsedAt = Math.max(lastUsedAt, i.lastUsedAt); }
      }
      return { busy, lastUsedAt };
    },
  };

  /** Followers' reports, without those of servers not heard from for PEER_STALE_MS (gone). */
  private *live(): Iterable<LoadReport> {
    const now = Date.now();
    for (const [id, r] of this.remote) {
      if (now - r.at > PEER_STALE_MS) this.remote.delete(id);
      else yield r.report;
    }
  }

  private applyLocal(s: RoutingSnapshot): void {
    this.d.gateway.apply({ ...s, version: ++this.localVersion });
  }

  // ---- follower ----

  private async reload(kind: PeerChange): Promise<void> {
    try {
      const tokens = kind === 'tokens' ? await this.d.store.listTokens() : null;
      const aliases = kind === 'aliases' ? await this.d.store.listAliases() : null;
      this.reloading++;
      try {
        if (tokens) this.d.auth.replace(tokens);
        if (aliases) this.d.aliases.replaceAll(aliases);
      } finally {
        this.reloading--;
      }
    } catch (err) {
      console.error(`[berth] could not reload ${kind} from the store: ${(err as Error).message}`);
    }
  }

  private startLoad(): void {
    let last = '';
    let sentAt = 0;
    this.loadTimer = setInterval(() => {
      const report = this.d.gateway.loadReport();
      const text = JSON.stringify(report.nodes);
      if (text === last && Date.now() - sentAt < LOAD_KEEPALIVE_MS) return;
      last = text;
      sentAt = Date.now();
      this.d.bus.sendLoad(report).catch(() => { last = ''; });
    }, LOAD_MS);
    this.loadTimer.unref();
  }

  private stopLoad(): void {
    if (this.loadTimer) clearInterval(this.loadTimer);
    this.loadTimer = null;
  }
}
