// Validates and normalises a node spec as a user sends it (API body or YAML file) into
// the NodeSpec Berth stores. Every error names the field, as `invalidArgument` does.
import { invalidArgument } from './errors.js';
import { compileCheck } from './var-check.js';
import { formatType, parseType, TypeSyntaxError } from './var-types.js';
import { ROLLOUT_DEFAULTS, type CellNodeSpec, type Healthcheck, type ImageNodeSpec, type NodeSpec, type NodeSpecCommon, type NodePlacement, type Resources, type RolloutSettings, type Scaling, type Variable } from './types.js';

export const RESOURCE_PRESETS: Record<string, Omit<Resources, 'preset'>> = {
  'c1.4': { cores: 4, memoryGb: 32, gpus: 0 },
  'c1.8': { cores: 8, memoryGb: 64, gpus: 0 },
  'c1.32': { cores: 32, memoryGb: 256, gpus: 0 },
  'g1.1': { cores: 8, memoryGb: 48, gpus: 1 },
  'g2.1': { cores: 28, memoryGb: 119, gpus: 1 },
};

// 2–63 chars, starts with a letter, ends with a letter or digit; Cyrillic allowed.
const NAME_RE = /^[A-Za-zА-Яа-яЁё][A-Za-zА-Яа-яЁё0-9_\- ]{0,61}[A-Za-zА-Яа-яЁё0-9]$/;
const FOLDER_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const IDENTIFIER_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
const PY_KEYWORDS = new Set(['False', 'None', 'True', 'and', 'as', 'assert', 'async', 'await', 'break', 'class', 'continue', 'def', 'del', 'elif', 'else', 'except', 'finally', 'for', 'from', 'global', 'if', 'import', 'in', 'is', 'lambda', 'nonlocal', 'not', 'or', 'pass', 'raise', 'return', 'try', 'while', 'with', 'yield']);

const COMMON_FIELDS = ['kind', 'name', 'description', 'folderId', 'projectId', 'permissions', 'resources', 'scaling', 'healthcheck', 'network', 'rollout', 'placement'];
const KIND_FIELDS = {
  cell: new Set([...COMMON_FIELDS, 'checkpointId', 'inputs', 'outputs', 'environment', 'timeout']),
  image: new Set([...COMMON_FIELDS, 'image', 'username', 'passwordSecret', 'env', 'endpoint', 'telemetry', 'capabilities']),
};
/** Capabilities an image node may ask to keep (Docker's default set; everything else stays dropped). */
export const CAPABILITIES = ['CHOWN', 'DAC_OVERRIDE', 'FOWNER', 'FSETID', 'KILL', 'SETGID', 'SETUID', 'SETPCAP', 'NET_BIND_SERVICE', 'NET_RAW', 'SYS_CHROOT', 'MKNOD', 'AUDIT_WRITE', 'SETFCAP'] as const;
// image references: [registry[:port]/]name[:tag][@digest]
const IMAGE_RE = /^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$/;
const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

export interface SpecContext { defaultFolder: string; defaultProject: string; defaultPython: string }

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj { return typeof v === 'object' && v !== null && !Array.isArray(v); }

function str(o: Obj, key: string, field: string, opts: { required?: boolean; max?: number } = {}): string | undefined {
  const v = o[key];
  if (v === undefined || v === null) {
    if (opts.required) throw invalidArgument(field, 'is required');
    return undefined;
  }
  if (typeof v !== 'string') throw invalidArgument(field, `must be a string, got ${typeName(v)}`);
  if (opts.max !== undefined && v.length > opts.max) throw invalidArgument(field, `must be at most ${opts.max} characters`);
  return v;
}

function int(o: Obj, key: string, field: string, min: number, max: number, dflt: number): number {
  const v = o[key];
  if (v === undefined || v === null) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v)) throw invalidArgument(field, `must be an integer, got ${typeName(v)}`);
  if (v < min || v > max) throw invalidArgument(field, `must be between ${min} and ${max}, got ${v}`);
  return v;
}

function num(o: Obj, key: string, field: string, min: number, max: number, dflt: number): number {
  const v = o[key];
  if (v === undefined || v === null) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw invalidArgument(field, `must be a number, got ${typeName(v)}`);
  if (v < min || v > max) throw invalidArgument(field, `must be between ${min} and ${max}, got ${v}`);
  return v;
}

