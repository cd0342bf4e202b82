// The control API's request and response schemas (TypeBox), one per concept, registered once
// with fastify.addSchema and referenced by $ref from every route, so /openapi.json carries them
// as components and stays small.
//
// They DOCUMENT the API and are CHECKED against it (test/api-schemas.test.ts validates every real
// answer against its route's schema, test/unit/api-schemas.test.ts the node spec's defaults and
// bounds against parseNodeSpec); they do not change what the API does:
// - the hand-written parsers (core/node-spec.ts, core/alias-spec.ts, api/request.ts…) stay the one
//   validator, because they give the stable error codes naming the field; so fastify's own
//   validation is switched off (a validator that accepts everything);
// - answers are serialised with JSON.stringify, not fast-json-stringify, which would silently drop
//   every field a schema does not list (fields are being added in parallel).
// The schemas are open (extra fields allowed) for clients; the test closes them, so a field the
// code returns but no schema declares fails there.
import type { FastifyInstance, FastifySchema } from 'fastify';
import { Type, type TSchema } from '@sinclair/typebox';
import { ERRORS } from '../core/errors.js';
import { CAPABILITIES, RESOURCE_PRESETS } from '../core/node-spec.js';
import { INSTANCE_STATUSES, NODE_STATUSES, ROLES, ROLLOUT_DEFAULTS } from '../core/types.js';
import { DEFAULT_QUOTA } from '../folders/quotas.js';
import type { UsageGroupBy } from '../usage/store.js';
import { MAX_TAIL_LINES } from '../runtimes/log-file.js';
import { MAX_AUTOSAVE_KEEP } from '../checkpoints/service.js';

const StringEnum = (values: readonly string[], opts: Record<string, unknown> = {}): TSchema =>
  Type.Unsafe<string>({ type: 'string', enum: [...values], ...opts });
const Nullable = <T extends TSchema>(t: T, opts: Record<string, unknown> = {}): TSchema => Type.Union([t, Type.Null()], opts);
const Time = (description = 'ISO 8601 time (UTC)'): TSchema => Type.String({ format: 'date-time', description });
const Id = (description: string): TSchema => Type.String({ description });
const Int = (min: number, max: number, dflt?: number, description?: string): TSchema =>
  Type.Integer({ minimum: min, maximum: max, ...(dflt !== undefined ? { default: dflt } : {}), ...(description ? { description } : {}) });
const Num = (min: number, max: number, dflt?: number, description?: string): TSchema =>
  Type.Number({ minimum: min, maximum: max, ...(dflt !== undefined ? { default: dflt } : {}), ...(description ? { description } : {}) });
const Opt = Type.Optional;
const Deleted = Type.Literal(true);
const USAGE_GROUP_BY: readonly UsageGroupBy[] = ['node', 'folder', 'day'];

// the names the parsers accept (core/node-spec.ts, core/alias-spec.ts)
const FOLDER_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$';
const NAME_PATTERN = '^[A-Za-zА-Яа-яЁё][A-Za-zА-Яа-яЁё0-9_\\- ]{0,61}[A-Za-zА-Яа-яЁё0-9]$';
const ALIAS_NAME_PATTERN = '^[A-Za-z][A-Za-z0-9_.-]{0,77}[A-Za-z0-9]$';
const Folder = (description = 'a folder id'): TSchema => Type.String({ pattern: FOLDER_PATTERN, description });
const Name = (description: string): TSchema => Type.String({ pattern: NAME_PATTERN, minLength: 2, maxLength: 63, description });
const VARIABLE_TYPE_NAMES = 'a type string (core/var-types.ts): int, float, str, bool, list, dict, bytes, any, list[T], dataframe, or ndarray[dtype,d0,d1,…] (dtype any or a numpy dtype; -1: any length on that axis; ndarray alone: any tensor)';
const VARIABLE_DEFAULT = 'inputs only: the value a call that leaves the input out gets; it must fit `type`';

// ---------------------------------------------------------------------------------------------
// errors and small answers

export const ErrorBody = Type.Object({
  code: StringEnum(Object.keys(ERRORS), { description: 'stable error code (src/core/errors.ts)' }),
  message: Type.String(),
  details: Type.Record(Type.String(), Type.Unknown(), { description: 'what the error is about; `field` names the offending request field' }),
}, { $id: 'Error', description: 'Every error: {code, message, details}' });

export const Health = Type.Object({ status: Type.Literal('ok') }, { $id: 'Health' });

// ---------------------------------------------------------------------------------------------
// tokens

const Role = StringEnum(ROLES, { description: 'admin ⊇ editor ⊇ (executor, viewer)' });
const tokenProps = {
  id: Id('token id'),
  name: Type.String(),
  roles: Type.Record(Type.String(), Role, { description: 'role per folder id; "*" means every folder' }),
  folders: Type.Array(Type.String()),
  admin: Type.Boolean({ description: 'admin of every folder ("*": admin)' }),
  createdAt: Time(),
};
export const Token = Type.Object(tokenProps, { $id: 'Token', description: 'A token (its secret is shown only once, when it is created)' });
export const Whoami = Type.Object({ ...tokenProps, defaultFolder: Type.String({ description: 'the folder requests act in when they name none' }) }, { $id: 'Whoami' });
export const TokenCreated = Type.Object({ ...tokenProps, token: Type.String({ description: 'the bearer token: shown here only, stored as its sha256' }) }, { $id: 'TokenCreated' });
export const TokenList = Type.Object({ tokens: Type.Array(Type.Ref(Token)) }, { $id: 'TokenList' });
export const TokenDeleted = Type.Object({ id: Type.String(), deleted: Deleted }, { $id: 'TokenDeleted' });
export const TokenCreate = Type.Object({
  name: Opt(Type.String({ maxLength: 63, default: 'token' })),
  roles: Opt(Type.Record(Type.String(), Role, { description: '{folderId or "*": role}; or send folders and role' })),
  folders: Opt(Type.Array(Type.String(), { minItems: 1, maxItems: 100, description: 'folder ids (or "*"), all given `role`' })),
  role: Opt(StringEnum(ROLES, { default: 'editor' })),
}, { $id: 'TokenCreate', additionalProperties: false, description: '{name, roles: {folder: role}} or {name, folders, role}; at most 100 folders' });

