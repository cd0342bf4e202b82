// The web dashboard end to end (issue 12): a real `berth up`, real Python instances, and
// Debian's Chromium driven by playwright-core. Signs in, creates a node from a checkpoint and
// watches it become Healthy without reloading, calls it from the try-it form, kills an
// instance and sees it go Unhealthy and recover, shifts an alias to 10% and sees the split
// move, checks what a viewer and an executor (and another folder) see, times the overview
// with 50 nodes, bounds the bundle, and checks deploy/'s Grafana and alert rules against
// /metrics. Screenshots of each main page go to docs/screenshots/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import type { Browser, Page } from 'playwright-core';
import { parse as parseYaml } from 'yaml';
import { ROOT, createNode, makeCheckpoint, removeHome, startBerth, tempHome, waitFor, type Berth } from './helpers.js';
import { LAB_CELLS, LAB_NODE } from './fixtures.js';
import { buildUi, launch, newPage, shot, signIn } from './ui-support.js';
import { SqliteStore } from '../src/store/sqlite.js';
import { parseNodeSpec } from '../src/core/node-spec.js';
import { DEFAULT_QUOTA } from '../src/folders/quotas.js';
import { UI_DIST } from '../src/ui/plugin.js';

/** Per test: a hang fails with the test's name instead of holding the suite (they take 1–35 s). */
const T = 150_000;
let b: Berth;
/** Servers a test starts besides `b`: stopped in after() too, should a test time out before its finally. */
const others: Berth[] = [];
let browser: Browser;
let admin: Page;
const pageErrors: string[] = [];
let nodeId = '';

before(async () => {
  buildUi();
  b = await startBerth();
  await makeCheckpoint(b, 'lab', LAB_CELLS);
  browser = await launch();
  const p = await newPage(browser);
  admin = p.page;
  p.page.on('pageerror', (e) => pageErrors.push(e.message));
}, { timeout: 240_000 });

after(async () => {
  for (const o of others) { await o.stop(); removeHome(o.home); }
  await browser?.close();
  await b?.stop();
  if (b) removeHome(b.home);
});

/** The status badge in a node page's title row. */
const nodeStatus = (page: Page) => page.locator('[data-testid=node-page] > .row .badge').first();