function bool(o: Obj, key: string, field: string, dflt: boolean): boolean {
  const v = o[key];
  if (v === undefined || v === null) return dflt;
  if (typeof v !== 'boolean') throw invalidArgument(field, `must be true or false, got ${typeName(v)}`);
  return v;
}

function obj(o: Obj, key: string, field: string, allowed: string[]): Obj {
  const v = o[key];
  if (v === undefined || v === null) return {};
  if (!isObj(v)) throw invalidArgument(field, `must be an object, got ${typeName(v)}`);
  for (const k of Object.keys(v)) if (!allowed.includes(k)) throw invalidArgument(`${field}.${k}`, 'is not a known field');
  return v;
}

export function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v;
}

export function validateName(name: string | undefined, field = 'name'): string {
  if (name === undefined) throw invalidArgument(field, 'is required');
  if (!NAME_RE.test(name)) {
    throw invalidArgument(field, 'must be 2–63 characters, start with a letter, contain only letters, digits, "-", "_" or spaces, and end with a letter or digit');
  }
  return name;
}

export function validateFolder(folder: string, field: string): string {
  if (!FOLDER_RE.test(folder)) throw invalidArgument(field, 'must be 1–64 characters: letters, digits, ".", "_" or "-"');
  return folder;
}

function variables(o: Obj, key: 'inputs' | 'outputs'): Variable[] {
  const v = o[key];
  if (v === undefined || v === null) throw invalidArgument(key, 'is required: declare at least one variable');
  if (!Array.isArray(v)) throw invalidArgument(key, `must be an array, got ${typeName(v)}`);
  if (v.length === 0) throw invalidArgument(key, 'must declare at least one variable');
  if (v.length > 100) throw invalidArgument(key, 'must declare at most 100 variables');
  const seen = new Set<string>();
  return v.map((item, i) => {
    const field = `${key}[${i}]`;
    if (!isObj(item)) throw invalidArgument(field, `must be an object {name, type}, got ${typeName(item)}`);
    for (const k of Object.keys(item)) if (!VARIABLE_FIELDS.includes(k)) throw invalidArgument(`${field}.${k}`, 'is not a known field');
    const name = str(item, 'name', `${field}.name`, { required: true, max: 128 })!;
    if (!IDENTIFIER_RE.test(name) || PY_KEYWORDS.has(name)) throw invalidArgument(`${field}.name`, `"${name}" is not a valid Python identifier`);
    if (seen.has(name)) throw invalidArgument(`${field}.name`, `"${name}" is declared twice`);
    seen.add(name);
    const type = variableType(item, field);
    const description = str(item, 'description', `${field}.description`, { max: 1024 });
    const out: Variable = { name, type, ...(description ? { description } : {}) };
    if (Object.hasOwn(item, 'default')) {
      if (key === 'outputs') throw invalidArgument(`${field}.default`, 'only inputs take a default');
      const p = compileCheck(parseType(type))(item.default);
      if (p) throw invalidArgument(`${field}.default`, `${p.path ? `at ${p.path} ` : ''}${p.message}`, { expected: type });
      out.default = item.default;
    }
    return out;
  });
}

const VARIABLE_FIELDS = ['name', 'type', 'description', 'default', 'dtype', 'shape'];

/**
 * A variable's type as its canonical string: `type` is a type string (`ndarray[float32,-1]`,
 * `list[int]`…), or `ndarray` with `dtype` and `shape` beside it (the YAML object form).
 */
function variableType(item: Obj, field: string): string {
  const type = str(item, 'type', `${field}.type`, { required: true, max: 256 })!;
  let text = type;
  if (item.dtype !== undefined || item.shape !== undefined) {
    if (type !== 'ndarray') throw invalidArgument(`${field}.dtype`, 'dtype and shape go with type: ndarray only');
    const dtype = item.dtype ?? 'any';
    if (typeof dtype !== 'string') throw invalidArgument(`${field}.dtype`, `must be a string, got ${typeName(dtype)}`);
    const shape = item.shape ?? [];
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d))) throw invalidArgument(`${field}.shape`, 'must be an array of lengths, -1 for any');
    text = `ndarray[${[dtype, ...shape].join(',')}]`;
    if (item.shape === undefined && dtype !== 'any') text = `ndarray[${dtype}]`;
  }
  try {
    return formatType(parseType(text));
  } catch (err) {
    if (err instanceof TypeSyntaxError) throw invalidArgument(`${field}.type`, err.message);
    throw err;
  }
}