// ---------------------------------------------------------------------------------------------
// checkpoints

const Package = Type.Object({ name: Type.String(), version: Type.String() });
// the upload's metadata line may carry these (checkpoints/service.ts parseCell, parseAutosave)
export const CheckpointCell = Type.Object({
  number: Nullable(Type.Integer({ minimum: 0 }), { description: 'the cell\'s execution count, if the kernel had one' }),
  code: Type.String({ maxLength: 1024 * 1024, description: 'the cell\'s source' }),
}, { $id: 'CheckpointCell', description: 'The kernel cell a snapshot was taken after' });
export const CheckpointAutosave = Type.Object({
  session: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$', description: 'the kernel session' }),
  keep: Int(1, MAX_AUTOSAVE_KEEP, undefined, 'the session\'s unpinned autosaves kept (older ones are deleted)'),
}, { $id: 'CheckpointAutosave', description: 'An autosave: unpinned (no name), the session\'s last `keep` kept' });
const checkpointProps = {
  id: Id('checkpoint id'),
  name: Nullable(Type.String(), { description: 'pinned when named' }),
  pinned: Type.Boolean(),
  projectId: Type.String(),
  folderId: Type.String(),
  source: StringEnum(['script', 'notebook', 'kernel']),
  code: Type.String({ description: 'the serving cell' }),
  cells: Type.Array(Type.String(), { description: 'every cell that was run (empty for kernel snapshots)' }),
  servingCell: Type.Integer(),
  python: Type.String({ description: 'Python version' }),
  executable: Type.String(),
  packages: Type.Array(Package, { description: 'what the interpreter had installed' }),
  requires: Type.Array(Package, { description: 'what the saved state needs' }),
  variables: Type.Array(Type.Object({ name: Type.String(), type: Type.String() })),
  skipped: Type.Array(Type.Object({ name: Type.String(), type: Type.String(), reason: Type.String() }), { description: 'names that could not be saved' }),
  cell: Opt(Nullable(Type.Ref(CheckpointCell), { description: 'live-kernel checkpoints: the kernel cell that made it' })),
  autosave: Opt(Nullable(Type.Ref(CheckpointAutosave), { description: 'recorded by %berth_autocheckpoint: unpinned, the session\'s most recent `keep` kept' })),
  size: Type.Integer({ minimum: 0, description: 'bytes' }),
  sha256: Type.String(),
  createdAt: Time(),
  updatedAt: Time(),
  createdBy: Type.String(),
};
export const Checkpoint = Type.Object(checkpointProps, { $id: 'Checkpoint' });
export const CheckpointRun = Type.Object({ ...checkpointProps, log: Type.String({ description: 'what the cells printed' }) }, { $id: 'CheckpointRun' });
export const CheckpointList = Type.Object({ checkpoints: Type.Array(Type.Ref(Checkpoint)) }, { $id: 'CheckpointList' });
export const CheckpointDeleted = Type.Object({ id: Type.String(), deleted: Deleted }, { $id: 'CheckpointDeleted' });
export const CheckpointCreate = Type.Object({
  script: Opt(Type.String({ description: 'Python source, cells split by "# %%"' })),
  notebook: Opt(Type.Unknown({ description: 'a Jupyter .ipynb (JSON object or its text); code cells run, IPython-only lines are skipped' })),
  cells: Opt(Type.Array(Type.String(), { description: 'the cells, in order' })),
  servingCell: Opt(Type.Integer({ description: 'index of the serving cell (negative: from the end); default the last' })),
  name: Opt(Type.String({ pattern: NAME_PATTERN, description: 'pins the checkpoint under this name' })),
  python: Opt(Type.String({ maxLength: 4096, description: 'an interpreter the server allows (berth up --allow-python)' })),
  folderId: Opt(Folder('default: the token\'s first folder')),
  projectId: Opt(Folder('a project id')),
}, { $id: 'CheckpointCreate', additionalProperties: false, description: 'One of script, notebook or cells' });
export const CheckpointUpdate = Type.Object({
  name: Nullable(Type.String({ pattern: NAME_PATTERN }), { description: 'a name pins or renames; null unpins' }),
}, { $id: 'CheckpointUpdate', additionalProperties: false });

// ---------------------------------------------------------------------------------------------
// nodes: the spec as sent (with the parser's defaults and bounds) and as stored and shown