test('sign in, create a node from a checkpoint, watch it become Healthy without reloading, call it from the try-it form', { timeout: T }, async () => {
  // a wrong token is refused with the API's code
  await admin.goto(`${b.url}/ui/`);
  await admin.getByTestId('token-input').fill('not-a-token');
  await admin.getByTestId('sign-in').click();
  await admin.getByTestId('error').filter({ hasText: 'UNAUTHENTICATED' }).waitFor();

  await signIn(admin, b.url, b.token);
  await admin.getByTestId('live').filter({ hasText: 'live' }).waitFor();
  await admin.getByTestId('new-node').click();
  await admin.getByTestId('create-node').waitFor();
  await admin.getByTestId('create-checkpoint').locator('option', { hasText: 'lab' }).waitFor({ state: 'attached' });

  // a bad name: the API's validation message, naming the field
  await admin.getByTestId('create-name').fill('1 bad');
  await admin.getByTestId('create-submit').click();
  const err = admin.getByTestId('error');
  await err.filter({ hasText: 'INVALID_ARGUMENT' }).waitFor();
  assert.match(await err.textContent() ?? '', /field: name/);

  await admin.getByTestId('create-name').fill('scorer');
  for (const [list, name, type] of [['create-inputs', 'mode', 'str'], ['create-inputs', 'arg', 'any'], ['create-outputs', 'result', 'any']] as const) {
    await admin.getByTestId(`${list}-add`).click();
    await admin.getByTestId(`${list}-name`).last().fill(name);
    await admin.getByTestId(`${list}-type`).last().fill(type);
  }
  await shot(admin, 'create-node');
  await admin.getByTestId('create-submit').click();
  await admin.getByTestId('node-page').waitFor();
  // the same document from here on: a marker set now must survive until Healthy
  await admin.evaluate(() => { (window as unknown as { marker: number }).marker = 42; });
  const url = admin.url();
  nodeId = /#\/nodes\/([a-z0-9]+)/.exec(url)![1]!;
  const created = await b.request('GET', `/v1/nodes/${nodeId}`);
  assert.equal(created.body.name, 'scorer');
  assert.equal(created.body.checkpointId, (await b.request('GET', '/v1/checkpoints/lab')).body.id);
  // progress while it starts (it may be quick: either the progress box or Healthy already)
  await admin.locator('[data-testid=progress], [data-testid=node-page] > .row .badge[data-status=Healthy]').first().waitFor();
  await nodeStatus(admin).and(admin.locator('[data-status=Healthy]')).waitFor({ timeout: 60_000 });
  await admin.locator('[data-testid=instance-row][data-status=Healthy]').waitFor();
  assert.equal(await admin.evaluate(() => (window as unknown as { marker: number }).marker), 42, 'the page was not reloaded');

  // try it: the form has one field per declared input
  await admin.getByTestId('tab-try').click();
  await admin.getByTestId('try-field-mode').waitFor();
  await admin.getByTestId('try-field-mode').locator('input').fill('echo');
  await admin.getByTestId('try-field-arg').locator('textarea').fill('{"x": [1, 2, 3]}');
  await admin.getByTestId('try-call').click();
  await admin.getByTestId('try-output').waitFor();
  assert.deepEqual(JSON.parse(await admin.getByTestId('try-output').textContent() ?? ''), { result: { x: [1, 2, 3] } });
  await shot(admin, 'try-it');
  // an exception in the cell: the code, the message and the traceback
  await admin.getByTestId('try-field-mode').locator('input').fill('raise');
  await admin.getByTestId('try-field-arg').locator('textarea').fill('7');
  await admin.getByTestId('try-call').click();
  const failure = admin.getByTestId('error');
  await failure.filter({ hasText: 'EXECUTION_ERROR' }).waitFor();
  assert.match(await failure.textContent() ?? '', /ValueError/);
  assert.match(await failure.locator('pre.traceback').textContent() ?? '', /Traceback|line \d+/);
  // something to show in the logs and the charts
  for (let i = 0; i < 20; i++) {
    const r = await b.request('POST', `/datasphere/v1/nodes/${nodeId}:execute`, { folder_id: 'default', input: { mode: 'print', arg: `hello-from-ui-${i}` } });
    assert.equal(r.status, 200);
  }
  await admin.getByTestId('tab-logs').click();
  await admin.getByTestId('logs').filter({ hasText: 'cell says hello-from-ui-19' }).waitFor();
  await admin.getByTestId('log-search').fill('hello-from-ui-7');
  await waitFor('the search to narrow the logs', async () => {
    const text = await admin.getByTestId('logs').textContent() ?? '';
    return text.includes('hello-from-ui-7') && !text.includes('hello-from-ui-8');
  }, 10_000);
  // followed live: a new matching line appears without touching the page
  await b.request('POST', `/datasphere/v1/nodes/${nodeId}:execute`, { folder_id: 'default', input: { mode: 'print', arg: 'hello-from-ui-7 again' } });
  await admin.getByTestId('logs').filter({ hasText: 'hello-from-ui-7 again' }).waitFor();
  await shot(admin, 'logs');
  await admin.getByTestId('tab-overview').click();
  // the charts fill from the server's history (a sample every 2 s)
  await waitFor('calls in the node history', async () => {
    const h = await b.request('GET', `/v1/nodes/${nodeId}/metrics`);
    return h.body.points.some((p: { rps: number }) => p.rps > 0);
  }, 15_000);
  await admin.getByTestId('chart-rps').locator('canvas').waitFor();
  await admin.waitForTimeout(2500); // one more sample reaches the page
  await shot(admin, 'node');
  assert.deepEqual(pageErrors, []);
});

