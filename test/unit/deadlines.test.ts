// The shared deadline timer: deadlines fire once, in order, never after being cleared, and the
// Deadline works as the abort signal undici and the dispatcher listen to.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Pool } from 'undici';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { DeadlineWheel } from '../../src/gateway/deadlines.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test('deadlines fire after their timeout, in order, and cleared ones never do', async () => {
  const wheel = new DeadlineWheel();
  const fired: string[] = [];
  const started = Date.now();
  const firedAt = new Map<string, number>();
  const on = (name: string) => () => { fired.push(name); firedAt.set(name, Date.now() - started); };
  wheel.start(120, on('a'));
  const b = wheel.start(120, on('b'));
  wheel.start(60, on('c'));
  wheel.start(300, on('d'));
  assert.equal(wheel.size, 4);
  wheel.clear(b);
  wheel.clear(b); // twice is harmless
  assert.equal(wheel.size, 3);
  await sleep(400);
  assert.deepEqual(fired, ['c', 'a', 'd']);
  assert.ok(firedAt.get('c')! >= 60 && firedAt.get('a')! >= 120 && firedAt.get('d')! >= 300, JSON.stringify([...firedAt]));
  assert.equal(wheel.size, 0);
});

test('a deadline is an abort signal: listeners run once with the reason; removed ones do not run', () => {
  const wheel = new DeadlineWheel();
  const d = wheel.start(10_000, () => undefined);
  let runs = 0;
  let removedRan = false;
  const removed = (): void => { removedRan = true; };
  d.addEventListener('abort', () => runs++);
  d.addEventListener('abort', removed);
  d.removeEventListener('abort', removed);
  d.abort(new Error('first'));
  d.abort(new Error('second'));
  assert.equal(runs, 1);
  assert.equal(removedRan, false);
  assert.equal(d.aborted, true);
  assert.equal((d.reason as Error).message, 'first');
  wheel.clear(d);
});

test('undici aborts a request when its deadline expires', async () => {
  const server = createServer(() => { /* never answers */ });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const pool = new Pool(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  const wheel = new DeadlineWheel();
  const d = wheel.start(100, (dl) => dl.abort(new Error('deadline passed')));
  const t0 = Date.now();
  await assert.rejects(pool.request({ method: 'GET', path: '/', signal: d as unknown as AbortSignal }), /deadline passed/);
  assert.ok(Date.now() - t0 < 2000);
  await pool.destroy();
  server.closeAllConnections();
  server.close();
});