const VariableIn = Type.Object({
  name: Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$', maxLength: 128, description: 'a Python identifier' }),
  type: Type.String({ maxLength: 256, description: `${VARIABLE_TYPE_NAMES}; stored in canonical form` }),
  description: Opt(Type.String({ maxLength: 1024 })),
  default: Opt(Type.Unknown({ description: VARIABLE_DEFAULT })),
  dtype: Opt(Type.String({ description: 'with type: ndarray (the YAML object form): the dtype; default any' })),
  shape: Opt(Type.Array(Type.Integer({ minimum: -1 }), { description: 'with type: ndarray: the lengths, -1 for any; default any rank' })),
}, { additionalProperties: false });
const Variables = (what: string): TSchema => Type.Array(VariableIn, { minItems: 1, maxItems: 100, description: what });
const presets = Object.keys(RESOURCE_PRESETS);
const ResourcesIn = Type.Union([
  StringEnum(presets, { description: `a preset: ${presets.map((p) => `${p} (${RESOURCE_PRESETS[p]!.cores} cores, ${RESOURCE_PRESETS[p]!.memoryGb} GB, ${RESOURCE_PRESETS[p]!.gpus} GPU)`).join(', ')}` }),
  Type.Object({ cores: Opt(Num(0.1, 256, 1)), memoryGb: Opt(Num(0.1, 2048, 1)), gpus: Opt(Int(0, 16, 0)) }, { additionalProperties: false }),
], { default: 'c1.4' });
const ScalingIn = Type.Object({
  minInstances: Opt(Int(0, 64, 1, '0: scale to zero when idle, calls held while an instance starts (docs/scaling.md)')),
  maxInstances: Opt(Int(1, 64, undefined, 'default: minInstances, at least 1')),
  sessionsPerInstance: Opt(Int(1, 256, 1, 'calls one instance serves at once')),
  queueSize: Opt(Int(0, 100_000, undefined, 'calls that may wait for a session before 503; default 64 × maxInstances × sessionsPerInstance')),
  scaleDownDelaySeconds: Opt(Num(0, 86_400, 60, "the autoscaler's stabilisation window; with minInstances 0 also the idle time before scaling to zero")),
  // no documented default: absent is stored as absent (SCALING_DEFAULTS apply), as for fork
  holdTimeout: Opt(Num(0.1, 3600, undefined, 'minInstances 0: seconds a call is held while an instance starts, then 503 NODE_UNAVAILABLE (absent: 60)')),
  targetUtilization: Opt(Num(0.1, 1, undefined, 'calls in flight per session the autoscaler aims for (absent: 1)')),
  fork: Opt(Type.Boolean({ description: 'cell nodes, process runtime: fork instances from a template that restored the checkpoint once (absent: true); false: a fresh process each' })),
}, { additionalProperties: false });
const RolloutIn = Type.Object({
  maxSurge: Opt(Int(0, 64, ROLLOUT_DEFAULTS.maxSurge)),
  maxUnavailable: Opt(Int(0, 64, ROLLOUT_DEFAULTS.maxUnavailable, 'maxSurge + maxUnavailable ≥ 1')),
  deadlineSeconds: Opt(Num(5, 86_400, ROLLOUT_DEFAULTS.deadlineSeconds)),
}, { additionalProperties: false, description: 'how a new revision replaces the instances' });
const commonIn = {
  name: Name('node name, 2–63 characters'),
  description: Opt(Type.String({ maxLength: 1024, default: '' })),
  folderId: Opt(Folder('default: the token\'s first folder')),
  projectId: Opt(Folder('a project id')),
  permissions: Opt(Type.Object({ folders: Opt(Type.Array(Folder(), { minItems: 1, maxItems: 100, description: 'folders whose tokens may call it; default its own' })) }, { additionalProperties: false })),
  resources: Opt(ResourcesIn),
  scaling: Opt(ScalingIn),
  network: Opt(StringEnum(['outbound', 'none'], { default: 'outbound', description: 'none: no network at all (cell nodes only)' })),
  rollout: Opt(RolloutIn),
  placement: Opt(Type.Object({
    constraints: Opt(Type.Array(Type.String({ maxLength: 256 }), { maxItems: 32, description: 'Swarm constraints, e.g. node.labels.zone==z1' })),
    spread: Opt(Type.String({ maxLength: 128, description: 'a machine label to spread instances over, e.g. zone' })),
  }, { additionalProperties: false, description: 'cluster runtimes (swarm) only: where instances may run' })),
};
const checksIn = {
  timeout: Opt(Num(0.05, 60, undefined, 'seconds')),
  interval: Opt(Num(0.05, 600, 1, 'seconds')),
  failsThreshold: Opt(Int(1, 100, 3)),
  passesThreshold: Opt(Int(1, 100, 1)),
};
export const CellNodeSpecIn = Type.Object({
  kind: Opt(Type.Literal('cell', { description: 'default: image when `image` is given, else cell' })),
  ...commonIn,
  checkpointId: Type.String({ maxLength: 128, description: 'a pinned checkpoint of the node\'s folder: id or name' }),
  inputs: Variables('input variables'),
  outputs: Variables('output variables'),
  environment: Opt(Type.Object({
    python: Opt(Type.String({ maxLength: 4096, description: 'default: the server\'s interpreter' })),
    image: Opt(Type.String({ maxLength: 512, description: 'kernel image (container runtimes)' })),
    username: Opt(Type.String({ maxLength: 256 })),
    passwordSecret: Opt(Type.String({ maxLength: 128, description: 'a secret of the node\'s folder' })),
  }, { additionalProperties: false })),
  healthcheck: Opt(Type.Object({ ...checksIn, timeout: Opt(Num(0.05, 60, 2, 'seconds')) }, { additionalProperties: false, description: 'the worker\'s ping' })),
  timeout: Opt(Num(0.1, 3600, 60, 'per-call timeout, seconds')),
}, { $id: 'CellNodeSpecIn', additionalProperties: false, description: 'A cell node as sent: runs the serving cell of a checkpoint' });
export const ImageNodeSpecIn = Type.Object({
  kind: Opt(Type.Literal('image')),
  ...commonIn,
  image: Type.String({ maxLength: 512, description: 'an image reference [registry/]name[:tag][@sha256:…]' }),
  username: Opt(Type.String({ maxLength: 256, description: 'registry user (required with passwordSecret)' })),
  passwordSecret: Opt(Type.String({ maxLength: 128, description: 'a secret of the node\'s folder' })),
  env: Opt(Type.Record(Type.String(), Type.Union([Type.String(), Type.Number(), Type.Boolean()]), { description: 'environment variables (values become strings)' })),
  capabilities: Opt(Type.Array(StringEnum(CAPABILITIES), { description: 'Linux capabilities kept (all others are dropped); CAP_ prefix and case ignored' })),
  endpoint: Type.Object({
    port: Int(1, 65535),
    protocol: Opt(StringEnum(['http', 'http2', 'grpc'], { default: 'http' })),
    timeout: Opt(Num(0.1, 86_400, 15, 'seconds a call may take')),
    idleTimeout: Opt(Num(0.1, 86_400, 300, 'seconds a connection may stay silent')),
  }, { additionalProperties: false }),
  telemetry: Opt(Type.Object({
    path: Opt(Type.String({ maxLength: 2048, default: '/metrics' })),
    port: Opt(Int(1, 65535, undefined, 'default: endpoint.port')),
    format: Opt(Type.Literal('prometheus')),
  }, { additionalProperties: false })),
  healthcheck: Opt(Type.Object({
    protocol: Opt(StringEnum(['http', 'grpc'], { default: 'http' })),
    port: Opt(Int(1, 65535, undefined, 'default: endpoint.port')),
    path: Opt(Type.String({ maxLength: 2048, default: '/', description: 'http only' })),
    service: Opt(Type.String({ maxLength: 256, default: '', description: 'grpc only' })),
    ...checksIn, timeout: Opt(Num(0.05, 60, 1, 'seconds')),
  }, { additionalProperties: false, description: 'absent: ready once the endpoint port accepts connections' })),
}, { $id: 'ImageNodeSpecIn', additionalProperties: false, description: 'An image node as sent: a container serving HTTP, HTTP/2 or gRPC' });
export const NodeSpecIn = Type.Union([Type.Ref(CellNodeSpecIn), Type.Ref(ImageNodeSpecIn)], { $id: 'NodeSpecIn', description: 'A node spec (POST /v1/nodes, berth apply)' });
export const NodePatch = Type.Object({}, {
  $id: 'NodePatch', additionalProperties: true,
  description: 'A JSON merge patch (RFC 7386) over the node spec as sent (NodeSpecIn): objects merge key by key, null removes a key; the result is validated as on create. kind and folderId cannot change.',
});
export const RollbackRequest = Type.Object({ revision: Opt(Type.Integer({ minimum: 1, description: 'default: where the running rollout started, else the revision before the current' })) }, { $id: 'RollbackRequest', additionalProperties: false });