function resources(o: Obj): Resources {
  const v = o.resources;
  if (v === undefined || v === null) return { preset: 'c1.4', ...RESOURCE_PRESETS['c1.4']! };
  if (typeof v === 'string') {
    const preset = RESOURCE_PRESETS[v];
    if (!preset) throw invalidArgument('resources', `unknown preset "${v}"; one of ${Object.keys(RESOURCE_PRESETS).join(', ')}`);
    return { preset: v, ...preset };
  }
  const r = obj(o, 'resources', 'resources', ['cores', 'memoryGb', 'gpus']);
  return {
    cores: num(r, 'cores', 'resources.cores', 0.1, 256, 1),
    memoryGb: num(r, 'memoryGb', 'resources.memoryGb', 0.1, 2048, 1),
    gpus: int(r, 'gpus', 'resources.gpus', 0, 16, 0),
  };
}

// a Swarm constraint: `<attribute> == <value>` or `!=` (node.id, node.hostname, node.role, node.labels.x, engine.labels.x…)
const CONSTRAINT_RE = /^[A-Za-z][A-Za-z0-9_.-]*\s*(==|!=)\s*[^\s=!][^=!]*$/;
const LABEL_RE = /^[A-Za-z][A-Za-z0-9_.-]{0,127}$/;

function placement(o: Obj): NodePlacement {
  const p = obj(o, 'placement', 'placement', ['constraints', 'spread']);
  let constraints: string[] = [];
  if (p.constraints !== undefined && p.constraints !== null) {
    if (!Array.isArray(p.constraints)) throw invalidArgument('placement.constraints', `must be an array of strings, got ${typeName(p.constraints)}`);
    if (p.constraints.length > 32) throw invalidArgument('placement.constraints', 'must list at most 32 constraints');
    constraints = p.constraints.map((c, i) => {
      if (typeof c !== 'string') throw invalidArgument(`placement.constraints[${i}]`, `must be a string, got ${typeName(c)}`);
      const t = c.trim();
      if (t.length > 256 || !CONSTRAINT_RE.test(t)) throw invalidArgument(`placement.constraints[${i}]`, `"${c}" is not a constraint: write ATTRIBUTE==VALUE or ATTRIBUTE!=VALUE, e.g. node.labels.zone==z1`);
      return t;
    });
  }
  const spread = str(p, 'spread', 'placement.spread', { max: 128 });
  if (spread !== undefined && !LABEL_RE.test(spread)) throw invalidArgument('placement.spread', `"${spread}" is not a machine label name (e.g. zone, or node.labels.zone)`);
  return { constraints, ...(spread ? { spread } : {}) };
}

function network(o: Obj): 'outbound' | 'none' {
  const v = str(o, 'network', 'network') ?? 'outbound';
  if (v !== 'outbound' && v !== 'none') throw invalidArgument('network', `must be "outbound" (the default) or "none", got "${v}"`);
  return v;
}

function capabilities(o: Obj): string[] {
  const v = o.capabilities;
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw invalidArgument('capabilities', `must be an array of capability names, got ${typeName(v)}`);
  const out = v.map((c, i) => {
    if (typeof c !== 'string') throw invalidArgument(`capabilities[${i}]`, `must be a string, got ${typeName(c)}`);
    const name = c.toUpperCase().replace(/^CAP_/, '');
    if (!(CAPABILITIES as readonly string[]).includes(name)) throw invalidArgument(`capabilities[${i}]`, `"${c}" is not allowed; one of ${CAPABILITIES.join(', ')}`);
    return name;
  });
  return [...new Set(out)];
}

