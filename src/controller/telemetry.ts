// Scrapes each Healthy image instance's own Prometheus endpoint on an interval and
// re-exposes the samples on Berth's /metrics with node_id and instance_id labels added.
import { request } from 'undici';
import type { Controller } from './controller.js';

const SCRAPE_TIMEOUT_MS = 2000;
const MAX_SCRAPE_BYTES = 4 * 1024 * 1024;

export class Telemetry {
  /** node id → instance id → relabelled exposition text */
  private readonly samples = new Map<string, Map<string, string>>();
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly controller: Controller, private readonly intervalMs: number) {}

  start(): void {
    this.timer = setInterval(() => void this.scrapeAll(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  async scrapeAll(): Promise<void> {
    const live = new Set<string>();
    await Promise.all(this.controller.nodeIds().map(async (nodeId) => {
      const spec = this.controller.nodeSpec(nodeId);
      if (!spec || spec.kind !== 'image' || !spec.telemetry) return;
      const t = spec.telemetry;
      const byInstance = this.samples.get(nodeId) ?? new Map<string, string>();
      this.samples.set(nodeId, byInstance);
      const instances = this.controller.healthyInstances(nodeId);
      for (const key of byInstance.keys()) if (!instances.some((i) => i.id === key)) byInstance.delete(key);
      live.add(nodeId);
      await Promise.all(instances.map(async ({ id, handle }) => {
        const e = handle.ports.get(t.port) ?? handle.endpoint;
        try {
          const res = await request(`http://${e.host ?? '127.0.0.1'}:${e.port}${t.path}`, { signal: AbortSignal.timeout(SCRAPE_TIMEOUT_MS) });
          if (res.statusCode !== 200) { await res.body.dump(); return; }
          const text = await res.body.text();
          if (text.length <= MAX_SCRAPE_BYTES) byInstance.set(id, relabel(text, { node_id: nodeId, instance_id: id }));
        } catch { /* keep the last good scrape until the instance leaves */ }
      }));
    }));
    for (const key of this.samples.keys()) if (!live.has(key)) this.samples.delete(key);
  }

  /** The scraped samples, HELP/TYPE lines kept once per metric family. */
  exposition(): string {
    const seen = new Set<string>();
    const out: string[] = [];
    for (const byInstance of this.samples.values()) {
      for (const text of byInstance.values()) {
        for (const line of text.split('\n')) {
          if (line.startsWith('# ')) {
            const key = line.split(' ', 3).slice(0, 3).join(' ');
            if (seen.has(key)) continue;
            seen.add(key);
          }
          if (line) out.push(line);
        }
      }
    }
    return out.length ? '\n' + out.join('\n') + '\n' : '';
  }
}

/** Adds labels to every sample line of a Prometheus text exposition. */
export function relabel(text: string, labels: Record<string, string>): string {
  const extra = Object.entries(labels).map(([k, v]) => `${k}="${v.replace(/["\\\n]/g, (c) => (c === '\n' ? '\\n' : '\\' + c))}"`).join(',');
  return text.split('\n').map((line) => {
    if (!line || line.startsWith('#')) return line;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?(\s.*)$/.exec(line);
    if (!m) return '';
    const [, name, existing, rest] = m;
    const inner = existing ? existing.slice(1, -1) : '';
    return `${name}{${extra}${inner ? ',' + inner : ''}}${rest}`;
  }).join('\n');
}