// as stored and shown: every default filled in
const Transition = (statuses: readonly string[]): TSchema => Type.Object({ status: StringEnum(statuses), at: Time(), reason: Opt(Type.String()) });
const Variable = Type.Object({
  name: Type.String(), type: Type.String({ description: `${VARIABLE_TYPE_NAMES}, in canonical form` }), description: Opt(Type.String()),
  default: Opt(Type.Unknown({ description: VARIABLE_DEFAULT })),
});
const checks = { timeout: Type.Number(), interval: Type.Number(), failsThreshold: Type.Integer(), passesThreshold: Type.Integer() };
const specProps = {
  name: Type.String(),
  description: Type.String(),
  folderId: Type.String(),
  projectId: Type.String(),
  permissions: Type.Object({ folders: Type.Array(Type.String()) }),
  resources: Type.Object({ preset: Opt(Type.String()), cores: Type.Number(), memoryGb: Type.Number(), gpus: Type.Integer() }),
  scaling: Type.Object({ minInstances: Type.Integer(), maxInstances: Type.Integer(), sessionsPerInstance: Type.Integer(), queueSize: Type.Integer(), scaleDownDelaySeconds: Type.Number(), holdTimeout: Opt(Type.Number({ description: 'absent: 60' })), targetUtilization: Opt(Type.Number({ description: 'absent: 1' })), fork: Opt(Type.Boolean({ description: 'absent: true' })) }),
  network: Opt(StringEnum(['outbound', 'none'])),
  rollout: Opt(Type.Object({ maxSurge: Type.Integer(), maxUnavailable: Type.Integer(), deadlineSeconds: Type.Number() }, { description: 'absent: the defaults' })),
  placement: Opt(Type.Object({ constraints: Type.Array(Type.String()), spread: Opt(Type.String()) })),
};
const cellSpecProps = {
  kind: Type.Literal('cell'),
  ...specProps,
  healthcheck: Type.Object({ protocol: Type.Literal('worker'), ...checks }),
  checkpointId: Type.String({ description: 'the checkpoint\'s id' }),
  inputs: Type.Array(Variable),
  outputs: Type.Array(Variable),
  environment: Type.Object({ python: Type.String(), image: Opt(Type.String()), username: Opt(Type.String()), passwordSecret: Opt(Type.String()) }),
  timeout: Type.Number(),
};
const imageSpecProps = {
  kind: Type.Literal('image'),
  ...specProps,
  healthcheck: Type.Object({ protocol: StringEnum(['http', 'grpc', 'endpoint']), port: Opt(Type.Integer()), path: Opt(Type.String()), service: Opt(Type.String()), ...checks }),
  image: Type.String(),
  username: Opt(Type.String()),
  passwordSecret: Opt(Type.String()),
  env: Type.Record(Type.String(), Type.String()),
  capabilities: Opt(Type.Array(Type.String())),
  endpoint: Type.Object({ port: Type.Integer(), protocol: StringEnum(['http', 'http2', 'grpc']), timeout: Type.Number(), idleTimeout: Type.Number() }),
  telemetry: Opt(Type.Object({ path: Type.String(), port: Type.Integer(), format: Type.Literal('prometheus') })),
};
export const CellNodeSpec = Type.Object(cellSpecProps, { $id: 'CellNodeSpec', description: 'A cell node spec as stored' });
export const ImageNodeSpec = Type.Object(imageSpecProps, { $id: 'ImageNodeSpec', description: 'An image node spec as stored' });

