// A gateway worker of `berth up --gateway-workers N`: one of N processes that serve the one
// port (the primary accepts each connection and hands it to a worker: cluster/distributor.ts)
// with the data plane, from the routing snapshots, tokens and aliases the primary sends. It has no database and no
// controller: instance events and load go up to the primary; control-API requests that
// arrive here are relayed, as they are, to the primary's unix socket in BERTH_HOME (mode
// 0600), which answers them with the same fastify app as with one process.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Socket } from 'node:net';
import { Auth } from '../core/auth.js';
import { BerthError } from '../core/errors.js';
import { Metrics } from '../core/metrics.js';
import { AliasTable } from '../aliases/table.js';
import { RoutingTable, loadShape } from '../gateway/routing-table.js';
import { createDataPlane } from '../gateway/data-plane.js';
import { relayControl } from './relay.js';
import { RelayClient, RelayServer } from './call-relay.js';
import { installProcessGuards } from '../gateway/last-resort.js';
import { WORKER_ENV, type FromWorker, type ToWorker, type WorkerBoot } from './messages.js';

/**
 * Load is reported this often when its shape changed (loadShape: calls start or stop waiting,
 * sessions held, an instance busy or idle), and at once when sessions are given back or calls
 * queue; when only the counts of running calls and last-use times moved, every COUNTS_REPORT_MS.
 */
const REPORT_MS = 20;
const COUNTS_REPORT_MS = 100;
/**
 * While no call runs or waits here, the load is looked at this often instead: a tick every 20 ms
 * was most of an idle worker's CPU. Calls that queue are still reported at once (onLoadChange).
 */
const IDLE_REPORT_MS = 250;
/** Mirror statistics (aliases with a shadow node) are reported this often when they changed. */
const MIRROR_REPORT_MS = 250;
/** Calls and bytes served (usage accounting) ride on a load report this often, when there are any. */
const USAGE_REPORT_MS = 1000;

