// Per-node contracts on the control API: GET /v1/nodes/{ref}/openapi.json and
// /v1/aliases/{name}/openapi.json (OpenAPI 3.1), GET /v1/nodes/{ref}/node.proto (the typed
// gRPC service), and the Swagger UI pages: /docs (the control API) and /docs/nodes/{ref}.
//
// Who may read a contract: whoever may read the node's folder, and whoever may call it (a
// token that may execute in a folder on the node's ACL, or on the alias's execution ACL):
// callers need the contract of what they call. Anyone else gets 404, as for a missing node.
// The Swagger UI pages are static and public; the documents they load are not: the page
// takes the token from its URL fragment (#token=…, never sent to a server) or asks for it,
// keeps it in the tab's sessionStorage and sends it as a bearer header on every request.
import type { FastifyInstance, FastifyRequest, FastifySchema } from 'fastify';
import swaggerUi from '@fastify/swagger-ui';
import { Auth } from '../core/auth.js';
import { BerthError } from '../core/errors.js';
import type { AliasRecord, CellNodeSpec, NodeRecord, TokenRecord } from '../core/types.js';
import { nodeOpenApi, type ContractSubject } from '../contracts/openapi.js';
import { nodeProto, serviceNameOf } from '../contracts/proto.js';
import type { ApiDeps } from './deps.js';
import { NodeContract, errors, params, ref, route, textAnswer } from './schemas.js';

const nodeNotFound = (ref: string): BerthError => new BerthError('NODE_NOT_FOUND', `node ${ref} not found`, { nodeId: ref });
const aliasNotFound = (name: string): BerthError => new BerthError('ALIAS_NOT_FOUND', `alias ${name} not found`, { aliasName: name });

/** May this token see the node's contract: read its folder, or call it from a folder on its ACL. */
export function maySeeNode(token: TokenRecord, n: NodeRecord): boolean {
  return Auth.can(token, n.spec.folderId, 'read') || n.spec.permissions.folders.some((f) => Auth.mayExecute(token, f));
}

function maySeeAlias(token: TokenRecord, a: AliasRecord): boolean {
  if (Auth.can(token, a.spec.folderId, 'read')) return true;
  if (a.spec.executionAcl.isPublic) return true; // any authenticated caller may call it
  return a.spec.executionAcl.folders.some((f) => Auth.mayExecute(token, f));
}

function requireCell(n: NodeRecord): CellNodeSpec {
  if (n.spec.kind !== 'cell') {
    throw new BerthError('INVALID_ARGUMENT', `node ${n.id} is an image node: its API is the image's own; only cell nodes declare a contract`, { field: 'ref', nodeKind: n.spec.kind });
  }
  return n.spec;
}

export function nodeSubject(n: NodeRecord): ContractSubject {
  const spec = requireCell(n);
  return { kind: 'node', ref: n.id, name: spec.name, description: spec.description, folderId: spec.folderId, revision: n.revision, inputs: spec.inputs, outputs: spec.outputs };
}

function serverUrl(req: FastifyRequest): string {
  return `${req.protocol}://${req.headers.host ?? '127.0.0.1'}`;
}

