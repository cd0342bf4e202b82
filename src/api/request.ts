// Reading requests: every body field and query flag checked for type and length, errors naming the field.
import type { FastifyRequest } from 'fastify';
import { invalidArgument } from '../core/errors.js';
import { typeName } from '../core/node-spec.js';

export type Body = Record<string, unknown>;

/** Free text is bounded everywhere (names have their own rules). */
export const MAX_TEXT = 1024;

export function body(req: FastifyRequest): Body {
  const b = req.body;
  if (b === undefined || b === null) return {};
  if (typeof b !== 'object' || Array.isArray(b)) throw invalidArgument('body', `must be a JSON object, got ${typeName(b)}`);
  return b as Body;
}

export function optString(b: Body, key: string, max = MAX_TEXT): string | undefined {
  const v = b[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw invalidArgument(key, `must be a string, got ${typeName(v)}`);
  if (v.length > max) throw invalidArgument(key, `must be at most ${max} characters`);
  return v;
}

/** A tenant names an interpreter; only those an admin allowed at `berth up` are started. */
export function allowedPython(allowed: readonly string[], python: string, field: string): string {
  if (!allowed.includes(python)) {
    throw invalidArgument(field, `${python} is not an interpreter this Berth runs (allowed: ${allowed.join(', ')}); an admin adds one with berth up --allow-python PATH`);
  }
  return python;
}

export function onlyFields(b: Body, known: readonly string[]): void {
  for (const k of Object.keys(b)) if (!known.includes(k)) throw invalidArgument(k, 'is not a known field');
}

/** A true/false query flag (`true`/`1`, `false`/`0`); absent means false. */
export function flag(value: string | undefined, field: string): boolean {
  if (value === undefined || value === 'false' || value === '0') return false;
  if (value === 'true' || value === '1') return true;
  throw invalidArgument(field, 'must be true or false');
}
