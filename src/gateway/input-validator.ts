// Checks a call's `input` against the node's declared variables. Built once per node
// (a closure per variable, from core/var-check.ts), so a call does no schema work beyond
// walking its values. Inputs with a default may be left out: the worker fills them in, so
// the caller's bytes still go to the worker unchanged.
import { BerthError } from '../core/errors.js';
import { typeName } from '../core/node-spec.js';
import { compileCheck, type ValueCheck } from '../core/var-check.js';
import { parseType } from '../core/var-types.js';
import type { Variable } from '../core/types.js';

export type InputValidator = (input: unknown) => void;

export function compileInputValidator(inputs: Variable[]): InputValidator {
  const declared = new Map<string, { check: ValueCheck; type: string }>(
    inputs.map((v) => [v.name, { check: compileCheck(parseType(v.type)), type: v.type }]));
  const names = inputs.map((v) => v.name);
  const required = inputs.filter((v) => !Object.hasOwn(v, 'default'));
  return (input: unknown) => {
    if (typeof input !== 'object' || input === null || Array.isArray(input)) {
      throw new BerthError('INVALID_INPUT', `input must be an object of variables, got ${input === undefined ? 'nothing' : typeName(input)}`,
        { field: 'input', expected: names });
    }
    const obj = input as Record<string, unknown>;
    for (const key in obj) {
      const d = declared.get(key);
      if (!d) {
        throw new BerthError('INVALID_INPUT', `unknown input variable "${key}"; this node takes ${names.join(', ')}`,
          { variable: key, reason: 'unknown', expected: names });
      }
      const p = d.check(obj[key]);
      if (p) {
        throw new BerthError('INVALID_INPUT', `input variable "${key}"${p.path ? ` at ${p.path}` : ''} ${p.message}`,
          { variable: key, reason: p.reason, expected: d.type, got: typeName(obj[key]), ...(p.path ? { at: p.path } : {}) });
      }
    }
    for (const v of required) {
      // own keys only: `in` would find Object.prototype's `toString`, `constructor`...
      if (!Object.hasOwn(obj, v.name)) {
        throw new BerthError('INVALID_INPUT', `input variable "${v.name}" is missing`, { variable: v.name, reason: 'missing', expected: v.type });
      }
    }
  };
}