export function contractRoutes(app: FastifyInstance, { store }: ApiDeps): void {
  /** By id, or by name among the nodes whose contract the token may see; 404 otherwise. */
  const findNode = async (ref: string, token: TokenRecord): Promise<NodeRecord> => {
    let n = await store.getNode(ref);
    if (!n) {
      const named = (await store.listNodes()).filter((x) => x.spec.name === ref && maySeeNode(token, x));
      if (named.length === 1) n = named[0];
    }
    if (!n || !maySeeNode(token, n)) throw nodeNotFound(ref);
    return n;
  };

  const aliasSubject = async (name: string, token: TokenRecord): Promise<ContractSubject> => {
    const a = (await store.listAliases()).find((x) => x.spec.name === name || x.id === name);
    if (!a || !maySeeAlias(token, a)) throw aliasNotFound(name);
    // backends have one contract (aliases refuse to mix them): the first one speaks for all
    const first = await store.getNode(a.spec.backends[0]!.nodeId);
    if (!first) throw new BerthError('NODE_UNAVAILABLE', `alias ${name} points at node ${a.spec.backends[0]!.nodeId}, which is gone`, { aliasName: name });
    const spec = requireCell(first);
    return { kind: 'alias', ref: a.spec.name, name: a.spec.name, description: a.spec.description, folderId: a.spec.folderId, inputs: spec.inputs, outputs: spec.outputs };
  };

  app.get<{ Params: { ref: string } }>('/v1/nodes/:ref/openapi.json', {
    schema: route({
      tags: ['contracts'], summary: 'The OpenAPI 3.1 contract of a cell node (for its callers and readers)', params: params({ ref: 'node id or name' }),
      response: { 200: ref(NodeContract), ...errors(400, 404) },
    }),
  }, async (req) => nodeOpenApi(nodeSubject(await findNode(req.params.ref, req.token)), { serverUrl: serverUrl(req) }));

  app.get<{ Params: { name: string } }>('/v1/aliases/:name/openapi.json', {
    schema: route({
      tags: ['contracts'], summary: 'The OpenAPI 3.1 contract of an alias over cell nodes', params: params({ name: 'alias name or id' }),
      response: { 200: ref(NodeContract), ...errors(400, 404, 503) },
    }),
  }, async (req) => nodeOpenApi(await aliasSubject(req.params.name, req.token), { serverUrl: serverUrl(req) }));

  app.get<{ Params: { ref: string } }>('/v1/nodes/:ref/node.proto', {
    schema: route({
      tags: ['contracts'], summary: 'The typed gRPC service of a cell node (berth.nodes.v1.<Name>), as a .proto file', params: params({ ref: 'node id or name' }),
      response: { 200: textAnswer('text/plain', 'the .proto file (proto3)'), ...errors(400, 404) },
    }),
  }, async (req, reply) => {
    const n = await findNode(req.params.ref, req.token);
    // the name the gateway serves it under: two cell nodes of one service name are both told apart by id
    const base = serviceNameOf(n.spec.name, n.id);
    const shared = (await store.listNodes()).filter((x) => x.spec.kind === 'cell' && serviceNameOf(x.spec.name, x.id) === base).length > 1;
    reply.header('content-type', 'text/plain; charset=utf-8');
    return nodeProto(nodeSubject(n), shared ? `${base}_${n.id}` : base).text;
  });

  // the Swagger UI: its assets and the control API's page at /docs (the control API's
  // document is public, as /openapi.json is); the pages hold no data of their own
  // (the UI's own page is documented as the pages below are; its assets stay hidden: not API.
  // fastify registers a prefix's '/' route as /docs and /docs/ from one options object, so the
  // document lists it under the last of the two, /docs/)
  app.addHook('onRoute', (r) => {
    if (r.url === '/docs' || r.url.startsWith('/docs/')) r.config = { ...(r.config ?? {}), public: true };
    if (r.url === '/docs' && r.method === 'GET') r.schema = docsPageSchema('The Swagger UI of the control API (public page; its document is /openapi.json)');
  });
  void app.register(swaggerUi, {
    routePrefix: '/docs',
    uiConfig: { persistAuthorization: true, tryItOutEnabled: true },
  });

  const CSP = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";
  app.get('/docs/berth-contract.js', { config: { public: true }, schema: { hide: true } }, async (_req, reply) => {
    reply.header('content-type', 'application/javascript; charset=utf-8');
    return DOCS_SCRIPT;
  });
  app.get<{ Params: { ref: string } }>('/docs/nodes/:ref', {
    config: { public: true },
    schema: docsPageSchema("The Swagger UI of a cell node's contract (public page; the contract it loads needs a token that may read or call the node)", params({ ref: 'node id or name' })),
  }, async (req, reply) => {
    reply.header('content-type', 'text/html; charset=utf-8');
    reply.header('content-security-policy', CSP);
    reply.header('referrer-policy', 'no-referrer');
    return docsPage(`/v1/nodes/${encodeURIComponent(req.params.ref)}/openapi.json`);
  });
  app.get<{ Params: { name: string } }>('/docs/aliases/:name', {
    config: { public: true },
    schema: docsPageSchema("The Swagger UI of an alias's contract (public page; the contract it loads needs a token that may read or call the alias)", params({ name: 'alias name' })),
  }, async (req, reply) => {
    reply.header('content-type', 'text/html; charset=utf-8');
    reply.header('content-security-policy', CSP);
    reply.header('referrer-policy', 'no-referrer');
    return docsPage(`/v1/aliases/${encodeURIComponent(req.params.name)}/openapi.json`);
  });
}

/** A Swagger UI page: public HTML (it holds no data; what it loads is authorized). */
function docsPageSchema(summary: string, p?: ReturnType<typeof params>): FastifySchema {
  return route({ tags: ['contracts'], summary, public: true, ...(p ? { params: p } : {}), response: { 200: textAnswer('text/html', 'the page'), ...errors() } });
}

/** The Swagger UI for one contract; the document URL is already percent-encoded. */
function docsPage(specUrl: string): string {
  const url = specUrl.replace(/&/g, '&amp;').replace(/"/g, '&quot;').replace(/</g, '&lt;');
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Berth contract</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png">
</head><body data-spec="${url}">
<form id="berth-token" hidden style="font:14px sans-serif;padding:8px 16px;background:#f4f4f4">A Berth token that may read or call this node:
<input name="token" type="password" autocomplete="off" placeholder="token" style="width:28em"> <button>Show the contract</button></form>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/berth-contract.js"></script>
</body></html>
`;
}

/** The page's script, served as a file so the page's CSP needs no inline script. */
const DOCS_SCRIPT = `(function () {
  var KEY = 'berth-token';
  var spec = document.body.getAttribute('data-spec');
  var m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) { sessionStorage.setItem(KEY, decodeURIComponent(m[1])); history.replaceState(null, '', location.pathname + location.search); }
  var form = document.getElementById('berth-token');
  function show(token) {
    form.hidden = true;
    var ui = SwaggerUIBundle({
      url: spec, dom_id: '#swagger-ui', deepLinking: true, tryItOutEnabled: true, validatorUrl: null,
      requestInterceptor: function (r) { r.headers.Authorization = 'Bearer ' + token; return r; },
      onComplete: function () { ui.preauthorizeApiKey && ui.preauthorizeApiKey('bearer', token); }
    });
    window.ui = ui;
  }
  form.addEventListener('submit', function (e) {
    e.preventDefault();
    var t = form.elements.token.value.trim();
    if (t) { sessionStorage.setItem(KEY, t); show(t); }
  });
  var saved = sessionStorage.getItem(KEY);
  if (saved) show(saved); else form.hidden = false;
})();
`;
