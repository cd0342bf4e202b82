// Unit tests of call input validation (src/gateway/input-validator.ts): every variable type
// accepts what it should and refuses the rest with INVALID_INPUT (400) naming the variable;
// bytes are base64; missing and extra inputs; the input itself not an object.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { compileInputValidator } from '../../src/gateway/input-validator.js';
import { BerthError } from '../../src/core/errors.js';
import { VARIABLE_TYPES, type VariableType } from '../../src/core/types.js';

const SAMPLES: Record<string, unknown> = {
  int: 3, negInt: -7, zero: 0, float: 2.5, tiny: 1e-300, str: 'hello', empty: '', bool: true, boolF: false,
  list: [1, 'a'], emptyList: [], dict: { a: 1 }, emptyDict: {}, nul: null, b64: 'aGVsbG8=', b64b: 'aGk=', b64c: 'YWJj',
};

// what each type accepts, by sample name; everything else is refused
const ACCEPTS: Record<VariableType, string[]> = {
  int: ['int', 'negInt', 'zero'],
  float: ['int', 'negInt', 'zero', 'float', 'tiny'],
  // every base64 string is also a string
  str: ['str', 'empty', 'b64', 'b64b', 'b64c'],
  bool: ['bool', 'boolF'],
  list: ['list', 'emptyList'],
  dict: ['dict', 'emptyDict'],
  // '' is the base64 of no bytes; 'hello' is not base64 (length 5)
  bytes: ['empty', 'b64', 'b64b', 'b64c'],
  any: Object.keys(SAMPLES),
};

function refusal(fn: () => void): BerthError {
  try { fn(); } catch (e) {
    assert.ok(e instanceof BerthError, String(e));
    assert.equal(e.code, 'INVALID_INPUT');
    assert.equal(e.httpStatus, 400);
    return e;
  }
  assert.fail('expected INVALID_INPUT');
}

describe('each variable type', () => {
  test('the table covers every declared type', () => {
    assert.deepEqual(Object.keys(ACCEPTS).sort(), [...VARIABLE_TYPES].sort());
  });
  for (const type of VARIABLE_TYPES) {
    test(`${type}: accepts its values, refuses the others naming the variable`, () => {
      const check = compileInputValidator([{ name: 'v', type }]);
      for (const [sample, value] of Object.entries(SAMPLES)) {
        if (ACCEPTS[type].includes(sample)) {
          assert.doesNotThrow(() => check({ v: value }), `${type} should accept ${sample} ${JSON.stringify(value)}`);
        } else {
          const e = refusal(() => check({ v: value }));
          assert.equal(e.details.variable, 'v', `${type}/${sample}`);
          assert.equal(e.details.reason, 'wrong_type');
          assert.equal(e.details.expected, type);
          assert.match(e.message, new RegExp(`^input variable "v" must be .* \\(${type}\\), got `), e.message);
        }
      }
    });
  }
});

describe('bytes are base64', () => {
  const check = compileInputValidator([{ name: 'blob', type: 'bytes' }]);
  test('well-formed base64 with 0, 1 or 2 padding characters', () => {
    for (const s of ['', 'AAAA', 'AA==', 'AAA=', Buffer.from([0, 255, 1, 2, 3]).toString('base64'), 'a+/z']) {
      assert.doesNotThrow(() => check({ blob: s }), s);
    }
  });
  test('not base64: wrong length, padding in the middle, url-safe alphabet, whitespace, a number', () => {
    for (const v of ['A', 'AAA', 'AA=A', 'A===', '-_-_', 'AA AA', 'AAAA\n', 'é...', 42]) {
      const e = refusal(() => check({ blob: v }));
      assert.equal(e.details.variable, 'blob');
      assert.equal(e.details.expected, 'bytes');
      assert.match(e.message, /a base64 string/);
    }
  });
});