export const Instance = Type.Object({
  id: Type.String(),
  nodeId: Type.String(),
  revision: Type.Integer({ description: 'the node revision it runs' }),
  status: StringEnum(INSTANCE_STATUSES),
  endpoint: Nullable(Type.String()),
  pid: Nullable(Type.Integer()),
  restarts: Type.Integer(),
  lastError: Nullable(Type.String()),
  inFlight: Type.Integer({ description: 'calls running on it now' }),
  createdAt: Time(),
  updatedAt: Time(),
  transitions: Type.Array(Transition(INSTANCE_STATUSES)),
}, { $id: 'Instance' });
export const Rollout = Type.Object({
  revision: Type.Integer(),
  from: Type.Integer(),
  state: StringEnum(['Progressing', 'Complete', 'Failed']),
  reason: Opt(Type.String()),
  startedAt: Time(),
  finishedAt: Opt(Time()),
  updated: Opt(Type.Integer({ description: 'instances of the new revision (while the node runs)' })),
  outdated: Opt(Type.Integer({ description: 'instances of older revisions still running' })),
  healthy: Opt(Type.Integer({ description: 'Healthy instances of the new revision' })),
}, { $id: 'Rollout', description: 'The last rollout: to `revision` from `from`' });
const nodeViewProps = {
  id: Id('node id'),
  status: StringEnum(NODE_STATUSES),
  revision: Type.Integer({ description: 'what new instances run' }),
  rollout: Nullable(Type.Ref(Rollout)),
  createdAt: Time(),
  updatedAt: Time(),
  createdBy: Type.String(),
  transitions: Type.Array(Transition(NODE_STATUSES)),
  instances: Type.Array(Type.Ref(Instance)),
  queued: Type.Integer({ description: 'calls waiting for a free session' }),
  scaledToZero: Type.Boolean({ description: 'minInstances 0 and no instance running: calls are held while one starts' }),
  relatedAliases: Type.Array(Type.String(), { description: 'aliases that route or mirror to it' }),
  warnings: Type.Array(Type.String(), { description: 'resources this runtime does not enforce; why instances are not forked' }),
  changed: Opt(Type.Array(Type.String(), { description: 'PATCH answers only: the top-level fields that changed' })),
};
export const CellNode = Type.Object({ ...cellSpecProps, ...nodeViewProps }, { $id: 'CellNode', description: 'A cell node: its spec, status, instances and rollout' });
export const ImageNode = Type.Object({ ...imageSpecProps, ...nodeViewProps }, { $id: 'ImageNode', description: 'An image node: its spec, status, instances and rollout' });
export const Node = Type.Union([Type.Ref(CellNode), Type.Ref(ImageNode)], { $id: 'Node' });
export const NodeList = Type.Object({ nodes: Type.Array(Type.Ref(Node)) }, { $id: 'NodeList' });
export const NodeDeleted = Type.Object({ id: Type.String(), deleted: Deleted }, { $id: 'NodeDeleted' });
export const NodeUpdatePlan = Type.Object({
  dryRun: Type.Literal(true),
  nodeId: Type.String(),
  changed: Type.Array(Type.String(), { description: 'top-level fields that would change' }),
  rollout: Type.Boolean({ description: 'whether the change makes a new revision rolled out' }),
  revision: Type.Integer({ description: 'the revision the node would be at' }),
  diff: Type.Array(Type.Object({ field: Type.String(), from: Type.Unknown(), to: Type.Unknown() }), { description: 'every leaf that differs, by dotted path' }),
}, { $id: 'NodeUpdatePlan', description: '?dryRun=true: what would change; nothing changed' });
export const NodeRevisions = Type.Object({
  nodeId: Type.String(),
  current: Type.Integer(),
  revisions: Type.Array(Type.Object({
    revision: Type.Integer(),
    current: Type.Boolean(),
    cause: Type.String({ description: 'created, update (fields), rollback to N' }),
    createdAt: Time(),
    createdBy: Type.String(),
    runs: Type.Union([Type.Object({ checkpointId: Type.String() }), Type.Object({ image: Type.String() })]),
    changed: Type.Array(Type.String(), { description: 'fields that restart instances, against the revision before' }),
  }), { description: 'newest first, the last 20' }),
}, { $id: 'NodeRevisions' });
export const NodeEvents = Type.Object({
  nodeId: Type.String(),
  events: Type.Array(Type.Object({
    id: Type.Integer({ description: 'page with ?before=ID' }),
    nodeId: Type.String(),
    at: Time(),
    type: Type.String({ description: 'wake, scale-up, scale-down, scale-to-zero, start-failed, rollout-started, rollout-complete, rollout-failed, suspended, resumed' }),
    reason: Type.String({ description: 'in words' }),
    details: Type.Record(Type.String(), Type.Unknown(), { description: 'the numbers behind it (from, to, instanceId…)' }),
  }), { description: 'newest first' }),
}, { $id: 'NodeEvents' });
export const NodeLogs = Type.Object({
  nodeId: Type.String(),
  logs: Type.Array(Type.Object({ instanceId: Type.String(), text: Type.String({ description: 'the last `lines` lines' }) })),
}, { $id: 'NodeLogs' });

// ---------------------------------------------------------------------------------------------
// aliases

