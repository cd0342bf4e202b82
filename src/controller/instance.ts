// One instance's bookkeeping: status with timestamped transitions, health counters,
// its runtime handle and the controller's own health-check connection.
import type { InstanceStatus, InstanceView, NodeSpec, Transition } from '../core/types.js';
import type { RuntimeInstance } from '../runtimes/runtime.js';
import type { WorkerConnection } from '../worker/protocol.js';
import { describeEndpoint } from '../worker/protocol.js';
import { nowIso } from '../core/ids.js';
import { log } from '../core/log.js';

const MAX_TRANSITIONS = 30;

export class InstanceState {
  status: InstanceStatus = 'Undefined';
  transitions: Array<Transition<InstanceStatus>> = [];
  handle: RuntimeInstance | null = null;
  health: WorkerConnection | null = null;
  passes = 0;
  fails = 0;
  restarts = 0;
  /** Failures in a row before ever becoming Healthy: drives the restart backoff. */
  failuresInARow = 0;
  lastError: string | null = null;
  /** Set when Berth itself is stopping it (delete, scale-down, shutdown): no restart. */
  stopping = false;
  healthySince = 0;
  /** Whether the current run reached Healthy (a crash after that restarts at once). */
  healthyThisRun = false;
  unhealthySince = 0;
  /** Served, then failed failsThreshold health checks while still running: hung, a replacement starts beside it. */
  hung = false;
  /** Killed on purpose to restart in place (a call timeout): not "out", so no replacement starts beside it. */
  restarting = false;
  readonly createdAt = nowIso();
  updatedAt = this.createdAt;
  /** Bumped on each restart, so callbacks of an earlier run are ignored. */
  generation = 0;
  healthTimer: NodeJS.Timeout | null = null;

  /** `revision` and `spec`: what it runs (during a rollout, old and new instances differ). */
  constructor(readonly id: string, readonly nodeId: string, readonly revision: number, readonly spec: NodeSpec) {
    this.setStatus('Undefined');
  }

  setStatus(status: InstanceStatus, reason?: string): void {
    if (this.status === status && this.transitions.length > 0) return;
    this.status = status;
    this.updatedAt = nowIso();
    this.transitions.push({ status, at: this.updatedAt, ...(reason ? { reason } : {}) });
    log.info({ event: 'instance_status', nodeId: this.nodeId, instanceId: this.id, status, reason }, `instance ${status}`);
    if (this.transitions.length > MAX_TRANSITIONS) this.transitions.shift();
    if (status === 'Healthy') { this.healthySince = Date.now(); this.healthyThisRun = true; }
    if (status === 'Unhealthy') this.unhealthySince = Date.now();
  }

  /** Closes the health-check connection (the gateway closes its own when the instance leaves the snapshot). */
  closeConnections(): void {
    this.health?.close();
    this.health = null;
    if (this.healthTimer) clearTimeout(this.healthTimer);
    this.healthTimer = null;
  }

  /** `inFlight`: calls the gateways run on it now. */
  view(inFlight: number): InstanceView {
    return {
      id: this.id, nodeId: this.nodeId, revision: this.revision, status: this.status,
      endpoint: this.handle ? describeEndpoint(this.handle.endpoint) : null,
      pid: this.handle?.pid ?? null,
      restarts: this.restarts, lastError: this.lastError, inFlight,
      createdAt: this.createdAt, updatedAt: this.updatedAt, transitions: [...this.transitions],
    };
  }
}