function scaling(o: Obj): Scaling {
  const s = obj(o, 'scaling', 'scaling', ['minInstances', 'maxInstances', 'sessionsPerInstance', 'queueSize', 'scaleDownDelaySeconds', 'holdTimeout', 'targetUtilization', 'fork']);
  // 0: scale to zero when idle; calls are then held while an instance starts (docs/scaling.md)
  const minInstances = int(s, 'minInstances', 'scaling.minInstances', 0, 64, 1);
  const maxInstances = int(s, 'maxInstances', 'scaling.maxInstances', 1, 64, Math.max(1, minInstances));
  if (maxInstances < minInstances) throw invalidArgument('scaling.maxInstances', `must be ≥ minInstances (${minInstances}), got ${maxInstances}`);
  const sessionsPerInstance = int(s, 'sessionsPerInstance', 'scaling.sessionsPerInstance', 1, 256, 1);
  return {
    minInstances, maxInstances, sessionsPerInstance,
    queueSize: int(s, 'queueSize', 'scaling.queueSize', 0, 100_000, 64 * maxInstances * sessionsPerInstance),
    scaleDownDelaySeconds: num(s, 'scaleDownDelaySeconds', 'scaling.scaleDownDelaySeconds', 0, 86_400, 60),
    // stored only when given: older specs keep their exact shape (SCALING_DEFAULTS otherwise)
    ...(s.holdTimeout !== undefined && s.holdTimeout !== null ? { holdTimeout: num(s, 'holdTimeout', 'scaling.holdTimeout', 0.1, 3600, 60) } : {}),
    ...(s.targetUtilization !== undefined && s.targetUtilization !== null ? { targetUtilization: num(s, 'targetUtilization', 'scaling.targetUtilization', 0.1, 1, 1) } : {}),
    // stored only when off: absent means on (specs from before it existed, and the default)
    ...(bool(s, 'fork', 'scaling.fork', true) ? {} : { fork: false }),
  };
}

function rollout(o: Obj): RolloutSettings {
  const r = obj(o, 'rollout', 'rollout', ['maxSurge', 'maxUnavailable', 'deadlineSeconds']);
  const maxSurge = int(r, 'maxSurge', 'rollout.maxSurge', 0, 64, ROLLOUT_DEFAULTS.maxSurge);
  const maxUnavailable = int(r, 'maxUnavailable', 'rollout.maxUnavailable', 0, 64, ROLLOUT_DEFAULTS.maxUnavailable);
  if (maxSurge + maxUnavailable === 0) throw invalidArgument('rollout.maxSurge', 'maxSurge and maxUnavailable cannot both be 0: a rollout could never start a new instance');
  return { maxSurge, maxUnavailable, deadlineSeconds: num(r, 'deadlineSeconds', 'rollout.deadlineSeconds', 5, 86_400, ROLLOUT_DEFAULTS.deadlineSeconds) };
}

function port(o: Obj, key: string, field: string, dflt?: number): number {
  if ((o[key] === undefined || o[key] === null) && dflt === undefined) throw invalidArgument(field, 'is required');
  return int(o, key, field, 1, 65535, dflt ?? 0);
}

