// The Python worker's own unit tests, run by the same test command.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { ROOT, PYTHON } from './helpers.js';

test('python worker, checkpoint and client unit tests', () => {
  const r = spawnSync(PYTHON, ['-m', 'unittest', 'discover', '-s', 'python/tests', '-t', 'python'], { cwd: ROOT, encoding: 'utf8', timeout: 300_000 });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stderr, /Ran \d+ tests/);
  assert.doesNotMatch(r.stderr, /Ran 0 tests/);
});
