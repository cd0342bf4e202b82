// The request target, made canonical once at the front door, before any routing: the
// gateway, the header-routed proxy and fastify all see the same path, so a path spelt
// differently (`/%761/secrets`, `/x/../v1/secrets`, `//v1//secrets`,
// `http://host/v1/secrets`) reaches the same route with the same checks as its plain
// form, and a target nobody could decode (`%E0%A4%A`, `%ZZ`) is refused with 400
// INVALID_PATH instead of throwing later inside a handler.
//
// Berth's own routes (RFC 3986 §6.2.2 normalisation):
//   absolute-form (`http://h/p?q`) → its origin-form (`/p?q`); other schemes refused
//   percent-encoded unreserved characters (A-Z a-z 0-9 - . _ ~) decoded, other
//     escapes kept with upper-case hex (so `%2F` stays data, never a separator)
//   dot-segments resolved, empty segments (doubled slashes) dropped
//   malformed escapes, escapes that are not UTF-8, bytes outside visible ASCII and
//     fragments refused, in the path and in the query
// Header-routed proxy calls (x-node-id / x-node-alias): the path belongs to the user's
// image, which may give `%2e%2e` or `//` a meaning of its own, so it is forwarded as
// sent; only what no HTTP server should accept is refused (the same syntax checks, minus
// the UTF-8 one: binary escapes like `%FF` are legal there), and absolute-form becomes
// origin-form.
import { BerthError } from '../core/errors.js';

export type TargetResult = { ok: true; target: string } | { ok: false; error: BerthError };

const SCHEME = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//;
const HEX = /^[0-9A-Fa-f]{2}$/;

function invalid(target: string, problem: string): TargetResult {
  return {
    ok: false,
    error: new BerthError('INVALID_PATH', `the request target is not a valid path: ${problem}`,
      { field: 'path', problem, path: target.length > 200 ? `${target.slice(0, 200)}…` : target }),
  };
}

function isUnreserved(c: number): boolean {
  return (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x2e || c === 0x5f || c === 0x7e;
}

/** Syntax checks shared by both forms: visible ASCII only, no fragment, every `%` followed by two hex digits. */
function checkSyntax(s: string, what: string): string | null {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c <= 0x20 || c >= 0x7f) return `${what} holds a character outside visible ASCII at offset ${i}`;
    if (c === 0x23) return `${what} holds a fragment (#), which a request never carries`;
    if (c === 0x25 && !HEX.test(s.slice(i + 1, i + 3))) return `${what} holds a malformed percent-encoding at offset ${i}`;
  }
  return null;
}

/** Splits off absolute-form; refuses a target that is neither origin-form nor `*`. */
function originForm(raw: string): { path: string; query: string | null } | string {
  let t = raw;
  const scheme = SCHEME.exec(t);
  if (scheme) {
    const name = scheme[1]!.toLowerCase();
    if (name !== 'http' && name !== 'https') return `absolute-form with scheme ${name} is not served here`;
    const rest = t.slice(scheme[0].length);
    const end = rest.search(/[/?]/);
    t = end === -1 ? '/' : rest[end] === '?' ? `/${rest.slice(end)}` : rest.slice(end);
  } else if (t[0] !== '/') {
    return 'a request target must start with / (origin-form)';
  }
  const q = t.indexOf('?');
  return q === -1 ? { path: t, query: null } : { path: t.slice(0, q), query: t.slice(q + 1) };
}

/** The canonical target for Berth's own routes (control API, :execute, gRPC services). */
export function canonicalTarget(raw: string): TargetResult {
  if (raw === '*') return { ok: true, target: raw }; // OPTIONS *: no route, answered 404 by the router
  const form = originForm(raw);
  if (typeof form === 'string') return invalid(raw, form);
  const problem = checkSyntax(form.path, 'the path') ?? (form.query !== null ? checkSyntax(form.query, 'the query') : null);
  if (problem) return invalid(raw, problem);
  // the decoded path (and query) must be UTF-8: handlers decode ids from it (only an escape can fail that)
  try { if (form.path.includes('%')) decodeURIComponent(form.path); if (form.query?.includes('%')) decodeURIComponent(form.query); } catch {
    return invalid(raw, 'a percent-encoded sequence is not UTF-8');
  }
  // fast path: nothing to normalise (the common case on the hot path)
  if (form.path.indexOf('%') === -1 && form.path.indexOf('//') === -1 && !/\/\.\.?(\/|$)/.test(form.path)) {
    return { ok: true, target: form.query === null && form.path === raw ? raw : form.path + (form.query === null ? '' : `?${form.query}`) };
  }
  // decode unreserved escapes, upper-case the others (before dot-segments: `%2E%2E` is `..`)
  let path = '';
  for (let i = 0; i < form.path.length; i++) {
    const ch = form.path[i]!;
    if (ch !== '%') { path += ch; continue; }
    const code = parseInt(form.path.slice(i + 1, i + 3), 16);
    path += isUnreserved(code) ? String.fromCharCode(code) : `%${form.path.slice(i + 1, i + 3).toUpperCase()}`;
    i += 2;
  }
  const out: string[] = [];
  const segments = path.split('/');
  let trailing = path.endsWith('/');
  for (const seg of segments) {
    if (seg === '' ) continue;
    if (seg === '.') { trailing = true; continue; }
    if (seg === '..') { out.pop(); trailing = true; continue; }
    out.push(seg);
    trailing = false;
  }
  if (path.endsWith('/')) trailing = true;
  const canonical = `/${out.join('/')}${trailing && out.length > 0 ? '/' : ''}`;
  return { ok: true, target: canonical + (form.query === null ? '' : `?${form.query}`) };
}

/** The target of a header-routed proxy call: checked, made origin-form, otherwise passed as sent. */
export function proxiedTarget(raw: string): TargetResult {
  if (raw === '*') return { ok: true, target: raw };
  const form = originForm(raw);
  if (typeof form === 'string') return invalid(raw, form);
  const problem = checkSyntax(form.path, 'the path') ?? (form.query !== null ? checkSyntax(form.query, 'the query') : null);
  if (problem) return invalid(raw, problem);
  return { ok: true, target: form.query === null && form.path === raw ? raw : form.path + (form.query === null ? '' : `?${form.query}`) };
}
