// `berth node snippet NODE --lang curl|python|typescript|grpc`: a working call of a cell node,
// with example inputs from its contract (defaults where declared). The token is never put in
// the snippet: each reads it from $BERTH_TOKEN, so a pasted snippet leaks nothing.
import { DTYPES, parseType, type TypeExpr } from '../core/var-types.js';
import type { Variable } from '../core/types.js';
import { exampleInputs, exampleValue } from './schema.js';

export const SNIPPET_LANGS = ['curl', 'python', 'typescript', 'grpc'] as const;
export type SnippetLang = (typeof SNIPPET_LANGS)[number];

export interface SnippetSubject {
  /** The gateway's base URL, e.g. http://127.0.0.1:7700 */
  url: string;
  nodeId: string;
  folderId: string;
  inputs: Variable[];
  /** berth.nodes.v1.<Name>, for grpc */
  service: string;
}

const shellQuote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

/** A tensor example in the typed gRPC form: {dtype, shape, data: base64 of the raw bytes}. */
function rawTensor(t: Extract<TypeExpr, { kind: 'ndarray' }>, value: unknown): unknown {
  const dtype = t.dtype ?? 'float64';
  const flat: number[] = [];
  const shape: number[] = [];
  let cur: unknown = value;
  while (Array.isArray(cur)) { shape.push(cur.length); cur = cur[0]; }
  const walk = (v: unknown): void => { if (Array.isArray(v)) v.forEach(walk); else flat.push(typeof v === 'boolean' ? Number(v) : Number(v)); };
  walk(value);
  const buf = Buffer.alloc(flat.length * DTYPES[dtype]);
  flat.forEach((x, i) => {
    const o = i * DTYPES[dtype];
    switch (dtype) {
      case 'float32': buf.writeFloatLE(x, o); break;
      case 'float64': buf.writeDoubleLE(x, o); break;
      case 'float16': buf.writeUInt16LE(0, o); break;
      case 'int8': buf.writeInt8(x, o); break;
      case 'uint8': case 'bool': buf.writeUInt8(x, o); break;
      case 'int16': buf.writeInt16LE(x, o); break;
      case 'uint16': buf.writeUInt16LE(x, o); break;
      case 'int32': buf.writeInt32LE(x, o); break;
      case 'uint32': buf.writeUInt32LE(x, o); break;
      case 'int64': buf.writeBigInt64LE(BigInt(x), o); break;
      case 'uint64': buf.writeBigUInt64LE(BigInt(x), o); break;
    }
  });
  return { dtype, shape, data: buf.toString('base64') };
}

/** Example inputs as the typed gRPC service's JSON form (tensors as raw bytes). */
function typedExample(inputs: Variable[]): Record<string, unknown> {
  return Object.fromEntries(inputs.map((v) => {
    const t = parseType(v.type);
    const value = Object.hasOwn(v, 'default') ? v.default : exampleValue(t);
    if (t.kind === 'ndarray') return [v.name, rawTensor(t, value)];
    if (t.kind === 'list' && t.items.kind === 'ndarray' && Array.isArray(value)) return [v.name, value.map((x) => rawTensor(t.items as Extract<TypeExpr, { kind: 'ndarray' }>, x))];
    return [v.name, value];
  }));
}

export function snippet(lang: SnippetLang, s: SnippetSubject): string {
  const url = `${s.url}/datasphere/v1/nodes/${s.nodeId}:execute`;
  const body = { folder_id: s.folderId, input: exampleInputs(s.inputs) };
  const json = JSON.stringify(body, null, 2);
  switch (lang) {
    case 'curl':
      return `curl -sS -X POST ${shellQuote(url)} \\
  -H "Authorization: Bearer $BERTH_TOKEN" \\
  -H 'Content-Type: application/json' \\
  --data-raw ${shellQuote(JSON.stringify(body))}
`;
    case 'python':
      return `# Python 3, standard library only; the token comes from $BERTH_TOKEN.
import json
import os
import urllib.request

body = json.loads(${JSON.stringify(JSON.stringify(body))})
request = urllib.request.Request(
    ${JSON.stringify(url)},
    data=json.dumps(body).encode(),
    headers={"Authorization": "Bearer " + os.environ["BERTH_TOKEN"], "Content-Type": "application/json"},
    method="POST",
)
with urllib.request.urlopen(request) as answer:
    output = json.load(answer)["output"]
print(json.dumps(output))
`;
    case 'typescript':
      return `// Node 18+ or a browser: fetch is built in; the token comes from BERTH_TOKEN.
const answer = await fetch(${JSON.stringify(url)}, {
  method: 'POST',
  headers: { authorization: \`Bearer \${process.env.BERTH_TOKEN}\`, 'content-type': 'application/json' },
  body: JSON.stringify(${json.replace(/\n/g, '\n  ')}),
});
if (!answer.ok) throw new Error(\`\${answer.status}: \${await answer.text()}\`);
const { output } = await answer.json();
console.log(output);
`;
    case 'grpc': {
      const host = s.url.replace(/^https?:\/\//, '');
      const plaintext = s.url.startsWith('https:') ? '' : '-plaintext ';
      return `# grpcurl discovers ${s.service} through server reflection; tensors are {dtype, shape, data: base64 raw bytes}.
grpcurl ${plaintext}-H "authorization: Bearer $BERTH_TOKEN" \\
  -d ${shellQuote(JSON.stringify({ folder_id: s.folderId, input: typedExample(s.inputs) }))} \\
  ${host} ${s.service}/Execute
`;
    }
  }
}
