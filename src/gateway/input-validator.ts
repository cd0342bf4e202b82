// Checks a call's `input` against the node's declared variables. Built once per node
// (a closure per variable), so a call does no schema work beyond these checks.
import { BerthError } from '../core/errors.js';
import { typeName } from '../core/node-spec.js';
import type { Variable, VariableType } from '../core/types.js';

const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

const CHECKS: Record<VariableType, (v: unknown) => boolean> = {
  int: (v) => typeof v === 'number' && Number.isInteger(v),
  float: (v) => typeof v === 'number',
  str: (v) => typeof v === 'string',
  bool: (v) => typeof v === 'boolean',
  list: (v) => Array.isArray(v),
  dict: (v) => typeof v === 'object' && v !== null && !Array.isArray(v),
  bytes: (v) => typeof v === 'string' && BASE64_RE.test(v),
  any: () => true,
};

const EXPECTED: Record<VariableType, string> = {
  int: 'an integer', float: 'a number', str: 'a string', bool: 'a boolean', list: 'an array',
  dict: 'an object', bytes: 'a base64 string', any: 'any JSON value',
};

export type InputValidator = (input: unknown) => void;

export function compileInputValidator(inputs: Variable[]): InputValidator {
  const declared = new Map(inputs.map((v) => [v.name, CHECKS[v.type]]));
  const names = inputs.map((v) => v.name);
  const types = new Map(inputs.map((v) => [v.name, v.type]));
  return (input: unknown) => {
    if (typeof input !== 'object' || input === null || Array.isArray(input)) {
      throw new BerthError('INVALID_INPUT', `input must be an object of variables, got ${input === undefined ? 'nothing' : typeName(input)}`,
        { field: 'input', expected: names });
    }
    const obj = input as Record<string, unknown>;
    for (const key in obj) {
      const check = declared.get(key);
      if (!check) {
        throw new BerthError('INVALID_INPUT', `unknown input variable "${key}"; this node takes ${names.join(', ')}`,
          { variable: key, reason: 'unknown', expected: names });
      }
      if (!check(obj[key])) {
        const type = types.get(key)!;
        throw new BerthError('INVALID_INPUT', `input variable "${key}" must be ${EXPECTED[type]} (${type}), got ${typeName(obj[key])}`,
          { variable: key, reason: 'wrong_type', expected: type, got: typeName(obj[key]) });
      }
    }
    for (const name of names) {
      // own keys only: `in` would find Object.prototype's `toString`, `constructor`...
      if (!Object.hasOwn(obj, name)) {
        throw new BerthError('INVALID_INPUT', `input variable "${name}" is missing`, { variable: name, reason: 'missing', expected: types.get(name) });
      }
    }
  };
}
