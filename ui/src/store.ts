// The page's live state: what the watch stream last said about every node and alias the token
// may read, and their metrics "now". One stream per page; it reconnects by itself (with a
// growing pause) and starts from a full state each time, so nothing is polled.
import { useEffect, useState } from 'preact/hooks';
import { ApiError, streamEvents } from './api';

export interface Instance {
  id: string; nodeId: string; revision: number; status: string; endpoint: string | null; pid: number | null;
  restarts: number; lastError: string | null; inFlight: number; createdAt: string; updatedAt: string;
  transitions: Array<{ status: string; at: string; reason?: string }>;
}
export interface Variable { name: string; type: string; description?: string; default?: unknown; optional?: boolean }
export interface NodeView {
  id: string; name: string; kind: 'cell' | 'image'; description: string; folderId: string; status: string; revision: number;
  rollout: { revision: number; from: number; state: string; reason?: string; updated: number; outdated: number; healthy: number } | null;
  scaling: { minInstances: number; maxInstances: number; sessionsPerInstance: number; queueSize: number };
  instances: Instance[]; queued: number; relatedAliases: string[]; warnings?: string[];
  transitions: Array<{ status: string; at: string; reason?: string }>;
  inputs?: Variable[]; outputs?: Variable[]; checkpointId?: string; image?: string; scaledToZero?: boolean;
  createdAt: string; updatedAt: string; createdBy: string;
  [k: string]: unknown;
}
export interface AliasView {
  id: string; name: string; folderId: string; description: string;
  backends: Array<{ nodeId: string; weight: number }>;
  mirror: { nodeId: string; percent: number } | null;
  sticky: { header: string } | null;
  executionAcl: { folders: string[]; isPublic: boolean };
  status: { backends: Array<{ nodeId: string; weight: number; nodeStatus: string; healthyInstances: number }>; mirror: Record<string, unknown> | null };
  createdAt: string; updatedAt: string;
}
export interface Point { t: number; rps: number; errors: Record<string, number>; p50: number | null; p90: number | null; p99: number | null; instances?: Record<string, number> }

type Listener = () => void;

class Live {
  nodes = new Map<string, NodeView>();
  aliases = new Map<string, AliasView>();
  /** Rates averaged over the last few samples, per node id and alias name. */
  now = { nodes: new Map<string, Point>(), aliases: new Map<string, Point>() };
  /** Which of nodes/aliases have had their first full state. */
  loaded = { nodes: false, aliases: false };
  connected = false;
  error: string | null = null;
  version = 0;
  private listeners = new Set<Listener>();
  private metricListeners = new Set<(t: number) => void>();
  private abort: AbortController | null = null;

  subscribe(fn: Listener): () => void { this.listeners.add(fn); return () => { this.listeners.delete(fn); }; }
  onMetrics(fn: (t: number) => void): () => void { this.metricListeners.add(fn); return () => { this.metricListeners.delete(fn); }; }
  private changed(): void { this.version++; for (const fn of this.listeners) fn(); }

  start(): void {
    this.stop();
    const abort = new AbortController();
    this.abort = abort;
    let pause = 500;
    const loop = async (): Promise<void> => {
      while (!abort.signal.aborted) {
        try {
          await streamEvents('/v1/watch', abort.signal, (event, data) => { pause = 500; this.apply(event, data); });
          this.error = 'the server ended the live stream; reconnecting';
        } catch (err) {
          if (abort.signal.aborted) return;
          if (err instanceof ApiError && err.status === 401) {
            // revoked or unknown: retrying cannot help, signing in again can
            this.error = `${err.code}: this token is no longer accepted; sign in again`;
            this.connected = false;
            this.changed();
            return;
          }
          this.error = `live updates lost (${(err as Error).message}); reconnecting`;
        }
        this.connected = false;
        this.changed();
        await new Promise((r) => setTimeout(r, pause));
        pause = Math.min(pause * 2, 10_000);
      }
    };
    void loop();
  }

  stop(): void {
    this.abort?.abort();
    this.abort = null;
    this.nodes.clear(); this.aliases.clear(); this.now.nodes.clear(); this.now.aliases.clear();
    this.loaded = { nodes: false, aliases: false };
    this.connected = false;
  }

  private apply(event: string, data: unknown): void {
    if (event === 'error') { this.error = `${(data as { code: string }).code}: ${(data as { message: string }).message}`; this.changed(); return; }
    if (event === 'hello') { this.connected = true; this.error = null; this.changed(); return; }
    if (event === 'nodes' || event === 'aliases') {
      const d = data as { nodes?: NodeView[]; aliases?: AliasView[]; gone: string[]; full: boolean };
      const map = (event === 'nodes' ? this.nodes : this.aliases) as Map<string, NodeView | AliasView>;
      if (d.full) map.clear();
      for (const v of (d.nodes ?? d.aliases ?? [])) map.set(v.id, v);
      for (const id of d.gone) map.delete(id);
      this.loaded[event] = true;
      this.changed();
      return;
    }
    if (event === 'metrics') {
      const d = data as { t: number; nodes: Record<string, Point>; aliases: Record<string, Point> };
      this.now.nodes = new Map(Object.entries(d.nodes));
      this.now.aliases = new Map(Object.entries(d.aliases));
      for (const fn of this.metricListeners) fn(d.t);
      this.changed();
    }
  }
}

export const live = new Live();

/** Re-renders the component whenever the live state changes. */
export function useLive(): Live {
  const [, set] = useState(0);
  useEffect(() => live.subscribe(() => set(live.version)), []);
  return live;
}