test("kill an instance's process: the page shows it Unhealthy, then recovered", { timeout: T }, async () => {
  assert.ok(nodeId, 'needs the node of the first test');
  await admin.goto(`${b.url}/ui/#/nodes/${nodeId}`);
  await nodeStatus(admin).and(admin.locator('[data-status=Healthy]')).waitFor();
  const before = (await b.request('GET', `/v1/nodes/${nodeId}`)).body.instances[0];
  // the page keeps every status it showed (node badge and instance row), so a short spell is
  // not missed between checks; an instance restart can take under a second on a quiet machine
  // (a string: tsx would wrap a named function inside a callback with a helper the page lacks)
  await admin.evaluate(`(() => {
    const seen = window.seen = [];
    const record = () => {
      const n = document.querySelector('[data-testid=node-page] > .row .badge')?.getAttribute('data-status');
      const i = [...document.querySelectorAll('[data-testid=instance-row]')].map((r) => r.getAttribute('data-status')).join('+');
      const s = n + '/' + i;
      if (n && seen[seen.length - 1] !== s) seen.push(s);
    };
    new MutationObserver(record).observe(document.body, { subtree: true, childList: true, attributes: true, characterData: true });
    record();
  })()`);
  process.kill(before.pid, 'SIGKILL');
  // out of service, live: the node Unhealthy or its instance no longer Healthy (restarting)
  await admin.waitForFunction(() => (window as unknown as { seen: string[] }).seen.some((s) => s.startsWith('Unhealthy/') || !s.endsWith('/Healthy')),
    undefined, { timeout: 30_000 });
  await shot(admin, 'node-unhealthy');
  await admin.waitForFunction(() => {
    const seen = (window as unknown as { seen: string[] }).seen;
    const out = seen.findIndex((s) => s.startsWith('Unhealthy/') || !s.endsWith('/Healthy'));
    return out >= 0 && seen.lastIndexOf('Healthy/Healthy') > out;
  }, undefined, { timeout: 60_000 });
  const seenLive = await admin.evaluate(() => (window as unknown as { seen: string[] }).seen);
  console.log(`# statuses the page showed after the kill: ${seenLive.join(' → ')}`);
  const row = admin.locator('[data-testid=instance-row][data-status=Healthy]').first();
  await row.waitFor();
  const after = (await b.request('GET', `/v1/nodes/${nodeId}`)).body.instances[0];
  assert.notEqual(after.pid, before.pid, 'a new process serves');
  assert.ok(after.restarts >= 1 || after.id !== before.id);
  // the status history on the Events tab has the Unhealthy spell too
  await admin.getByTestId('tab-events').click();
  await admin.getByTestId('transitions').locator('.badge[data-status=Unhealthy]').first().waitFor();
  const events = await b.request('GET', `/v1/nodes/${nodeId}/events?limit=20`);
  if (events.status === 404 && events.body.code === 'ROUTE_NOT_FOUND') {
    await admin.getByTestId('events-missing').waitFor();
  } else {
    assert.equal(events.status, 200);
    await admin.getByTestId('events').waitFor();
  }
  await shot(admin, 'events');
});

test('node events view (GET /v1/nodes/{ref}/events)', { timeout: T }, async (t) => {
  const r = await b.request('GET', `/v1/nodes/${nodeId}/events?limit=20`);
  if (r.status === 404 && r.body.code === 'ROUTE_NOT_FOUND') {
    t.skip('the node events API (h-scale) is not in this branch yet: the view is not tested here');
    return;
  }
  assert.equal(r.status, 200);
  await admin.goto(`${b.url}/ui/#/nodes/${nodeId}/events`);
  const table = admin.getByTestId('events');
  await table.waitFor();
  if (r.body.events.length > 0) await table.locator('tbody tr').filter({ hasText: r.body.events[0].type }).first().waitFor();
});

