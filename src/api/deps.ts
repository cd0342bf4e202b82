// What the control API's plugins are given: the services they sit on.
import type { Config } from '../core/config.js';
import type { Store } from '../store/store.js';
import type { Controller } from '../controller/controller.js';
import type { CheckpointService } from '../checkpoints/service.js';
import type { Secrets } from '../secrets/secrets.js';
import type { AliasTable } from '../aliases/table.js';
import type { Metrics } from '../core/metrics.js';
import type { Quotas } from '../folders/quotas.js';
import type { Auth } from '../core/auth.js';
import type { UsageRecorder } from '../usage/recorder.js';
import type { PeerServer } from '../peers/bus.js';

export interface ApiDeps {
  config: Config;
  store: Store;
  auth: Auth;
  controller: Controller;
  checkpoints: CheckpointService;
  secrets: Secrets;
  aliases: AliasTable;
  metrics: Metrics;
  quotas: Quotas;
  /** The Prometheus exposition: Berth's metrics and the scraped image-node telemetry; `callsOnly`: the node and alias call families alone. */
  metricsText: (callsOnly?: boolean) => Promise<string>;
  /** Usage accounting: flushed before a read, so GET /v1/usage is current to the second. */
  usage: UsageRecorder;
  /** The Berth servers sharing the store (this one alone on SQLite). */
  servers: () => Promise<PeerServer[]>;
}