const Backend = Type.Object({ nodeId: Type.String(), weight: Type.Number({ minimum: 0, maximum: 1_000_000, description: 'greater than 0' }) });
const aliasSpecProps = {
  name: Type.String(),
  description: Type.String(),
  folderId: Type.String(),
  projectId: Type.String(),
  backends: Type.Array(Backend),
  executionAcl: Type.Object({ folders: Type.Array(Type.String()), isPublic: Type.Boolean() }),
  proxyMetadata: Type.Object({ headers: Type.Array(Type.Object({ name: Type.String(), value: Type.String() })) }),
  sticky: Nullable(Type.Object({ header: Type.String() })),
  mirror: Nullable(Type.Object({ nodeId: Type.String(), percent: Type.Number() })),
};
const MsOrNull = Nullable(Type.Number(), { description: 'ms; null before the first call' });
export const MirrorStatus = Type.Object({
  shadowNodeId: Type.String(), percent: Type.Number(), sent: Type.Integer(), compared: Type.Integer(), differing: Type.Integer(),
  differingRatio: Type.Number(), shadowErrors: Type.Integer(), skipped: Type.Integer(),
  primaryP50Ms: MsOrNull, shadowP50Ms: MsOrNull, primaryP99Ms: MsOrNull, shadowP99Ms: MsOrNull,
}, { $id: 'MirrorStatus' });
export const Alias = Type.Object({
  id: Id('alias id'),
  ...aliasSpecProps,
  createdAt: Time(),
  updatedAt: Time(),
  createdBy: Type.String(),
  status: Type.Object({
    backends: Type.Array(Type.Object({
      nodeId: Type.String(), weight: Type.Number(),
      nodeStatus: StringEnum([...NODE_STATUSES, 'Deleted']),
      healthyInstances: Type.Integer(),
    })),
    mirror: Nullable(Type.Ref(MirrorStatus)),
  }),
}, { $id: 'Alias' });
export const AliasList = Type.Object({ aliases: Type.Array(Type.Ref(Alias)) }, { $id: 'AliasList' });
export const AliasDeleted = Type.Object({ id: Type.String(), name: Type.String(), deleted: Deleted }, { $id: 'AliasDeleted' });
const aliasInProps = {
  kind: Opt(Type.Literal('alias')),
  name: Type.String({ pattern: ALIAS_NAME_PATTERN, description: '2–79 characters, e.g. datasphere.user.my-model' }),
  description: Opt(Type.String({ maxLength: 1024, default: '' })),
  folderId: Opt(Folder('default: the token\'s first folder')),
  projectId: Opt(Folder('a project id')),
  backends: Type.Array(Type.Object({
    nodeId: Type.String({ minLength: 1, description: 'a node of the alias\'s folder, all of one kind' }),
    weight: Opt(Type.Number({ minimum: 0, maximum: 1_000_000, default: 1, description: 'greater than 0' })),
  }, { additionalProperties: false }), { minItems: 1, maxItems: 32 }),
  executionAcl: Opt(Type.Object({
    folders: Opt(Type.Array(Folder(), { maxItems: 100, description: 'default: the alias\'s folder' })),
    isPublic: Opt(Type.Boolean({ default: false, description: 'any authenticated caller may call it' })),
  }, { additionalProperties: false })),
  proxyMetadata: Opt(Type.Object({
    headers: Opt(Type.Array(Type.Object({ name: Type.String({ maxLength: 256 }), value: Type.String({ maxLength: 4096 }) }), { maxItems: 32, description: 'headers added to every proxied call' })),
  })),
  sticky: Opt(Nullable(Type.Object({ header: Type.String({ description: 'the header carrying the session key' }) }))),
  mirror: Opt(Nullable(Type.Object({
    nodeId: Type.String({ description: 'a cell node of the alias\'s folder' }),
    percent: Opt(Type.Number({ minimum: 0, maximum: 100, default: 100, description: 'greater than 0' })),
  }))),
};
export const AliasSpecIn = Type.Object(aliasInProps, { $id: 'AliasSpecIn', additionalProperties: false, description: 'An alias as sent' });
export const AliasPatch = Type.Object(Object.fromEntries(Object.entries(aliasInProps).map(([k, v]) => [k, Opt(v)])), {
  $id: 'AliasPatch', additionalProperties: false,
  description: 'Fields to replace (top level); the result is validated as on create and applied in one swap. name, folderId and projectId cannot change.',
});

// ---------------------------------------------------------------------------------------------
// secrets, folders, audit

export const Secret = Type.Object({
  id: Type.String(), name: Type.String(), folderId: Type.String(), projectId: Type.String(), createdAt: Time(), createdBy: Type.String(),
}, { $id: 'Secret', description: 'A secret: its name only, never its value' });
export const SecretList = Type.Object({ secrets: Type.Array(Type.Ref(Secret)) }, { $id: 'SecretList' });
export const SecretDeleted = Type.Object({ id: Type.String(), name: Type.String(), folderId: Type.String(), deleted: Deleted }, { $id: 'SecretDeleted' });
export const SecretCreate = Type.Object({
  name: Name('secret name'),
  value: Type.String({ minLength: 1, description: 'stored encrypted; at most 64 KiB, never returned' }),
  folderId: Opt(Folder('default: the token\'s first folder')),
  projectId: Opt(Folder('a project id')),
}, { $id: 'SecretCreate', additionalProperties: false });

