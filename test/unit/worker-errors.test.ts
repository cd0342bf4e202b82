// Every call-error code the Python worker can send maps to an error of the one catalogue.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ERRORS, WORKER_ERRORS } from '../../src/core/errors.js';
import { ROOT } from '../helpers.js';

test('each worker error code maps to a catalogue error', () => {
  const source = readFileSync(join(ROOT, 'python/berth_worker.py'), 'utf8');
  const codes = new Set([...source.matchAll(/_call_error\(\s*"([A-Z_]+)"/g)].map((m) => m[1]!));
  assert.ok(codes.size >= 7, `found the worker's codes: ${[...codes].join(', ')}`);
  for (const code of codes) {
    assert.ok(code in WORKER_ERRORS, `worker code ${code} has no entry in WORKER_ERRORS`);
    assert.ok(WORKER_ERRORS[code]! in ERRORS);
  }
});