async function main(): Promise<void> {
  installProcessGuards();
  const boot = JSON.parse(process.env[WORKER_ENV] ?? '') as WorkerBoot;
  // --max-connections bounds the port as a whole: each worker takes its share (the primary
  // hands connections out round robin, so the shares fill evenly)
  const config = { ...boot.config, maxConnections: Math.max(1, Math.ceil(boot.config.maxConnections / boot.config.gatewayWorkers)) };
  process.umask(0o077);
  const send = (m: FromWorker): void => {
    if (!process.connected) return;
    try { process.send!(m); } catch { /* the primary is gone: 'disconnect' ends this process */ }
  };

  const auth = new Auth(null);
  const aliases = new AliasTable();
  const metrics = new Metrics();
  // calls to nodes whose sessions another worker holds go there (one connection per such worker)
  const frameLimit = Math.max(config.maxRequestBytes, config.maxResponseBytes) + 64 * 1024;
  const homes = new Map<string, RelayClient>();
  let sentToFormerHomes = 0;
  const relayTo = (path: string): RelayClient => {
    let client = homes.get(path);
    if (!client) homes.set(path, client = new RelayClient(path, frameLimit));
    return client;
  };
  const routes = new RoutingTable({
    refused: (nodeId, instanceId, reason) => send({ t: 'refused', nodeId, instanceId, reason }),
    timedOut: (nodeId, instanceId, timeoutSeconds) => send({ t: 'timedOut', nodeId, instanceId, timeoutSeconds }),
    held: (nodeId) => send({ t: 'held', nodeId }),
  }, config.maxResponseBytes, relayTo);
  const tls = config.tls ? { cert: readFileSync(config.tls.certFile), key: readFileSync(config.tls.keyFile) } : null;
  const plane = await createDataPlane({ config, routes, auth, metrics, aliases, tls, control: relayControl(() => ({ socketPath: boot.controlSocket })) });
  // and the calls of the nodes whose sessions this worker holds come here, beside the control socket
  const relay = new RelayServer(join(dirname(boot.controlSocket), `gateway-${process.pid}.sock`), frameLimit,
    (nodeId, payload, stickyKey, onlyIfFree) => plane.gateway.serveRelayed(nodeId, payload, stickyKey, onlyIfFree),
    (stream, headers) => plane.proxy.serveRelayed(stream, headers));
  await relay.listen();

  // ---- load reports: what the primary sums for the controller and moves session leases by ----
  let lastLoad = '';
  let lastShape = '';
  let lastSent = 0;
  let lastMirror = '';
  let queued = false;
  let busy = false;
  const report = (force: boolean): void => {
    const load = routes.loadReport();
    busy = false;
    for (const id in load.nodes) if (load.nodes[id]!.busy + load.nodes[id]!.waiting > 0) { busy = true; break; }
    const shape = loadShape(load);
    const now = performance.now();
    if (!force && shape === lastShape && now - lastSent < COUNTS_REPORT_MS) return;
    const text = JSON.stringify(load);
    if (!force && text === lastLoad) return;
    lastLoad = text;
    lastShape = shape;
    lastSent = now;
    send({ t: 'load', report: load });
  };
  routes.onLoadChange = () => {
    if (queued) return;
    queued = true;
    setImmediate(() => { queued = false; report(false); });
  };
  const tick = (): void => { report(false); setTimeout(tick, busy ? REPORT_MS : IDLE_REPORT_MS).unref(); };
  tick();
  setInterval(() => {
    const mirror = aliases.mirrorReports();
    const text = JSON.stringify(mirror);
    if (text === lastMirror) return;
    lastMirror = text;
    send({ t: 'load', report: routes.loadReport(), mirror });
  }, MIRROR_REPORT_MS).unref();

  // usage: counted in memory on the call path, carried up in batches (never per call); relayed calls alike
  let lastRelayed = '';
  const reportUsage = (): void => {
    const usage = routes.usage.drain();
    let sent = sentToFormerHomes;
    for (const client of homes.values()) sent += client.sent;
    const relayed = { sent, served: relay.served };
    const text = JSON.stringify(relayed);
    if (usage.length === 0 && text === lastRelayed) return;
    lastRelayed = text;
    send({ t: 'load', report: routes.loadReport(), usage, relayed });
  };
  setInterval(reportUsage, USAGE_REPORT_MS).unref();

  let haveTokens = false;
  let haveAliases = false;
  let draining = false;
  let ready = false;
  /** Ready for connections once it can authenticate and resolve aliases. */
  const readyWhenSet = (): void => {
    if (ready || !haveTokens || !haveAliases) return;
    ready = true;
    send({ t: 'ready', relay: relay.path });
  };

  process.on('message', (m: ToWorker, handle?: unknown) => {
    switch (m.t) {
      case 'conn': {
        // acknowledged before a byte is read: until then the primary may still give it to another worker
        send({ t: 'connAck', id: m.id });
        if (!(handle instanceof Socket)) return;
        if (draining) { handle.destroy(); return; }
        plane.door.server.emit('connection', handle);
        return;
      }
      case 'snapshot': {
        const before = new Set(routes.nodeIds());
        routes.apply(m.snapshot);
        // a home no node names any more (it exited, or its nodes moved) is let go once idle
        const named = new Set(m.snapshot.nodes.map((n) => n.relay));
        for (const [path, client] of homes) {
          if (named.has(path) || client.waiting > 0) continue;
          sentToFormerHomes += client.sent;
          client.close();
          homes.delete(path);
        }
        const now = new Set(routes.nodeIds());
        for (const id of before) if (!now.has(id)) metrics.forgetNode(id);
        report(true); // the acknowledgement: the primary times propagation and confirms shrunk leases by it
        return;
      }
      case 'tokens': auth.replace(m.records); haveTokens = true; readyWhenSet(); return;
      case 'aliases': {
        const names = new Set(m.records.map((r) => r.spec.name));
        for (const r of aliases.records()) if (!names.has(r.spec.name)) metrics.forgetAlias(r.spec.name);
        aliases.replaceAll(m.records);
        haveAliases = true;
        readyWhenSet();
        return;
      }
      case 'sync': reportUsage(); send({ t: 'synced', id: m.id }); return; // the counts arrive before 'synced' (the channel keeps order)
      case 'elsewhere': routes.setElsewhere(m.waiting); return;
      case 'metrics?':
        void metrics.json(m.callsOnly).then((json) => send({ t: 'metrics', id: m.id, json }), () => send({ t: 'metrics', id: m.id, json: [] }));
        return;
      case 'drain':
        if (draining) return;
        draining = true;
        void (async () => {
          await plane.drain(m.deadline);
          // calls the other workers sent here before they stopped taking calls
          while (relay.inFlight > 0 && Date.now() < m.deadline) await new Promise((r) => setTimeout(r, 20));
          routes.close(new BerthError('SHUTTING_DOWN', 'Berth is shutting down', {}, { 'retry-after': '5' }));
          report(true);
          reportUsage(); // before 'drained': the channel keeps order, the primary has it all before it stops
          await plane.close();
          relay.close();
          for (const client of homes.values()) client.close();
          send({ t: 'drained' });
          process.exit(0);
        })();
        return;
    }
  });
  // the primary decides when to stop (it drains every worker on SIGTERM); a worker whose
  // primary is gone has nothing to serve from
  process.on('SIGTERM', () => undefined);
  process.on('SIGINT', () => undefined);
  process.on('disconnect', () => process.exit(draining ? 0 : 1));
  send({ t: 'hello' });
}

main().catch((err: unknown) => {
  console.error(`[berth] gateway worker ${process.pid} failed to start: ${(err as Error).stack ?? String(err)}`);
  process.exit(2);
});
