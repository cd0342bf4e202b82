// What the controller tells gateways: a versioned, immutable, serialisable routing
// snapshot (every node with its Healthy instances and where to reach them), and what
// gateways tell the controller back (instance events, load). The controller and the
// gateway share only these types; neither imports the other.
import type { NodeSpec } from '../core/types.js';
import type { Endpoint } from '../worker/protocol.js';

/** A Healthy instance, in balancing. */
export interface InstanceEntry {
  readonly id: string;
  /** Cell: the worker's socket. Image: the endpoint port's address on this machine. */
  readonly endpoint: Endpoint;
  /** When it became Healthy (ms since the epoch): sticky keys go to settled instances first, the same in every gateway worker. */
  readonly since?: number;
  /**
   * With several gateway workers: the sessions of this instance this gateway may hold (its
   * lease; the primary moves sessions between workers, never more than sessionsPerInstance
   * in all). Absent: all of them (one gateway).
   */
  readonly sessions?: number;
}

export interface NodeEntry {
  readonly id: string;
  /** The node's spec as stored; a gateway compiles what it needs (validators, ACL) once per version. */
  readonly spec: NodeSpec;
  /** Bumped whenever the spec changes, so gateways recompile only then. */
  readonly specVersion: string;
  readonly instances: readonly InstanceEntry[];
  /** Set while the node has no Healthy instance and none about to be: calls fail at once with this reason. */
  readonly unavailable?: string;
  /** Suspended by request: calls are refused with NODE_SUSPENDED. */
  readonly suspended?: boolean;
  /**
   * Scale to zero (minInstances 0): while no instance is in balancing, calls are held (up to
   * scaling.holdTimeout, within queueSize) while one starts, never refused at once. `startError`:
   * why the last start failed, if it did (said in the 503 of a call held past the hold).
   */
  readonly hold?: { readonly startError?: string };
  /**
   * With several gateway workers: the unix socket of the worker that holds all of this cell
   * node's sessions (it has fewer than there are workers), for a worker that does not. Calls
   * go there after their HTTP/gRPC, auth and input work (cluster/call-relay.ts).
   */
  readonly relay?: string;
}

export interface RoutingSnapshot {
  readonly version: number;
  readonly nodes: readonly NodeEntry[];
}

/** Gateways report what they see on the call path; the controller acts on it off that path. */
export interface InstanceEvents {
  /** The gateway could not connect to the instance (refused, reset). */
  refused(nodeId: string, instanceId: string, reason: string): void;
  /** A call ran past the node's timeout on this instance. */
  timedOut(nodeId: string, instanceId: string, timeoutSeconds: number): void;
  /** A call is held at a node with no instance in balancing (scaled to zero): start one now, not at the next tick. */
  held(nodeId: string): void;
}

/** Calls running and waiting, as gateways count them: what scaling and draining decide on. */
export interface LoadSource {
  node(nodeId: string): { busy: number; waiting: number };
  instance(nodeId: string, instanceId: string): { busy: number; lastUsedAt: number };
}

/** Something that serves calls from snapshots: one gateway, or N gateway workers behind one. */
export interface SnapshotSink {
  apply(snapshot: RoutingSnapshot): void;
}

/** Snapshots travel between processes as JSON; this checks the shape on arrival. */
export function parseSnapshot(text: string): RoutingSnapshot {
  const s = JSON.parse(text) as RoutingSnapshot;
  if (typeof s.version !== 'number' || !Array.isArray(s.nodes)) throw new Error('not a routing snapshot');
  return s;
}