test('an alias: shift to 10% in two clicks and see the live split move; swap asks first', { timeout: T }, async () => {
  const v2 = await createNode(b, { ...LAB_NODE, name: 'scorer-v2', checkpointId: 'lab' });
  const made = await b.request('POST', '/v1/aliases', { name: 'scorer', backends: [{ nodeId, weight: 100 }] });
  assert.equal(made.status, 201, JSON.stringify(made.body));
  // calls through the alias all along (bounded in count and time)
  let stop = false;
  let calls = 0;
  const load = (async () => {
    const deadline = Date.now() + 90_000;
    while (!stop && Date.now() < deadline && calls < 20_000) {
      await b.request('POST', '/datasphere/v1/aliases/scorer:execute', { folder_id: 'default', input: { mode: 'echo', arg: 1 } });
      calls++;
      await new Promise((r) => setTimeout(r, 10)); // ~50-100 calls/s: a split to read, not a load test
    }
  })();
  try {
    await admin.goto(`${b.url}/ui/#/aliases/scorer`);
    const row = (name: string) => admin.locator(`[data-testid=backend-row][data-node="${name}"]`);
    await row('scorer').getByTestId('live-split').filter({ hasText: '100%' }).waitFor({ timeout: 20_000 });
    await admin.getByTestId('shift-node').selectOption(v2.id);
    await admin.getByTestId('shift-10').click();
    await admin.getByTestId('shift-apply').click();
    await row('scorer-v2').getByTestId('configured').filter({ hasText: '10%' }).waitFor();
    const alias = (await b.request('GET', '/v1/aliases/scorer')).body;
    const w = Object.fromEntries(alias.backends.map((x: { nodeId: string; weight: number }) => [x.nodeId, x.weight]));
    assert.equal(Math.round((w[v2.id] / (w[v2.id] + w[nodeId])) * 100), 10);
    // the live split follows the calls: v2 gets about a tenth of them
    await waitFor('the live split near 10%', async () => {
      const text = await row('scorer-v2').getByTestId('live-split').textContent() ?? '';
      const pct = Number(text.replace('%', ''));
      return pct >= 5 && pct <= 16;
    }, 40_000, 250);
    await admin.waitForTimeout(2000);
    await shot(admin, 'alias');
    // swap: a confirmation first, then one atomic change
    await admin.getByTestId('swap').click();
    await admin.getByTestId('confirm').waitFor();
    await admin.getByTestId('confirm-yes').click();
    await row('scorer-v2').getByTestId('configured').filter({ hasText: '90%' }).waitFor();
  } finally {
    stop = true;
    await load;
  }
  assert.ok(calls > 20);
  // mirroring: every call also goes to the shadow; the page shows what was compared
  const mirrored = await b.request('PATCH', '/v1/aliases/scorer', { mirror: { nodeId: v2.id, percent: 100 } });
  assert.equal(mirrored.status, 200, JSON.stringify(mirrored.body));
  for (let i = 0; i < 10; i++) {
    assert.equal((await b.request('POST', '/datasphere/v1/aliases/scorer:execute', { folder_id: 'default', input: { mode: 'echo', arg: i } })).status, 200);
  }
  const mirror = admin.getByTestId('mirror');
  await mirror.waitFor();
  await waitFor('compared mirrored calls on the page', async () => {
    const cells = await mirror.locator('td').allTextContents();
    return Number(cells[cells.indexOf('compared') + 1]) > 0;
  }, 15_000, 250);
  await shot(admin, 'alias-mirror');
  assert.equal((await b.request('PATCH', '/v1/aliases/scorer', { mirror: null })).status, 200);
  await mirror.waitFor({ state: 'detached' });
});