function healthcheck(o: Obj, kind: 'cell' | 'image', endpointPort: number): Healthcheck {
  if (kind === 'image') {
    if (o.healthcheck === undefined || o.healthcheck === null) {
      // no health check declared: ready once the endpoint port accepts connections
      return { protocol: 'endpoint', port: endpointPort, timeout: 1, interval: 1, failsThreshold: 3, passesThreshold: 1 };
    }
    const h = obj(o, 'healthcheck', 'healthcheck', ['protocol', 'port', 'path', 'service', 'timeout', 'interval', 'failsThreshold', 'passesThreshold']);
    const protocol = str(h, 'protocol', 'healthcheck.protocol') ?? 'http';
    if (protocol !== 'http' && protocol !== 'grpc') throw invalidArgument('healthcheck.protocol', `must be "http" or "grpc", got "${protocol}"`);
    if (protocol === 'http' && h.service !== undefined) throw invalidArgument('healthcheck.service', 'applies to grpc health checks only');
    if (protocol === 'grpc' && h.path !== undefined) throw invalidArgument('healthcheck.path', 'applies to http health checks only');
    const path = str(h, 'path', 'healthcheck.path', { max: 2048 }) ?? '/';
    if (!path.startsWith('/')) throw invalidArgument('healthcheck.path', 'must start with "/"');
    return {
      protocol, port: port(h, 'port', 'healthcheck.port', endpointPort),
      ...(protocol === 'http' ? { path } : { service: str(h, 'service', 'healthcheck.service', { max: 256 }) ?? '' }),
      timeout: num(h, 'timeout', 'healthcheck.timeout', 0.05, 60, 1),
      interval: num(h, 'interval', 'healthcheck.interval', 0.05, 600, 1),
      failsThreshold: int(h, 'failsThreshold', 'healthcheck.failsThreshold', 1, 100, 3),
      passesThreshold: int(h, 'passesThreshold', 'healthcheck.passesThreshold', 1, 100, 1),
    };
  }
  const h = obj(o, 'healthcheck', 'healthcheck', ['timeout', 'interval', 'failsThreshold', 'passesThreshold']);
  return {
    protocol: 'worker',
    timeout: num(h, 'timeout', 'healthcheck.timeout', 0.05, 60, 2),
    interval: num(h, 'interval', 'healthcheck.interval', 0.05, 600, 1),
    failsThreshold: int(h, 'failsThreshold', 'healthcheck.failsThreshold', 1, 100, 3),
    passesThreshold: int(h, 'passesThreshold', 'healthcheck.passesThreshold', 1, 100, 1),
  };
}

/**
 * Checks a node spec. A cell node's `checkpointId` is returned as given (id or pinned
 * name) and an image node's `passwordSecret` as a name: the caller resolves them.
 */
export function parseNodeSpec(body: unknown, ctx: SpecContext): NodeSpec {
  if (!isObj(body)) throw invalidArgument('body', `must be a JSON object, got ${typeName(body)}`);
  const kind = str(body, 'kind', 'kind') ?? (body.image !== undefined ? 'image' : 'cell');
  if (kind !== 'cell' && kind !== 'image') throw invalidArgument('kind', `must be "cell" or "image", got "${kind}"`);
  for (const k of Object.keys(body)) {
    if (!KIND_FIELDS[kind].has(k)) throw invalidArgument(k, `is not a known field of ${kind} nodes`);
  }

  const name = validateName(str(body, 'name', 'name'));
  const description = str(body, 'description', 'description', { max: 1024 }) ?? '';
  const folderId = validateFolder(str(body, 'folderId', 'folderId') ?? ctx.defaultFolder, 'folderId');
  const projectId = validateFolder(str(body, 'projectId', 'projectId') ?? ctx.defaultProject, 'projectId');

  const perms = obj(body, 'permissions', 'permissions', ['folders']);
  let folders = [folderId];
  if (perms.folders !== undefined) {
    if (!Array.isArray(perms.folders)) throw invalidArgument('permissions.folders', `must be an array of folder ids, got ${typeName(perms.folders)}`);
    if (perms.folders.length > 100) throw invalidArgument('permissions.folders', 'must list at most 100 folders');
    folders = perms.folders.map((f, i) => {
      if (typeof f !== 'string') throw invalidArgument(`permissions.folders[${i}]`, `must be a string, got ${typeName(f)}`);
      return validateFolder(f, `permissions.folders[${i}]`);
    });
    if (folders.length === 0) throw invalidArgument('permissions.folders', 'must list at least one folder');
  }
  const common: Omit<NodeSpecCommon, 'healthcheck'> = {
    name, description, folderId, projectId,
    permissions: { folders: [...new Set(folders)] },
    resources: resources(body),
    scaling: scaling(body),
    // stored only when given: specs without it keep their exact shape (outbound is the default)
    ...(body.network !== undefined && body.network !== null ? { network: network(body) } : {}),
    ...(body.rollout !== undefined && body.rollout !== null ? { rollout: rollout(body) } : {}),
    ...(body.placement !== undefined && body.placement !== null ? { placement: placement(body) } : {}),
  };
  return kind === 'cell' ? parseCell(body, common, ctx) : parseImage(body, common);
}

