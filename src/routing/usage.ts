// What gateways report about usage: calls and bytes per node, counted on the call path,
// accumulated in memory and handed over in batches (RoutingTable.usage, drained by the usage
// recorder in this process, or by a gateway worker into its load reports). Shared by the
// gateway and the usage recorder; nothing here is per call but the counting itself.
import type { Resources } from '../core/types.js';

/** Calls and bytes of one node since the last drain (a node's folder and preset as its route had them). */
export interface CallUsage {
  nodeId: string;
  folderId: string;
  preset: string;
  calls: number;
  bytesIn: number;
  bytesOut: number;
}

/**
 * The resources label usage is kept under: the preset's name (`c1.4`), or for explicit
 * resources `custom:<cores>c-<memoryGb>g-<gpus>gpu`, so different sizes never share a row.
 */
export function usagePreset(r: Resources): string {
  return r.preset ?? `custom:${r.cores}c-${r.memoryGb}g-${r.gpus}gpu`;
}
