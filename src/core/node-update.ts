// In-place node updates (PATCH /v1/nodes/{id}, `berth apply` on an existing node): the stored
// spec turned back into the form users write, a JSON merge patch (RFC 7386) over it, and which
// fields differ. The merged result goes through parseNodeSpec, so an update is validated
// exactly as a create is.
import type { NodeSpec } from './types.js';

/** What changes without touching instances: gateways and the scaler pick it up from the next snapshot. */
export const IN_PLACE_FIELDS: ReadonlySet<string> = new Set(['description', 'scaling', 'permissions']);

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * A stored spec as a user would write it, so that parseNodeSpec accepts it again: resource
 * presets by name, the implicit health checks left out, a defaulted queueSize left out (so it
 * follows a new maxInstances).
 */
export function specInput(spec: NodeSpec): Obj {
  const out: Obj = JSON.parse(JSON.stringify(spec)) as Obj;
  const r = spec.resources;
  out.resources = r.preset ? r.preset : { cores: r.cores, memoryGb: r.memoryGb, gpus: r.gpus };
  const hc = spec.healthcheck;
  if (hc.protocol === 'endpoint') delete out.healthcheck;
  else if (hc.protocol === 'worker') out.healthcheck = { timeout: hc.timeout, interval: hc.interval, failsThreshold: hc.failsThreshold, passesThreshold: hc.passesThreshold };
  const s = spec.scaling;
  if (s.queueSize === 64 * s.maxInstances * s.sessionsPerInstance) delete (out.scaling as Obj).queueSize;
  return out;
}

/** RFC 7386: objects merge key by key, `null` removes a key, anything else replaces. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObj(patch)) return patch;
  const out: Obj = isObj(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

/** Top-level fields whose values differ (key order ignored). */
export function changedFields(a: NodeSpec, b: NodeSpec): string[] {
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
  const av = a as unknown as Obj;
  const bv = b as unknown as Obj;
  return [...keys].filter((k) => canonical(av[k]) !== canonical(bv[k])).sort();
}

function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (isObj(v)) return `{${Object.keys(v).sort().filter((k) => v[k] !== undefined).map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(',')}}`;
  return JSON.stringify(v) ?? 'undefined';
}
