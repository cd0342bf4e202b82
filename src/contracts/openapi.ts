// One cell node's (or one alias's) API as an OpenAPI 3.1 document: the execute call with its
// request and response typed from the declared variables, every error body it can answer
// with (codes and statuses from core/errors.ts), and examples. Served by the control API at
// GET /v1/nodes/{ref}/openapi.json and /v1/aliases/{name}/openapi.json, shown by the Swagger
// UI at /docs/nodes/{ref}.
import { ERRORS, type ErrorCode } from '../core/errors.js';
import type { Variable } from '../core/types.js';
import { exampleInputs, variablesSchema, type JsonSchema } from './schema.js';
import { mappingOf, tensorMetadata } from './tensors.js';

/** What a contract is generated from: a cell node, or an alias over compatible cell nodes. */
export interface ContractSubject {
  kind: 'node' | 'alias';
  /** The node id, or the alias name: what the call's path names. */
  ref: string;
  name: string;
  description: string;
  folderId: string;
  revision?: number;
  inputs: Variable[];
  outputs: Variable[];
}

/** The errors an execute call can answer with, by HTTP status. */
export const EXECUTE_ERRORS: ErrorCode[] = [
  'INVALID_JSON', 'INVALID_ARGUMENT', 'INVALID_INPUT', 'PAYLOAD_TOO_LARGE', 'UNAUTHENTICATED', 'PERMISSION_DENIED',
  'NODE_NOT_FOUND', 'ALIAS_NOT_FOUND', 'NODE_SUSPENDED', 'EXECUTION_ERROR', 'OUTPUT_MISSING', 'OUTPUT_NOT_SERIALIZABLE',
  'OUTPUT_TYPE_MISMATCH', 'INTERNAL', 'RESPONSE_TOO_LARGE', 'INSTANCE_FAILED', 'NODE_UNAVAILABLE', 'SHUTTING_DOWN', 'CALL_TIMEOUT',
];

const STATUS_TEXT: Record<number, string> = {
  400: 'The request or an input does not fit the contract', 401: 'No token, or an unknown one', 403: 'The token or the folder may not call this',
  404: 'No such node or alias', 409: 'The node is suspended', 413: 'The request is over the size limit',
  500: 'The cell raised, or an output does not fit its declared type', 502: 'The instance failed or the answer is over the limit',
  503: 'No instance free in time, or Berth is shutting down', 504: 'The call took longer than the node\'s timeout',
};

function errorResponses(s: ContractSubject): Record<string, unknown> {
  const byStatus = new Map<number, ErrorCode[]>();
  for (const code of EXECUTE_ERRORS) {
    if (s.kind === 'node' && code === 'ALIAS_NOT_FOUND') continue;
    const status = ERRORS[code].http;
    byStatus.set(status, [...(byStatus.get(status) ?? []), code]);
  }
  const first = s.inputs[0];
  const examples: Partial<Record<ErrorCode, unknown>> = {
    INVALID_INPUT: { code: 'INVALID_INPUT', message: `input variable "${first?.name}" must be …`, details: { variable: first?.name, reason: 'wrong_type', expected: first?.type, got: 'string' } },
    EXECUTION_ERROR: { code: 'EXECUTION_ERROR', message: 'the cell raised ValueError: bad value', details: { error_name: 'ValueError', error_message: 'bad value', traceback: ['Traceback (most recent call last):', '…'] }, error_name: 'ValueError', error_message: 'bad value', traceback: ['…'] },
    UNAUTHENTICATED: { code: 'UNAUTHENTICATED', message: 'a token is required: Authorization: Bearer <token>', details: {} },
  };
  const out: Record<string, unknown> = {};
  for (const [status, codes] of [...byStatus].sort((a, b) => a[0] - b[0])) {
    const ex = codes.map((c) => [c, examples[c]] as const).filter(([, v]) => v !== undefined);
    out[String(status)] = {
      description: `${STATUS_TEXT[status] ?? 'Error'}: ${codes.join(', ')}`,
      content: {
        'application/json': {
          schema: { allOf: [{ $ref: '#/components/schemas/Error' }, { properties: { code: { enum: codes } } }] },
          ...(ex.length ? { examples: Object.fromEntries(ex.map(([c, v]) => [c, { value: v }])) } : {}),
        },
      },
    };
  }
  return out;
}

export interface OpenApiOptions {
  /** Where callers reach the gateway, e.g. http://127.0.0.1:7700. */
  serverUrl: string;
}

