// The one call pipeline every data-plane call goes through, whatever it came in on (REST
// execute, gRPC Execute/ExecuteAlias, header-routed HTTP/1.1, HTTP/2 and gRPC):
//   authenticate once → check the caller's folder → node, or alias and its pick (weights,
//   sticky key) → ACL → [session, forward: by the caller] → errors from core/errors.ts →
//   metrics on the node, the alias, and the node an alias picked → usage (calls and bytes
//   of a call that reached an instance, counted in memory: usage-meter.ts).
// Each protocol only parses its own framing into these steps and writes the answer back.
import { Auth } from '../core/auth.js';
import { BerthError } from '../core/errors.js';
import type { CallMetrics, Metrics } from '../core/metrics.js';
import type { TokenRecord } from '../core/types.js';
import type { AliasRoute, AliasTable } from '../aliases/table.js';
import type { NodeRoute, RoutingTable } from './routing-table.js';
import { callDeadlines } from './deadlines.js';
import type { CallMeter } from './usage-meter.js';

/** What a call names: a node by id, or an alias by name. */
export type CallTarget = { nodeId: string; alias?: undefined } | { alias: string; nodeId?: undefined };

/** Where a call goes, once the pipeline has decided. */
export interface Resolved {
  route: NodeRoute;
  /** The alias it came through, if any (its proxy headers, mirroring). */
  alias: AliasRoute | null;
  /** The alias's sticky key, from the caller's header: the same key reaches the same node and instance. */
  stickyKey: string | undefined;
}

/** Header lookup, whatever the protocol's header object (HTTP/1.1, HTTP/2, gRPC metadata). */
export type HeaderSource = Record<string, string | string[] | undefined>;

/**
 * Counts one call on every metric family it belongs to: the node it names or the alias, and,
 * through an alias, the node that served it. Bound once the target is known; `end` once.
 */
export class CallCount {
  private readonly bound: CallMetrics[] = [];
  private readonly started = performance.now();

  constructor(private readonly metrics: Metrics, private readonly meter: CallMeter) {}

  /**
   * The call reached an instance of `route` (whatever it answered): it counts as one call in
   * the usage of the node's folder, with the bytes sent to the instance and answered by it.
   * Calls refused before an instance (auth, validation, a full queue, a suspended node) do not.
   */
  served(route: NodeRoute, bytesIn: number, bytesOut: number): void {
    this.meter.add(route, bytesIn, bytesOut);
  }

  node(nodeId: string): void { this.add(this.metrics.bindNode(nodeId)); }
  alias(name: string): void { this.add(this.metrics.bindAlias(name)); }

  private add(m: CallMetrics): void {
    if (this.bound.includes(m)) return;
    m.requests.inc();
    this.bound.push(m);
  }

  /**
   * The call is answered: `http` is the HTTP status sent (absent for Berth's own gRPC service,
   * whose calls count under their grpc-status only); `grpc` the grpc-status, when there is one.
   */
  end(http: number | undefined, grpc?: string): void {
    const seconds = (performance.now() - this.started) / 1000;
    for (const m of this.bound) {
      if (http === undefined) { m.observeGrpc(grpc ?? '2', seconds); continue; }
      m.observe(http, seconds);
      if (grpc !== undefined) m.grpc(grpc);
    }
  }
}

export class CallPipeline {
  /** Every call's deadline, on one timer. */
  readonly deadlines = callDeadlines;

  constructor(
    private readonly routes: RoutingTable,
    private readonly aliases: AliasTable,
    private readonly auth: Auth,
    private readonly metrics: Metrics,
  ) {}

  /** Step 1, once per call: 401 before anything else, even a 404. */
  authenticate(authorization: string | string[] | undefined): TokenRecord {
    return this.auth.authenticate(authorization);
  }

  /** Starts counting a call on what it names (when that exists: unknown names make no metric series). */
  count(target: CallTarget): CallCount {
    const c = new CallCount(this.metrics, this.routes.usage);
    if (target.alias !== undefined) { if (this.aliases.get(target.alias)) c.alias(target.alias); }
    else if (this.routes.route(target.nodeId)) c.node(target.nodeId);
    return c;
  }

  /** 404 for a target that does not exist, before the caller's body is read. */
  exists(target: CallTarget): void {
    if (target.alias !== undefined) { if (!this.aliases.get(target.alias)) throw aliasNotFound(target.alias); }
    else if (!this.routes.route(target.nodeId)) throw nodeNotFound(target.nodeId);
  }

  /**
   * Steps 2–4: the token must hold the caller's folder; a node must list that folder in its
   * ACL, an alias in its execution ACL (through an alias, the alias decides); an alias picks a
   * node with a Healthy instance by weight or by the sticky key. The node that serves is counted.
   */
  resolve(token: TokenRecord, folder: string, target: CallTarget, headers: HeaderSource, count: CallCount): Resolved {
    this.folder(token, folder);
    if (target.alias === undefined) return { route: this.node(token, folder, target.nodeId), alias: null, stickyKey: undefined };
    const name = target.alias;
    const alias = this.aliases.get(name);
    if (!alias) throw aliasNotFound(name);
    if (!alias.mayCall(folder)) throw new BerthError('PERMISSION_DENIED', `folder ${folder} may not call alias ${name}`, { folderId: folder, aliasName: name });
    const key = alias.spec.sticky ? headers[alias.spec.sticky.header] : undefined;
    const stickyKey = typeof key === 'string' && key ? key : undefined;
    const nodeId = alias.pick((id) => this.routes.canServe(id), stickyKey); // a node scaled to zero holds its calls: it is picked, and wakes
    const route = this.routes.route(nodeId);
    if (!route) throw new BerthError('NODE_UNAVAILABLE', `alias ${name} points at node ${nodeId}, which is gone`, { aliasName: name, nodeId }, { 'retry-after': '1' });
    count.node(route.id); // a call through an alias counts on the node that served it too
    return { route, alias, stickyKey };
  }

  /** Step 2: the token must hold the caller's folder (to execute there). */
  folder(token: TokenRecord, folder: string): void {
    if (!Auth.mayExecute(token, folder)) {
      throw new BerthError('PERMISSION_DENIED', `this token does not grant access to folder ${folder}`, { folderId: folder });
    }
  }

  /**
   * Steps 2–3 for a node: the caller's folder, then the node's ACL. Also what a node's
   * metadata and readiness (Open Inference Protocol) are checked with: what one may call, one may see.
   */
  node(token: TokenRecord, folder: string, nodeId: string): NodeRoute {
    this.folder(token, folder);
    const route = this.routes.route(nodeId);
    if (!route) throw nodeNotFound(nodeId);
    if (!route.aclFolders.has(folder)) {
      throw new BerthError('PERMISSION_DENIED', `folder ${folder} may not call node ${route.id}`, { folderId: folder, nodeId: route.id });
    }
    return route;
  }
}

function nodeNotFound(nodeId: string): BerthError {
  return new BerthError('NODE_NOT_FOUND', `node ${nodeId} not found`, { nodeId });
}

function aliasNotFound(name: string): BerthError {
  return new BerthError('ALIAS_NOT_FOUND', `alias ${name} not found`, { aliasName: name });
}
