// What the primary and its gateway workers tell each other over the cluster IPC channel
// (JSON). Nothing here is per call: snapshots, tokens and aliases go down when they change;
// load reports, instance events and metrics come up. Control-API requests do not travel
// here: a worker relays them to the primary's unix socket (see cluster/worker.ts).
import type { AliasRecord, TokenRecord } from '../core/types.js';
import type { Config } from '../core/config.js';
import type { RoutingSnapshot } from '../routing/snapshot.js';
import type { LoadReport } from '../gateway/routing-table.js';
import type { MirrorReport } from '../aliases/table.js';
import type { CallUsage } from '../routing/usage.js';

export type ToWorker =
  | { t: 'snapshot'; snapshot: RoutingSnapshot }
  | { t: 'tokens'; records: TokenRecord[] }
  | { t: 'aliases'; records: AliasRecord[] }
  | { t: 'metrics?'; id: number; callsOnly: boolean }
  | { t: 'sync'; id: number }
  /** Calls waiting per node in the other workers (each worker's queue counts them against queueSize). */
  | { t: 'elsewhere'; waiting: Record<string, number> }
  | { t: 'drain'; deadline: number }
  /** A client connection (sent with the message as its handle): serve it and acknowledge at once. */
  | { t: 'conn'; id: number };

export type FromWorker =
  | { t: 'hello' }
  /** Tokens and aliases applied: it may be handed connections. `relay`: its socket for calls to the nodes whose sessions it holds. */
  | { t: 'ready'; relay: string }
  /** It has the connection `id` (the primary closes its copy of the socket then). */
  | { t: 'connAck'; id: number }
  /** `usage`: calls and bytes per node since the worker's last one (about every second, and when it drains). */
  | { t: 'load'; report: LoadReport; mirror?: Record<string, MirrorReport>; usage?: CallUsage[]; relayed?: RelayedCalls }
  | { t: 'refused'; nodeId: string; instanceId: string; reason: string }
  | { t: 'timedOut'; nodeId: string; instanceId: string; timeoutSeconds: number }
  | { t: 'held'; nodeId: string }
  | { t: 'metrics'; id: number; json: unknown }
  /** Everything sent before the matching sync has been applied (the channel keeps order). */
  | { t: 'synced'; id: number }
  | { t: 'drained' };

/** Calls a worker sent to other workers' nodes (cluster/call-relay.ts), and served for others, since it started. */
export interface RelayedCalls { sent: number; served: number }

/** What a gateway worker is started with (environment variable BERTH_GATEWAY_WORKER, JSON). */
export interface WorkerBoot {
  config: Config;
  /** The primary's control API, relayed to: a unix socket in BERTH_HOME, mode 0600. */
  controlSocket: string;
}

export const WORKER_ENV = 'BERTH_GATEWAY_WORKER';