export function nodeOpenApi(s: ContractSubject, opts: OpenApiOptions): Record<string, unknown> {
  const path = s.kind === 'node' ? `/datasphere/v1/nodes/${encodeURIComponent(s.ref)}:execute` : `/datasphere/v1/aliases/${encodeURIComponent(s.ref)}:execute`;
  const example = exampleInputs(s.inputs);
  const input = variablesSchema(s.inputs, false);
  const output = variablesSchema(s.outputs, true);
  const tensors = [...s.inputs, ...s.outputs].some((v) => v.type.startsWith('ndarray') || v.type.includes('[ndarray'));
  const paths: Record<string, unknown> = {
    [path]: {
      post: {
        operationId: 'execute',
        summary: `Run ${s.name}`,
        requestBody: {
          required: true,
          content: {
            'application/json': {
              schema: { $ref: '#/components/schemas/ExecuteRequest' },
              example: { folder_id: s.folderId, input: example },
            },
          },
        },
        responses: {
          200: {
            description: 'The declared output variables',
            content: { 'application/json': { schema: { $ref: '#/components/schemas/ExecuteResponse' } } },
          },
          ...errorResponses(s),
        },
      },
    },
  };
  if (s.kind === 'node') paths[`/v2/models/${encodeURIComponent(s.ref)}/infer`] = oipPath(s);
  return {
    openapi: '3.1.0',
    info: {
      title: `${s.name} (${s.kind === 'node' ? 'Berth cell node' : 'Berth alias'})`,
      version: s.revision !== undefined ? `revision ${s.revision}` : '1',
      description: [
        s.description,
        `Call it with a token that may execute in a folder on its ACL (folder ${s.folderId} by default), naming that folder in folder_id.`,
        'The interpreter state persists between calls on one instance.',
      ].filter(Boolean).join('\n\n'),
    },
    servers: [{ url: opts.serverUrl }],
    security: [{ bearer: [] }],
    paths,
    components: {
      securitySchemes: {
        bearer: { type: 'http', scheme: 'bearer', description: 'A Berth token (berth token create --folder F --role executor); `Api-Key <key>` works too.' },
      },
      schemas: {
        Input: input,
        Output: output,
        ExecuteRequest: {
          type: 'object', required: ['input'],
          properties: {
            folder_id: { type: 'string', description: 'The folder you call from (folderId is accepted too)' },
            folderId: { type: 'string' },
            input: { $ref: '#/components/schemas/Input' },
            ...(tensors ? { ndarray_format: { enum: ['list', 'base64'], default: 'list', description: 'How tensor outputs come back: nested arrays, or {dtype, shape, data: base64}' } } : {}),
          },
        },
        ExecuteResponse: { type: 'object', required: ['output'], properties: { output: { $ref: '#/components/schemas/Output' } } },
        Error: {
          type: 'object', required: ['code', 'message', 'details'],
          properties: {
            code: { type: 'string', description: 'A stable code from Berth\'s error catalogue' },
            message: { type: 'string' },
            details: { type: 'object', description: 'Names the field or variable at fault (details.field, details.variable)' },
            error_name: { type: 'string', description: 'EXECUTION_ERROR: the Python exception class' },
            error_message: { type: 'string' },
            traceback: { type: 'array', items: { type: 'string' } },
          },
        } satisfies JsonSchema,
      },
    },
  };
}

/** The same node as an Open Inference Protocol model: POST /v2/models/{id}/infer with JSON tensors. */
function oipPath(s: ContractSubject): Record<string, unknown> {
  const tensor = (v: Variable): JsonSchema => {
    const m = tensorMetadata(v);
    return {
      type: 'object', required: ['name', 'datatype', 'shape', 'data'],
      properties: {
        name: { const: v.name }, datatype: { const: m.datatype },
        shape: { type: 'array', items: { type: 'integer', minimum: 0 }, description: `declared [${m.shape.join(',')}] (-1: any length)` },
        data: { type: 'array', description: 'the values, flat or nested, row-major' },
      },
    };
  };
  const example = exampleInputs(s.inputs);
  return {
    post: {
      operationId: 'infer',
      summary: `Run ${s.name} through the Open Inference Protocol (KServe v2)`,
      parameters: [{ name: 'x-folder-id', in: 'header', required: false, schema: { type: 'string' }, description: 'The folder you call from; may be left out with a token of one folder' }],
      requestBody: {
        required: true,
        content: {
          'application/json': {
            schema: {
              type: 'object', required: ['inputs'],
              properties: {
                id: { type: 'string' },
                inputs: { type: 'array', items: { oneOf: s.inputs.map(tensor) } },
                outputs: { type: 'array', items: { type: 'object', required: ['name'], properties: { name: { enum: s.outputs.map((o) => o.name) }, parameters: { type: 'object' } } } },
                parameters: { type: 'object' },
              },
            },
            example: {
              inputs: s.inputs.filter((v) => !Object.hasOwn(v, 'default')).map((v) => {
                const m = mappingOf(v);
                const value = example[v.name];
                if (m.kind === 'json') return { name: v.name, datatype: m.datatype, shape: [1], data: [JSON.stringify(value)] };
                if (m.kind === 'scalar') return { name: v.name, datatype: m.datatype, shape: [1], data: [value] };
                return { name: v.name, datatype: m.datatype, shape: shapeOf(value), data: value };
              }),
            },
          },
        },
      },
      responses: {
        200: {
          description: 'The output tensors',
          content: { 'application/json': { schema: { type: 'object', properties: { model_name: { type: 'string' }, id: { type: 'string' }, outputs: { type: 'array', items: { oneOf: s.outputs.map(tensor) } } } } } },
        },
        ...errorResponses(s),
      },
    },
  };
}

function shapeOf(value: unknown): number[] {
  const shape: number[] = [];
  let cur: unknown = value;
  while (Array.isArray(cur)) { shape.push(cur.length); cur = cur[0]; }
  return shape;
}