function parseCell(body: Obj, common: Omit<NodeSpecCommon, 'healthcheck'>, ctx: SpecContext): CellNodeSpec {
  const checkpointId = str(body, 'checkpointId', 'checkpointId', { required: true, max: 128 })!;
  const inputs = variables(body, 'inputs');
  const outputs = variables(body, 'outputs');
  const env = obj(body, 'environment', 'environment', ['python', 'image', 'username', 'passwordSecret']);
  const python = str(env, 'python', 'environment.python', { max: 4096 }) ?? ctx.defaultPython;
  const image = str(env, 'image', 'environment.image', { max: 512 });
  if (image !== undefined && !IMAGE_RE.test(image)) throw invalidArgument('environment.image', `"${image}" is not a valid image reference`);
  const username = str(env, 'username', 'environment.username', { max: 256 });
  const passwordSecret = str(env, 'passwordSecret', 'environment.passwordSecret', { max: 128 });
  return {
    kind: 'cell', ...common,
    healthcheck: healthcheck(body, 'cell', 0),
    checkpointId, inputs, outputs,
    environment: { python, ...(image ? { image } : {}), ...(username ? { username } : {}), ...(passwordSecret ? { passwordSecret } : {}) },
    timeout: num(body, 'timeout', 'timeout', 0.1, 3600, 60),
  };
}

function parseImage(body: Obj, common: Omit<NodeSpecCommon, 'healthcheck'>): ImageNodeSpec {
  if (common.network === 'none') throw invalidArgument('network', 'image nodes are reached over the network; "none" applies to cell nodes only');
  const image = str(body, 'image', 'image', { required: true, max: 512 })!;
  if (!IMAGE_RE.test(image)) throw invalidArgument('image', `"${image}" is not a valid image reference`);
  const username = str(body, 'username', 'username', { max: 256 });
  const passwordSecret = str(body, 'passwordSecret', 'passwordSecret', { max: 128 });
  if (passwordSecret && !username) throw invalidArgument('username', 'is required with passwordSecret');
  const envObj = obj(body, 'env', 'env', Object.keys(isObj(body.env) ? body.env : {}));
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(envObj)) {
    if (!ENV_NAME_RE.test(k)) throw invalidArgument(`env.${k}`, 'is not a valid environment variable name');
    if (typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean') throw invalidArgument(`env.${k}`, `must be a string, got ${typeName(v)}`);
    env[k] = String(v);
  }
  if (body.endpoint === undefined || body.endpoint === null) throw invalidArgument('endpoint', 'is required: {port, protocol}');
  const e = obj(body, 'endpoint', 'endpoint', ['port', 'protocol', 'timeout', 'idleTimeout']);
  const protocol = str(e, 'protocol', 'endpoint.protocol') ?? 'http';
  if (protocol !== 'http' && protocol !== 'http2' && protocol !== 'grpc') throw invalidArgument('endpoint.protocol', `must be http, http2 or grpc, got "${protocol}"`);
  const endpoint = {
    port: port(e, 'port', 'endpoint.port'),
    protocol: protocol as ImageNodeSpec['endpoint']['protocol'],
    timeout: num(e, 'timeout', 'endpoint.timeout', 0.1, 86_400, 15),
    idleTimeout: num(e, 'idleTimeout', 'endpoint.idleTimeout', 0.1, 86_400, 300),
  };
  let telemetry: ImageNodeSpec['telemetry'];
  if (body.telemetry !== undefined && body.telemetry !== null) {
    const t = obj(body, 'telemetry', 'telemetry', ['path', 'port', 'format']);
    const format = str(t, 'format', 'telemetry.format') ?? 'prometheus';
    if (format !== 'prometheus') throw invalidArgument('telemetry.format', `must be "prometheus", got "${format}"`);
    const path = str(t, 'path', 'telemetry.path', { max: 2048 }) ?? '/metrics';
    if (!path.startsWith('/')) throw invalidArgument('telemetry.path', 'must start with "/"');
    telemetry = { path, port: port(t, 'port', 'telemetry.port', endpoint.port), format: 'prometheus' };
  }
  return {
    kind: 'image', ...common,
    healthcheck: healthcheck(body, 'image', endpoint.port),
    image, ...(username ? { username } : {}), ...(passwordSecret ? { passwordSecret } : {}),
    env, endpoint, ...(telemetry ? { telemetry } : {}),
    ...(body.capabilities !== undefined ? { capabilities: capabilities(body) } : {}),
  };
}
