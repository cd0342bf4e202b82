// The README's quick start, pasted into a fresh shell (on a free port and a fresh
// BERTH_HOME; the install lines are what CI has already done).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { ROOT, tempHome, removeHome, PYTHON } from './helpers.js';

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

test('README quick start prints a random number', async () => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('## Quick start'));
  const block = /```bash\n([\s\S]*?)```/.exec(section)![1]!;
  const script = block.split('\n').filter((l) => !/apt-get|^npm ci/.test(l)).join('\n');
  const port = await freePort();
  const home = tempHome();
  const r = spawnSync('bash', ['-ec', `${script.replaceAll('7700', String(port))}\necho\nkill %1\nwait`], {
    cwd: ROOT, encoding: 'utf8', timeout: 180_000,
    env: { ...process.env, BERTH_HOME: home, BERTH_PORT: String(port), BERTH_PYTHON: PYTHON, BERTH_URL: '', BERTH_TOKEN: '' },
  });
  try {
    assert.equal(r.status, 0, r.stdout + r.stderr);
    const answer = JSON.parse(r.stdout.trim().split('\n').filter((l) => l.startsWith('{"output"')).pop()!);
    const value = answer.output.output_data.generated_value;
    assert.ok(Number.isInteger(value) && value >= 1 && value <= 10);
  } finally {
    removeHome(home);
  }
});