describe('the input as a whole', () => {
  const check = compileInputValidator([{ name: 'a', type: 'int' }, { name: 'b', type: 'str' }]);

  test('all declared variables: fine; order does not matter', () => {
    check({ a: 1, b: 'x' });
    check({ b: 'x', a: 1 });
  });

  test('a missing variable is named', () => {
    const e = refusal(() => check({ a: 1 }));
    assert.deepEqual(e.details, { variable: 'b', reason: 'missing', expected: 'str' });
    assert.equal(e.message, 'input variable "b" is missing');
    assert.equal(refusal(() => check({})).details.variable, 'a', 'the first declared one');
  });

  test('an extra variable is named, with what the node takes', () => {
    const e = refusal(() => check({ a: 1, b: 'x', c: 2 }));
    assert.deepEqual(e.details, { variable: 'c', reason: 'unknown', expected: ['a', 'b'] });
    assert.match(e.message, /unknown input variable "c"; this node takes a, b/);
  });

  test('a wrong type reports what it got', () => {
    const e = refusal(() => check({ a: 1.5, b: 'x' }));
    assert.deepEqual(e.details, { variable: 'a', reason: 'wrong_type', expected: 'int', got: 'number' });
    assert.equal(refusal(() => check({ a: 1, b: null })).details.got, 'null');
    assert.equal(refusal(() => check({ a: [1], b: 'x' })).details.got, 'array');
  });

  test('input that is not an object of variables', () => {
    for (const [v, got] of [[undefined, 'nothing'], [null, 'null'], [[1, 'x'], 'array'], ['a=1', 'string'], [5, 'integer']] as const) {
      const e = refusal(() => check(v));
      assert.equal(e.details.field, 'input');
      assert.deepEqual(e.details.expected, ['a', 'b']);
      assert.match(e.message, new RegExp(`got ${got}$`));
    }
  });

  test('a variable named like an Object.prototype member is still required (a bug fixed here)', () => {
    const odd = compileInputValidator([{ name: 'toString', type: 'int' }, { name: 'constructor', type: 'str' }]);
    odd({ toString: 1, constructor: 'x' });
    assert.deepEqual(refusal(() => odd({})).details, { variable: 'toString', reason: 'missing', expected: 'int' });
    assert.equal(refusal(() => odd({ toString: 1 })).details.variable, 'constructor');
    // an own "__proto__" key from JSON.parse is an unknown variable, not a prototype
    const parsed = JSON.parse('{"toString": 1, "constructor": "x", "__proto__": {"c": 1}}') as unknown;
    assert.equal(refusal(() => odd(parsed)).details.variable, '__proto__');
  });

  test('a whole number sent as 3.0 passes here as int (JSON.parse cannot tell 3.0 from 3); the worker checks again', () => {
    const i = compileInputValidator([{ name: 'n', type: 'int' }]);
    assert.doesNotThrow(() => i(JSON.parse('{"n": 3.0}')));
    assert.doesNotThrow(() => i(JSON.parse('{"n": 1e300}')));
  });
});

describe('model types: ndarray, dataframe, list[T], defaults', () => {
  test('ndarray[float32,-1,3]: nested lists and base64 raw bytes; shape, dtype and size refusals name the variable', () => {
    const check = compileInputValidator([{ name: 'x', type: 'ndarray[float32,-1,3]' }]);
    check({ x: [[1, 2, 3], [4, 5.5, 6]] });
    check({ x: { dtype: 'float32', shape: [0, 3], data: '' } });
    check({ x: { dtype: 'float32', shape: [1, 3], data: Buffer.from(new Float32Array([1, 2, 3]).buffer).toString('base64') } });
    const cases: Array<[unknown, string, RegExp]> = [
      [[[1, 2]], 'wrong_shape', /shape \[-1,3\].*got shape \[1,2\]/],
      [[1, 2, 3], 'wrong_shape', /got shape \[3\]/],
      [[[1, 2, 3], [1, 2]], 'ragged', /axis 1/],
      [[[1, 2, true]], 'wrong_dtype', /float32 values, got boolean/],
      ['abc', 'wrong_type', /float32 tensor/],
      [{ dtype: 'int8', shape: [1, 3], data: 'AAAA' }, 'wrong_dtype', /dtype float32, got int8/],
      [{ dtype: 'float32', shape: [1, 3], data: 'AAAA' }, 'wrong_size', /12 bytes.*got 3/],
      [{ dtype: 'float32', shape: [1, 3], data: '!!!!' }, 'wrong_type', /base64/],
      [{ dtype: 'float32', shape: [1, 3] , data: 'AAAA', extra: 1 }, 'wrong_type', /"extra"/],
    ];
    for (const [value, reason, message] of cases) {
      const e = refusal(() => check({ x: value }));
      assert.equal(e.details.variable, 'x');
      assert.equal(e.details.reason, reason, JSON.stringify(value));
      assert.equal(e.details.expected, 'ndarray[float32,-1,3]');
      assert.match(e.message, message);
    }
  });

  test('integer dtypes refuse fractions and values out of range; bool wants booleans', () => {
    const check = compileInputValidator([{ name: 'a', type: 'ndarray[uint8]' }, { name: 'b', type: 'ndarray[bool,2]', default: [true, false] }]);
    check({ a: [0, 255] });
    check({ a: 3 }); // rank 0 where no shape is declared
    assert.equal(refusal(() => check({ a: [256] })).details.reason, 'wrong_dtype');
    assert.equal(refusal(() => check({ a: [-1] })).details.reason, 'wrong_dtype');
    assert.equal(refusal(() => check({ a: [1.5] })).details.reason, 'wrong_dtype');
    assert.equal(refusal(() => check({ a: [1], b: [1, 0] })).details.variable, 'b');
  });

  test('dataframe: records or split; list[T] names the index; a default makes an input optional', () => {
    const check = compileInputValidator([{ name: 'df', type: 'dataframe' }, { name: 'tags', type: 'list[list[int]]', default: [] }]);
    check({ df: [{ a: 1 }, { a: 2 }] });
    check({ df: { columns: ['a', 'b'], data: [[1, 2]], index: ['r'] } });
    assert.match(refusal(() => check({ df: { columns: ['a'], data: [[1, 2]] } })).message, /1 values/);
    assert.match(refusal(() => check({ df: { columns: ['a'], data: [[1]], index: [] } })).message, /"index"/);
    assert.match(refusal(() => check({ df: 'x' })).message, /table/);
    const e = refusal(() => check({ df: [], tags: [[1], [2, 'x']] }));
    assert.equal(e.details.variable, 'tags');
    assert.equal(e.details.at, '[1][1]');
    assert.equal(refusal(() => check({ tags: [] })).details.reason, 'missing');
  });
});
