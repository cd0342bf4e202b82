// Node updates (PATCH /v1/nodes/{id}, `berth apply` on an existing node): the stored spec turned
// back into the form users write, a JSON merge patch (RFC 7386) over it, and what differs. The
// merged result goes through parseNodeSpec, so an update is validated exactly as a create is.
// Fields in IN_PLACE_FIELDS apply at once; any other change makes a new revision and a rollout.
import { ROLLOUT_DEFAULTS, type NodeSpec, type RolloutSettings } from './types.js';

/** What changes without touching instances: gateways and the scaler pick it up from the next snapshot. */
export const IN_PLACE_FIELDS: ReadonlySet<string> = new Set(['description', 'scaling', 'permissions', 'rollout']);

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

export function rolloutSettings(spec: NodeSpec): RolloutSettings {
  return spec.rollout ?? ROLLOUT_DEFAULTS;
}

/** Every leaf that differs, by dotted path (arrays compared whole): what `--dry-run` prints. */
export function specDiff(a: unknown, b: unknown, path = ''): Array<{ field: string; from: unknown; to: unknown }> {
  if (isObj(a) && isObj(b)) {
    const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
    return keys.flatMap((k) => specDiff(a[k], b[k], path ? `${path}.${k}` : k));
  }
  return canonical(a) === canonical(b) ? [] : [{ field: path, from: a ?? null, to: b ?? null }];
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