test('a viewer sees no edit controls; another folder and an executor see none of these nodes', { timeout: T }, async () => {
  const token = async (roles: Record<string, string>): Promise<string> => {
    const r = await b.request('POST', '/v1/tokens', { name: Object.values(roles).join('-'), roles });
    assert.equal(r.status, 201);
    return r.body.token;
  };
  const viewer = await token({ default: 'viewer' });
  const otherViewer = await token({ 'team-b': 'viewer' });
  const executor = await token({ 'team-b': 'executor' });

  const v = await newPage(browser);
  await signIn(v.page, b.url, viewer);
  await v.page.locator('[data-testid=node-row][data-node=scorer]').waitFor();
  assert.equal(await v.page.getByTestId('new-node').count(), 0);
  await v.page.goto(`${b.url}/ui/#/nodes/${nodeId}`);
  await v.page.getByTestId('node-page').waitFor();
  await v.page.getByTestId('instances').waitFor();
  assert.equal(await v.page.getByTestId('actions').count(), 0, 'no scale/update/suspend/delete');
  assert.equal(await v.page.getByTestId('tab-try').count(), 0, 'a viewer may not call');
  await v.page.goto(`${b.url}/ui/#/aliases/scorer`);
  await v.page.getByTestId('backends').waitFor();
  assert.equal(await v.page.getByTestId('shift-apply').count(), 0);
  assert.equal(await v.page.getByTestId('alias-delete').count(), 0);
  assert.ok(await v.page.getByTestId('weight-slider').first().isDisabled());
  await v.page.goto(`${b.url}/ui/#/checkpoints`);
  await v.page.locator('[data-testid=checkpoint-row][data-name=lab]').waitFor();
  assert.equal(await v.page.getByTestId('checkpoint-delete').count(), 0);
  // and the API refuses what the page hides
  const refused = await b.request('PATCH', `/v1/nodes/${nodeId}`, { description: 'x' }, { authorization: `Bearer ${viewer}` });
  assert.equal(refused.status, 403);
  assert.deepEqual(v.errors, []);

  // a viewer of another folder: no node, no alias, and the node's page and history are "not found"
  const o = await newPage(browser);
  await signIn(o.page, b.url, otherViewer);
  await o.page.getByTestId('nodes-table').locator('td.muted', { hasText: 'No nodes' }).waitFor();
  assert.equal(await o.page.getByTestId('node-row').count(), 0);
  assert.equal(await o.page.getByTestId('alias-row').count(), 0);
  await o.page.goto(`${b.url}/ui/#/nodes/${nodeId}`);
  await o.page.getByTestId('not-found').waitFor();
  const history = await b.request('GET', `/v1/nodes/${nodeId}/metrics`, undefined, { authorization: `Bearer ${otherViewer}` });
  assert.equal(history.status, 404);
  assert.equal(history.body.code, 'NODE_NOT_FOUND');
  const aliasHistory = await b.request('GET', '/v1/aliases/scorer/metrics', undefined, { authorization: `Bearer ${otherViewer}` });
  assert.equal(aliasHistory.status, 404);
  // the stream itself carries nothing of folder default
  const abort = new AbortController();
  const res = await fetch(`${b.url}/v1/watch`, { headers: { authorization: `Bearer ${otherViewer}` }, signal: abort.signal });
  assert.equal(res.status, 200);
  const reader = res.body!.getReader();
  let text = '';
  while (!text.includes('event: aliases')) text += new TextDecoder().decode((await reader.read()).value);
  assert.ok(!text.includes(nodeId) && !text.includes('scorer'), text);
  // revoking the token ends its open stream (it does not keep receiving until the page reloads)
  const who = await b.request('GET', '/v1/whoami', undefined, { authorization: `Bearer ${otherViewer}` });
  assert.equal((await b.request('DELETE', `/v1/tokens/${who.body.id}`)).status, 200);
  const ended = await Promise.race([
    (async () => { for (;;) { const r = await reader.read(); if (r.done) return true; text += new TextDecoder().decode(r.value); } })(),
    new Promise<false>((r) => setTimeout(() => r(false), 10_000)),
  ]);
  abort.abort();
  assert.ok(ended, 'the stream ended');
  assert.match(text, /event: error\ndata: \{"code":"UNAUTHENTICATED"/);
  // and its open page says so instead of retrying for ever
  await o.page.getByTestId('live-error').filter({ hasText: 'UNAUTHENTICATED' }).waitFor({ timeout: 15_000 });

  // an executor may call but not read: nothing listed, and it says why
  const e = await newPage(browser);
  await signIn(e.page, b.url, executor);
  await e.page.getByTestId('execute-only').waitFor();
  assert.equal(await e.page.getByTestId('node-row').count(), 0);
  assert.equal(await e.page.getByTestId('new-node').count(), 0);
  for (const p of [v, o, e]) await p.page.context().close();
});

test('node actions from the page: update with a preview, scale, suspend and resume, delete refused with the API\'s code', { timeout: T }, async () => {
  const v2 = (await b.request('GET', '/v1/nodes/scorer-v2')).body;
  await admin.goto(`${b.url}/ui/#/nodes/${v2.id}`);
  await nodeStatus(admin).and(admin.locator('[data-status=Healthy]')).waitFor();
  // update: a merge patch, previewed (dry run) before it is applied
  await admin.getByTestId('edit').click();
  await admin.getByTestId('edit-json').fill('{"description": "the canary"}');
  await admin.getByTestId('edit-preview').click();
  const plan = admin.getByTestId('edit-plan');
  await plan.filter({ hasText: 'Applies in place' }).waitFor();
  assert.match(await plan.textContent() ?? '', /description/);
  assert.equal((await b.request('GET', `/v1/nodes/${v2.id}`)).body.description, '', 'a preview changes nothing');
  await admin.getByTestId('edit-apply').click();
  await admin.locator('[data-testid=node-page] > p', { hasText: 'the canary' }).waitFor();
  // a bad patch: the API's message naming the field, nothing changed
  await admin.getByTestId('edit').click();
  await admin.getByTestId('edit-json').fill('{"scaling": {"minInstances": 3, "maxInstances": 2}}');
  await admin.getByTestId('edit-apply').click();
  await admin.getByTestId('error').filter({ hasText: 'scaling.maxInstances' }).waitFor();
  await admin.getByRole('button', { name: 'Cancel' }).click();
  // scale
  await admin.getByTestId('scale-max').fill('2');
  await admin.getByTestId('scale').click();
  await waitFor('maxInstances 2', async () => (await b.request('GET', `/v1/nodes/${v2.id}`)).body.scaling.maxInstances === 2, 10_000);
  // suspend asks first; resume brings it back
  await admin.getByTestId('suspend').click();
  await admin.getByTestId('confirm').waitFor();
  await admin.getByTestId('confirm-yes').click();
  await nodeStatus(admin).and(admin.locator('[data-status=Suspended]')).waitFor({ timeout: 30_000 });
  await admin.getByTestId('resume').click();
  await nodeStatus(admin).and(admin.locator('[data-status=Healthy]')).waitFor({ timeout: 60_000 });
  // delete asks first; an alias still uses it, so the API refuses and the page says why
  await admin.getByTestId('delete').click();
  await admin.getByTestId('confirm-yes').click();
  await admin.getByTestId('error').filter({ hasText: 'NODE_IN_USE' }).waitFor();
  assert.equal((await b.request('GET', `/v1/nodes/${v2.id}`)).status, 200);
  assert.deepEqual(pageErrors, []);
});

test('checkpoints, tokens and secrets, usage: the pages an admin has', { timeout: T }, async (t) => {
  await admin.goto(`${b.url}/ui/#/checkpoints`);
  await admin.locator('[data-testid=checkpoint-row][data-name=lab]').waitFor();
  await admin.locator('[data-testid=checkpoint-row][data-name=lab] a code').click();
  await admin.locator('tr.more').waitFor();
  await shot(admin, 'checkpoints');
  // deleting asks first, and a checkpoint in use is refused with the API's code
  await admin.locator('[data-testid=checkpoint-row][data-name=lab]').getByTestId('checkpoint-delete').click();
  await admin.getByTestId('confirm-yes').click();
  await admin.getByTestId('error').filter({ hasText: 'CHECKPOINT_IN_USE' }).waitFor();

  await admin.goto(`${b.url}/ui/#/admin`);
  await admin.getByTestId('token-name').fill('ci-reader');
  await admin.getByTestId('token-folder').fill('default');
  await admin.getByTestId('token-create').click();
  await admin.getByTestId('token-made').waitFor();
  await admin.getByTestId('secret-name').fill('registry-password');
  await admin.getByTestId('secret-value').fill('s3cret-value');
  await admin.getByTestId('secret-create').click();
  await admin.locator('[data-testid=secret-row]', { hasText: 'registry-password' }).waitFor();
  assert.equal(await admin.getByTestId('secret-value').inputValue(), '', 'the form forgets the value');
  assert.ok(!(await admin.locator('table').allTextContents()).join(' ').includes('s3cret-value'), 'the value is never listed');
  await shot(admin, 'tokens-secrets');

  const usage = await b.request('GET', '/v1/usage?groupBy=folder');
  await admin.goto(`${b.url}/ui/#/usage`);
  if (usage.status === 404 && usage.body.code === 'ROUTE_NOT_FOUND') {
    await admin.getByTestId('usage-missing').waitFor();
    t.skip('the usage API (h-usage) is not in this branch yet: the usage view is not tested against data');
    return;
  }
  await admin.getByTestId('usage-table').waitFor();
  if (usage.body.rows?.length) await admin.getByTestId('usage-row').first().waitFor();
  await shot(admin, 'usage');
});

test('the overview with 50 nodes renders in under 1 s', { timeout: T }, async () => {
  // 50 suspended nodes written to a fresh store before `berth up` (cheap: no instance starts)
  const home = tempHome();
  const store = new SqliteStore(join(home, 'berth.db'));
  await store.migrate();
  const now = new Date().toISOString();
  for (let i = 0; i < 50; i++) {
    const spec = parseNodeSpec({ ...LAB_NODE, name: `bulk-${String(i).padStart(2, '0')}`, checkpointId: 'c0000000000000000000' },
      { defaultFolder: 'default', defaultProject: 'default', defaultPython: '/usr/bin/python3' });
    await store.insertNode({
      id: `bulk${String(i).padStart(16, '0')}`, spec, revision: 1, rollout: null, status: 'Suspended',
      transitions: [{ status: 'Suspended', at: now }], createdAt: now, updatedAt: now, createdBy: 'test',
    }, { ...DEFAULT_QUOTA, maxNodes: 100, maxInstances: 1000 });
  }
  await store.close();
  const big = await startBerth(home);
  others.push(big);
  try {
    const { page, errors } = await newPage(browser);
    await page.addInitScript((token) => {
      sessionStorage.setItem('berth.token', token);
      new MutationObserver((_m, obs) => {
        if (document.querySelectorAll('[data-testid=node-row]').length === 50) {
          (window as unknown as { rendered: number }).rendered = performance.now();
          obs.disconnect();
        }
      }).observe(document, { subtree: true, childList: true });
    }, big.token);
    const times: number[] = [];
    for (let run = 0; run < 9; run++) {
      await page.goto(`${big.url}/ui/`);
      const ms = await page.waitForFunction(() => (window as unknown as { rendered?: number }).rendered, undefined, { timeout: 10_000 });
      times.push(Number(await ms.jsonValue()));
    }
    assert.equal(await page.getByTestId('node-row').count(), 50);
    await shot(page, 'overview-50');
    // the first load is cold (nothing cached, the server's code paths not yet compiled); the
    // budget is for the page as users meet it again and again: the median of the other eight
    // (several, spread over seconds, so a burst of other work on a shared machine does not decide it)
    const warm = times.slice(1).sort((x, y) => x - y);
    const median = (warm[3]! + warm[4]!) / 2;
    console.log(`# overview with 50 nodes: rendered ${times.map((t) => t.toFixed(0)).join(', ')} ms after navigation start (first cold); median warm ${median.toFixed(0)} ms`);
    assert.ok(median < 1000, `rendered in ${times.join(', ')} ms`);
    assert.deepEqual(errors, []);
    await page.context().close();
  } finally {
    await big.stop();
    removeHome(home);
  }
});

test('with --gateway-workers 2: the stream crosses the relay and the numbers are summed over the workers', { timeout: T }, async () => {
  const w = await startBerth(undefined, { BERTH_GATEWAY_WORKERS: '2' });
  others.push(w);
  try {
    await makeCheckpoint(w, 'lab', LAB_CELLS);
    const { page, errors } = await newPage(browser);
    await signIn(page, w.url, w.token);
    const node = await createNode(w, { ...LAB_NODE, name: 'spread', checkpointId: 'lab' }, false);
    const row = page.locator('[data-testid=node-row][data-node=spread]');
    await row.locator('.badge[data-status=Healthy]').waitFor({ timeout: 60_000 });
    // the node has a point before the calls: every point with calls then has one before it, and
    // its interval is known (a node's first point covers an interval the points alone do not
    // show: two sample periods when a sample was skipped, which undercounted the calls here)
    await waitFor('the node in the history', async () => ((await w.request('GET', `/v1/nodes/${node.id}/metrics`)).body.points?.length ?? 0) > 0, 20_000, 200);
    // calls land on both workers (new connections each); the overview shows their sum
    let ok = 0;
    for (let i = 0; i < 60; i++) {
      const r = await fetch(`${w.url}/datasphere/v1/nodes/${node.id}:execute`, {
        method: 'POST', headers: { authorization: `Bearer ${w.token}`, 'content-type': 'application/json', connection: 'close' },
        body: JSON.stringify({ folder_id: 'default', input: { mode: 'echo', arg: i } }),
      });
      if (r.status === 200) ok++;
      await r.arrayBuffer();
    }
    assert.equal(ok, 60);
    // each point's rate is over the time since the point before it (samples are taken every
    // sampleSeconds, but a sample is timed when the workers have answered, so the spacing varies)
    let spacing: number[] = [];
    const h = await waitFor('60 calls in the history', async () => {
      const r = await w.request('GET', `/v1/nodes/${node.id}/metrics`);
      const points = r.body.points as Array<{ t: number; rps: number }>;
      spacing = points.map((p, i) => (i === 0 ? 0 : (p.t - points[i - 1]!.t) / 1000)); // the first point has no calls
      const sum = points.reduce((s, p, i) => s + p.rps * spacing[i]!, 0);
      return Math.round(sum) >= 60 ? sum : undefined;
    }, 20_000, 500);
    console.log(`# calls in the history: ${h.toFixed(2)}; seconds between samples ${spacing.map((x) => x.toFixed(2)).join(', ')}`);
    assert.equal(Math.round(h), 60, 'every call counted once, whichever worker served it');
    await page.waitForFunction(() => {
      const cell = document.querySelector('[data-testid=node-row][data-node=spread] td:nth-child(6)');
      return cell !== null && Number(cell.textContent) > 0;
    }, undefined, { timeout: 15_000 });
    assert.deepEqual(errors, []);
    await page.context().close();
  } finally {
    await w.stop();
    removeHome(w.home);
  }
});

test('the overview (screenshot with a live node and an alias)', { timeout: T }, async () => {
  await admin.goto(`${b.url}/ui/#/`);
  await admin.locator('[data-testid=node-row][data-node=scorer]').waitFor();
  await admin.locator('[data-testid=alias-row]').waitFor();
  await shot(admin, 'overview');
});

test('the bundle is under 300 KB gzipped; hashed assets are cached for a year, index.html is not; /ui needs no token, the stream does', { timeout: T }, async () => {
  const assets = readdirSync(join(UI_DIST, 'assets'));
  let gz = 0;
  for (const f of assets) gz += gzipSync(readFileSync(join(UI_DIST, 'assets', f)), { level: 9 }).length;
  console.log(`# dashboard bundle: ${assets.length} files, ${(gz / 1024).toFixed(1)} KB gzipped`);
  assert.ok(gz < 300 * 1024, `${gz} bytes gzipped`);

  const index = await fetch(`${b.url}/ui/`);
  assert.equal(index.status, 200);
  assert.equal(index.headers.get('cache-control'), 'no-cache');
  const html = await index.text();
  const js = /src="\/ui\/(assets\/[^"]+\.js)"/.exec(html)![1]!;
  const asset = await fetch(`${b.url}/ui/${js}`, { headers: { 'accept-encoding': 'gzip' } });
  assert.equal(asset.status, 200);
  assert.match(asset.headers.get('cache-control') ?? '', /max-age=31536000, immutable/);
  const etag = asset.headers.get('etag')!;
  assert.equal((await fetch(`${b.url}/ui/${js}`, { headers: { 'if-none-match': etag } })).status, 304);
  // a page route deep link gets the page; a missing file is a 404 in the catalogue's shape
  assert.equal((await fetch(`${b.url}/ui/nodes/abc`)).status, 200);
  const missing = await fetch(`${b.url}/ui/assets/nope.js`);
  assert.equal(missing.status, 404);
  assert.equal((await missing.json()).code, 'ROUTE_NOT_FOUND');
  // traversal stays inside the bundle
  const up = await fetch(`${b.url}/ui/..%2f..%2fpackage.json`);
  assert.notEqual(up.status, 200);
  assert.equal((await fetch(`${b.url}/`, { redirect: 'manual' })).headers.get('location'), '/ui/');

  const noToken = await fetch(`${b.url}/v1/watch`);
  assert.equal(noToken.status, 401);
  assert.equal((await noToken.json()).code, 'UNAUTHENTICATED');
  const badSince = await b.request('GET', `/v1/nodes/${nodeId}/metrics?since=yesterday`);
  assert.equal(badSince.status, 400);
  assert.equal(badSince.body.details.field, 'since');
});

