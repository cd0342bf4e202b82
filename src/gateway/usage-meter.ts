// Calls and bytes per node, counted on the call path (pipeline.ts, CallCount.served) and
// drained in batches: by the usage recorder every few seconds with one gateway, or by a
// gateway worker into the load reports it sends the primary anyway. A call only bumps three
// numbers in a cell it finds by node id: no allocation, no I/O, nothing crosses processes.
import type { NodeSpec, Resources } from '../core/types.js';
import { usagePreset, type CallUsage } from '../routing/usage.js';

interface Cell extends CallUsage {
  /** The resources object the preset was computed from (a spec change brings a new one). */
  resources: Resources;
  /** Drains in a row that found it idle: dropped after two, made again by the next call. */
  idle: number;
}

/** What the meter needs of a node's route (the routing table's NodeRoute has it). */
type Metered = { readonly id: string; readonly spec: NodeSpec };

export class CallMeter {
  private readonly cells = new Map<string, Cell>();
  /** Cells replaced while holding counts (the node's folder or preset changed): drained once more. */
  private retired: Cell[] = [];

  /** One call that reached an instance of `route`: `bytesIn` sent to it, `bytesOut` answered. */
  add(route: Metered, bytesIn: number, bytesOut: number): void {
    let c = this.cells.get(route.id);
    const resources = route.spec.resources;
    if (c === undefined || c.resources !== resources || c.folderId !== route.spec.folderId) c = this.replace(route, c);
    c.calls++;
    c.bytesIn += bytesIn;
    c.bytesOut += bytesOut;
  }

  /** Made once per node (and again after a spec change or an idle spell), never per call. */
  private replace(route: Metered, old: Cell | undefined): Cell {
    if (old !== undefined && old.calls > 0) this.retired.push(old);
    const resources = route.spec.resources;
    const c: Cell = { nodeId: route.id, folderId: route.spec.folderId, preset: usagePreset(resources), resources, calls: 0, bytesIn: 0, bytesOut: 0, idle: 0 };
    this.cells.set(route.id, c);
    return c;
  }

  /** Everything counted since the last drain (plain rows, ready to send or store), and zero again. */
  drain(): CallUsage[] {
    const out: CallUsage[] = [];
    const take = (c: Cell): void => {
      out.push({ nodeId: c.nodeId, folderId: c.folderId, preset: c.preset, calls: c.calls, bytesIn: c.bytesIn, bytesOut: c.bytesOut });
      c.calls = 0; c.bytesIn = 0; c.bytesOut = 0;
    };
    for (const c of this.retired) take(c);
    this.retired = [];
    for (const [id, c] of this.cells) {
      if (c.calls > 0) { take(c); c.idle = 0; } else if (++c.idle >= 2) this.cells.delete(id);
    }
    return out;
  }
}