const QUOTA_BOUNDS = { maxInstances: 10_000, maxNodes: 10_000, maxCheckpointBytes: 2 ** 50, maxUploadBytes: 2 ** 50, maxCheckpointRuns: 1_000 } as const;
const QUOTA_WHAT = {
  maxInstances: 'sum of scaling.maxInstances over the folder\'s nodes',
  maxNodes: 'nodes in the folder',
  maxCheckpointBytes: 'sum of the folder\'s checkpoint sizes',
  maxUploadBytes: 'one checkpoint upload or run request body',
  maxCheckpointRuns: 'checkpoint runs at once',
} as const;
const quotaKeys = Object.keys(QUOTA_BOUNDS) as Array<keyof typeof QUOTA_BOUNDS>;
export const Quota = Type.Object(Object.fromEntries(quotaKeys.map((k) => [k, Type.Integer({ minimum: 0, description: QUOTA_WHAT[k] })])), { $id: 'Quota' });
export const QuotaPatch = Type.Object(Object.fromEntries(quotaKeys.map((k) => [k, Opt(Int(0, QUOTA_BOUNDS[k], DEFAULT_QUOTA[k], QUOTA_WHAT[k]))])), {
  $id: 'QuotaPatch', additionalProperties: false, description: 'The quota fields to change; unset ones keep their value (defaults shown)',
});
export const FolderInfo = Type.Object({
  id: Type.String(),
  quota: Type.Ref(Quota),
  usage: Type.Object({ nodes: Type.Integer(), instances: Type.Integer({ description: 'sum of scaling.maxInstances' }), checkpointBytes: Type.Integer() }),
}, { $id: 'Folder' });
export const AuditEntry = Type.Object({
  id: Type.Integer(),
  at: Time(),
  tokenId: Nullable(Type.String()),
  tokenName: Nullable(Type.String()),
  action: Type.String({ description: 'e.g. node.create, alias.update, token.delete' }),
  folderId: Nullable(Type.String()),
  resourceId: Nullable(Type.String()),
  result: Type.String({ description: 'ok, or the error code the change was refused with' }),
  status: Type.Integer({ description: 'the HTTP status answered' }),
}, { $id: 'AuditEntry' });
export const AuditLog = Type.Object({ entries: Type.Array(Type.Ref(AuditEntry)) }, { $id: 'AuditLog', description: 'newest first' });

// ---------------------------------------------------------------------------------------------
// usage (api/usage.ts, docs/usage.md) and contracts (api/contracts.ts, docs/contracts.md)

export const UsageRow = Type.Object({
  folderId: Type.String({ description: 'the node\'s folder (the one billed)' }),
  nodeId: Opt(Type.String({ description: 'groupBy=node' })),
  nodeName: Opt(Nullable(Type.String(), { description: 'groupBy=node: the node\'s name now, or the last one written for a deleted node' })),
  preset: Opt(Type.String({ description: 'groupBy=node: the resources preset (c1.4) or custom:<cores>c-<memoryGb>g-<gpus>gpu' })),
  day: Opt(Type.String({ pattern: '^\\d{4}-\\d{2}-\\d{2}$', description: 'groupBy=day: the UTC day' })),
  instanceSeconds: Type.Number({ minimum: 0, description: 'instance time, from start to exit (Preparing counts)' }),
  calls: Type.Integer({ minimum: 0, description: 'calls that reached an instance' }),
  bytesIn: Type.Integer({ minimum: 0, description: 'request bodies sent to instances' }),
  bytesOut: Type.Integer({ minimum: 0, description: 'response bodies instances answered' }),
}, { $id: 'UsageRow' });
export const Usage = Type.Object({
  from: Time('the range\'s start as asked (usage is counted in whole hours: from the hour it falls in)'),
  to: Time('the range\'s end'),
  groupBy: StringEnum(USAGE_GROUP_BY),
  rows: Type.Array(Type.Ref(UsageRow)),
}, { $id: 'Usage', description: 'What the folders used over [from, to), by node and preset, folder or day' });
// ---------------------------------------------------------------------------------------------
// the dashboard's chart history (src/ui/history.ts)

const MetricsPoint = Type.Object({
  t: Type.Number({ description: 'unix ms of the sample' }),
  rps: Type.Number({ description: 'calls per second' }),
  errors: Type.Record(Type.String(), Type.Number(), { description: 'error answers per second by code (`http 503`, `grpc 14`)' }),
  p50: Type.Union([Type.Number(), Type.Null()], { description: 'latency percentile in ms over the interval (null: no calls)' }),
  p90: Type.Union([Type.Number(), Type.Null()]),
  p99: Type.Union([Type.Number(), Type.Null()]),
  instances: Opt(Type.Record(Type.String(), Type.Number(), { description: 'instances per status (nodes only)' })),
}, { $id: 'MetricsPoint' });
const historyProps = {
  sampleSeconds: Type.Number({ description: 'seconds between samples' }),
  keepSeconds: Type.Number({ description: 'how far back the history goes' }),
  points: Type.Array(Type.Ref(MetricsPoint)),
};
export const NodeMetricsHistory = Type.Object({ nodeId: Type.String(), ...historyProps }, { $id: 'NodeMetricsHistory' });
export const AliasMetricsHistory = Type.Object({
  aliasName: Type.String(), ...historyProps,
  backends: Type.Record(Type.String(), Type.Array(Type.Ref(MetricsPoint)), { description: 'each backend node\'s points (the live split)' }),
}, { $id: 'AliasMetricsHistory' });
export const historyQuery = { since: Type.String({ pattern: '^[0-9]+(\\.[0-9]+)?$', description: 'only points after this unix ms' }) };

export const usageQuery = {
  folder: Type.String({ pattern: FOLDER_PATTERN, description: 'one folder (default: every folder the token may read)' }),
  folderId: Type.String({ pattern: FOLDER_PATTERN, description: 'the same as folder (name it once)' }),
  from: Type.String({ description: 'ISO 8601 date (UTC midnight) or date-time with a zone; default 30 days before `to`' }),
  to: Type.String({ description: 'ISO 8601 date or date-time with a zone; default now' }),
  groupBy: Type.String({ enum: [...USAGE_GROUP_BY], default: 'node' }),
};

export const NodeContract = Type.Object({
  openapi: Type.Literal('3.1.0'),
  info: Type.Object({ title: Type.String(), version: Type.String({ description: '"revision N" for a node' }), description: Type.String() }),
  servers: Type.Array(Type.Object({ url: Type.String({ description: 'where callers reach the gateway' }) })),
  security: Type.Array(Type.Record(Type.String(), Type.Array(Type.String()))),
  paths: Type.Record(Type.String(), Type.Unknown(), { description: 'the execute call, and for a node the Open Inference Protocol infer call' }),
  components: Type.Object({
    securitySchemes: Type.Record(Type.String(), Type.Unknown()),
    schemas: Type.Record(Type.String(), Type.Unknown(), { description: 'Input and Output typed from the declared variables, the request, the answer, Error…' }),
  }),
}, { $id: 'NodeContract', description: 'An OpenAPI 3.1 document of one cell node\'s (or alias\'s) execute call (docs/contracts.md)' });
/** A text answer (a .proto file, an HTML page): its media type and a string schema. */
export const textAnswer = (mediaType: string, description: string): Record<string, unknown> => ({ description, content: { [mediaType]: { schema: { type: 'string' } } } });