test("deploy/: every metric the Grafana dashboard and the alert rules use exists on /metrics", { timeout: T }, async () => {
  const exposition = (await b.request('GET', '/metrics')).body as string;
  const families = new Set([...exposition.matchAll(/^# TYPE (\S+) (\w+)/gm)].map((m) => m[1]!));
  const exprs: string[] = [];
  const dashboard = JSON.parse(readFileSync(join(ROOT, 'deploy/grafana-dashboard.json'), 'utf8'));
  const walk = (x: unknown): void => {
    if (Array.isArray(x)) x.forEach(walk);
    else if (x && typeof x === 'object') for (const [k, v] of Object.entries(x)) { if ((k === 'expr' || k === 'definition') && typeof v === 'string') exprs.push(v); else walk(v); }
  };
  walk(dashboard);
  const rules = parseYaml(readFileSync(join(ROOT, 'deploy/prometheus-alerts.yml'), 'utf8'));
  for (const g of rules.groups) for (const r of g.rules) exprs.push(r.expr);
  assert.ok(exprs.length >= 10, `${exprs.length} expressions`);
  const FUNCTIONS = new Set(['sum', 'rate', 'irate', 'increase', 'by', 'without', 'histogram_quantile', 'le', 'on', 'ignoring', 'group_left', 'clamp_min', 'max', 'min', 'avg', 'count', 'and', 'or', 'unless', 'bool', 'vector', 'abs', 'topk', 'label_replace', 'time', 'delta', 'deriv', 'max_over_time', 'min_over_time', 'avg_over_time', 'absent', 'offset', 'label_values']);
  const used = new Set<string>();
  for (const e of exprs) {
    const stripped = e.replace(/\{[^}]*\}/g, '').replace(/"[^"]*"/g, '').replace(/\[[^\]]*\]/g, '').replace(/\b\d+(\.\d+)?(e[+-]?\d+)?\b/gi, '');
    for (const m of stripped.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*/g)) {
      if (!FUNCTIONS.has(m[0]) && !/^(node_id|alias_name|code|status|instance_id|job|instance|role)$/.test(m[0])) used.add(m[0]);
    }
  }
  assert.ok(used.size >= 6, [...used].join(', '));
  for (const name of used) {
    const family = name.replace(/_(bucket|sum|count|total)$/, '');
    assert.ok(families.has(family) || families.has(name), `${name} (used in deploy/) is not on /metrics`);
  }
});