export const BerthServer = Type.Object({
  id: Type.String({ description: 'this run of the server (new at each start)' }),
  url: Type.String({ description: 'where its control API answers (its --advertise-url, or the URL it listens on)' }),
  leader: Type.Boolean({ description: 'it runs the controller (exactly one server does)' }),
  seenAt: Time('its last heartbeat'),
}, { $id: 'BerthServer' });
export const ServerList = Type.Object({ servers: Type.Array(Type.Ref(BerthServer)) }, { $id: 'ServerList', description: 'The Berth servers sharing this store (one, on SQLite)' });

/** Every shared schema, in an order where each comes after those it references. */
const SHARED: TSchema[] = [
  ErrorBody, Health, Token, Whoami, TokenCreated, TokenList, TokenDeleted, TokenCreate,
  CheckpointCell, CheckpointAutosave, Checkpoint, CheckpointRun, CheckpointList, CheckpointDeleted, CheckpointCreate, CheckpointUpdate,
  CellNodeSpecIn, ImageNodeSpecIn, NodeSpecIn, NodePatch, RollbackRequest, CellNodeSpec, ImageNodeSpec,
  Instance, Rollout, CellNode, ImageNode, Node, NodeList, NodeDeleted, NodeUpdatePlan, NodeRevisions, NodeEvents, NodeLogs,
  MirrorStatus, Alias, AliasList, AliasDeleted, AliasSpecIn, AliasPatch,
  Secret, SecretList, SecretDeleted, SecretCreate, Quota, QuotaPatch, FolderInfo, AuditEntry, AuditLog,
  UsageRow, Usage, NodeContract, MetricsPoint, NodeMetricsHistory, AliasMetricsHistory, BerthServer, ServerList,
];

// ---------------------------------------------------------------------------------------------
// building route schemas

/** A reference to a shared schema (by its $id). */
export const ref = (schema: TSchema, description?: string): Record<string, unknown> => ({ $ref: `${schema.$id}#`, ...(description ? { description } : {}) });

const ERROR_MEANING: Record<number, string> = {
  400: 'INVALID_ARGUMENT (details.field names the field), INVALID_JSON, INVALID_PATH…',
  401: 'UNAUTHENTICATED: no token, or an unknown one',
  403: 'PERMISSION_DENIED: the token\'s role does not allow it',
  404: 'not found, or in a folder the token cannot read (looks the same)',
  409: 'NAME_TAKEN, …_IN_USE, CONFLICT, NODE_SUSPENDED, CONTRACT_MISMATCH (details.variable)',
  413: 'PAYLOAD_TOO_LARGE',
  415: 'UNSUPPORTED_MEDIA_TYPE',
  422: 'CHECKPOINT_FAILED, RUN_TIMEOUT, ENVIRONMENT_ERROR: the cells did not run to the end',
  429: 'QUOTA_EXCEEDED (details.quota), TOO_MANY_RUNS, TOO_MANY_FOLLOWERS',
  500: 'INTERNAL (details.requestId, also in x-request-id)',
  503: 'NODE_UNAVAILABLE',
};

/** The error answers a route gives: every route 401 (unless public) and 500, plus these. */
export function errors(...codes: number[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const c of [...new Set([...codes, 401, 500])].sort()) out[String(c)] = ref(ErrorBody, ERROR_MEANING[c] ?? 'an error from the catalogue');
  return out;
}

/** A route's schema: tags, summary, and its answers by status (errors added by the caller). */
export function route(s: {
  tags: string[]; summary: string; description?: string; params?: TSchema; querystring?: TSchema; body?: unknown;
  response: Record<string, unknown>; public?: boolean;
}): FastifySchema {
  const { public: isPublic, ...rest } = s;
  if (isPublic) delete (rest.response as Record<string, unknown>)['401'];
  // the success answer is described by what the route does (OpenAPI requires a description)
  for (const [code, r] of Object.entries(rest.response)) {
    if (code.startsWith('2') && typeof r === 'object' && r !== null && !('description' in r)) rest.response[code] = { ...r, description: s.summary };
  }
  // public routes need no token, whatever security the document declares for the rest
  return { ...rest, ...(isPublic ? { security: [] } : {}) } as FastifySchema;
}

/** Path parameters: each a string, described. */
export const params = (p: Record<string, string>): TSchema =>
  Type.Object(Object.fromEntries(Object.entries(p).map(([k, d]) => [k, Type.String({ description: d })])));

/** Query parameters (all optional strings as sent; the handler parses them). */
export const query = (q: Record<string, TSchema>): TSchema =>
  Type.Object(Object.fromEntries(Object.entries(q).map(([k, v]) => [k, Opt(v)])));

export const folderQuery = { folderId: Type.String({ description: 'the folder (default: the token\'s first) or, on lists, a filter' }) };
export const LOG_LINES_MAX = MAX_TAIL_LINES;

/**
 * Registers the shared schemas and turns fastify's own validation and serialisation into
 * pass-throughs (see the header: the parsers validate, JSON.stringify keeps every field).
 */
export function registerSchemas(app: FastifyInstance): void {
  for (const s of SHARED) app.addSchema(s);
  app.setValidatorCompiler(() => () => true);
  app.setSerializerCompiler(() => (data) => JSON.stringify(data));
}
