// Notebook → endpoint through a REAL Jupyter kernel: Debian's ipykernel started by
// jupyter_client's KernelManager (test/kernel_driver.py), cells sent as execute_requests over
// the kernel protocol, the berth magics included. A real `berth up` takes the checkpoints and
// serves the nodes; a plain Python without IPython restores what the kernel saved.
import { test as nodeTest, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, PYTHON, startBerth, removeHome, tempHome, execute, waitFor, type Berth } from './helpers.js';
import { Kernel, type CellResult } from './kernel-support.js';

// Debian's python3-ipykernel + python3-jupyter-client (.ci/run installs them): missing in CI is a
// failure, on a laptop the file is skipped with the reason printed
const probe = spawnSync(PYTHON, ['-c', 'import ipykernel, jupyter_client'], { encoding: 'utf8' });
const missing = probe.status === 0 || process.env.CI ? false : `${PYTHON} lacks ipykernel/jupyter_client (apt-get install python3-ipykernel python3-jupyter-client)`;
if (missing) console.log(`# skipped: ${missing}`);
const test = (name: string, fn: () => Promise<void>): void => { nodeTest(name, { skip: missing }, fn); };

let b: Berth;
let k: Kernel;
const tokens: Record<string, string> = {};

async function token(name: string, body: Record<string, unknown>): Promise<string> {
  const r = await b.request('POST', '/v1/tokens', { name, ...body });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body.token;
}

const checkpoints = async (folder?: string): Promise<any[]> =>
  (await b.request('GET', `/v1/checkpoints${folder ? `?folderId=${folder}` : ''}`)).body.checkpoints;

/** Sets the token the kernel's magics use, without binding a name in its namespace. */
const useToken = (t: string): Promise<CellResult> => k.ok(`%env BERTH_TOKEN=${t}`);

before(async () => {
  if (missing) return;
  b = await startBerth(tempHome());
  tokens.other = await token('other-folder-editor', { folders: ['team-x'], role: 'editor' });
  tokens.executor = await token('default-executor', { folders: ['default'], role: 'executor' });
  k = await Kernel.start({ PYTHONPATH: join(ROOT, 'python'), BERTH_URL: b.url, BERTH_TOKEN: b.token });
  await k.ok('%load_ext berth_client');
});

after(async () => {
  await k?.close();
  await b?.stop();
  if (b) removeHome(b.home);
});

/** A plain Python: IPython, ipykernel and pickleshare cannot be imported in it. */
const PLAIN_PYTHON_PRELUDE = `
import sys
class _NoIPython:
    blocked = ("IPython", "ipykernel", "pickleshare", "jupyter_client", "zmq", "traitlets", "tornado")
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (a plain Python)", name=name)
        return None
sys.meta_path.insert(0, _NoIPython())
sys.path.insert(0, ${JSON.stringify(join(ROOT, 'python'))})
import berth_state, __main__
`;

function restoreInPlainPython(blobPath: string, then: string): { status: number | null; stdout: string; stderr: string } {
  const code = `${PLAIN_PYTHON_PRELUDE}
berth_state.restore(open(${JSON.stringify(blobPath)}, "rb").read(), __main__.__dict__)
${then}`;
  const r = spawnSync(PYTHON, ['-c', code], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('a kernel namespace with IPython names checkpoints without them and restores in a plain Python; the node serves it', async () => {
  await k.ok('offset = 41\ndef add(v):\n    return v + offset\n');
  await k.ok('x = 1');
  const shown = await k.ok('x + 1'); // an output: _, __, _4, Out[4]
  assert.equal(shown.result, '2');
  // IPython >= 8.x binds its own `open` in the namespace and lists it in user_ns_hidden
  // (interactiveshell.init_user_ns); Debian's 8.5 predates that, so do what it does — without
  // binding any name of our own
  await k.ok(`exec("import IPython.core.interactiveshell as s, IPython.core.getipython as g\\n"
     "f = getattr(s, '_modified_open', None) or g.get_ipython\\n"
     "ip = get_ipython(); ip.user_ns['open'] = ip.user_ns_hidden['open'] = f", {'get_ipython': get_ipython})`);

  // the bug, reproduced: pickling every name but dunders and IPython's history names (what
  // berth_state kept before it read the shell's user_ns_hidden) keeps IPython's `open`, which a
  // plain Python cannot load (the issue's "No module named 'pickleshare'" on IPython 8)
  const before = await k.ok(`exec("""
import berth_state, dill
old = {n: v for n, v in get_ipython().user_ns.items() if berth_state.is_user_variable(n)}
with open(${JSON.stringify(join(b.home, 'buggy.dill'))}, "wb") as f:
    f.write(dill.dumps(old))
print(sorted(old))
""", {"get_ipython": get_ipython})`);
  assert.match(before.stdout, /'open'/, 'the namespace holds IPython\'s open, as in the issue');
  const buggy = restoreInPlainPython(join(b.home, 'buggy.dill'), 'print("restored")');
  assert.notEqual(buggy.status, 0, 'a blob holding IPython\'s open needs IPython to load');
  assert.match(buggy.stderr, /ModuleNotFoundError: No module named 'IPython/);

  const saved = await k.ok('%%berth_checkpoint --name kernel-state\ny = add(x)\n');
  assert.match(saved.stdout, /saved checkpoint (\w+) \(kernel-state\): 4 variables/, saved.stdout + saved.stderr);
  const ck = (await b.request('GET', '/v1/checkpoints/kernel-state')).body;
  assert.deepEqual(ck.variables.map((v: any) => v.name).sort(), ['add', 'offset', 'x', 'y']);
  const required = ck.requires.map((p: any) => p.name.toLowerCase());
  for (const kernelOnly of ['ipython', 'ipykernel', 'pickleshare', 'pyzmq', 'jupyter-client', 'traitlets']) {
    assert.ok(!required.includes(kernelOnly), `${kernelOnly} is not required: ${required}`);
  }
  assert.equal(ck.cell.code, 'y = add(x)\n');
  assert.equal(typeof ck.cell.number, 'number');

  // what was saved loads in a Python that has no IPython at all
  const plain = restoreInPlainPython(join(b.home, 'checkpoints', `${ck.id}.dill`),
    `print(sorted(k for k in __main__.__dict__ if not k.startswith("__") and k not in ("sys", "berth_state")), add(1), y)
print([str(p) for p in berth_state.check_requirements(${JSON.stringify(ck.requires)}) if p.level == "error"])`);
  assert.equal(plain.status, 0, plain.stderr);
  assert.equal(plain.stdout, "['_NoIPython', 'add', 'offset', 'x', 'y'] 42 42\n[]\n");

  // checkpoint → node Healthy → call
  const created = await b.request('POST', '/v1/nodes', { name: 'from-kernel', checkpointId: 'kernel-state', inputs: [{ name: 'x', type: 'int' }], outputs: [{ name: 'y', type: 'int' }] });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  await waitFor('from-kernel Healthy', async () => (await b.request('GET', `/v1/nodes/${created.body.id}`)).body.status === 'Healthy', 60_000);
  assert.deepEqual((await execute(b, created.body.id, { x: 1 })).body, { output: { y: 42 } });
  assert.deepEqual((await execute(b, created.body.id, { x: 100 })).body, { output: { y: 141 } });
});

test('%berth_autocheckpoint: a checkpoint after each cell that changes the state, the newest N kept, pinned ones never pruned', async () => {
  const on = await k.ok('%berth_autocheckpoint on --keep 3');
  assert.match(on.stdout, /most recent 3 are kept/);
  // recordings run in a forked child while the kernel goes on; `status` waits for the one in flight
  const mine = async (): Promise<any[]> => {
    await k.ok('%berth_autocheckpoint status');
    return (await checkpoints()).filter((c) => c.autosave);
  };
  assert.equal((await mine()).length, 0, 'turning it on records nothing');

  await k.ok('a = 1');
  assert.equal((await mine()).length, 1);
  await k.ok('a'); // reads only: no snapshot, nothing recorded
  await k.ok('print(a)'); // calls something, but the state hashes the same: nothing recorded
  await k.ok('a + 0');
  assert.equal((await mine()).length, 1, 'cells that change nothing record nothing');
  const failed = await k.run('a = 99\n1 / 0');
  assert.equal(failed.status, 'error');
  assert.equal((await mine()).length, 1, 'a failed cell records nothing');

  await k.ok('b = a * 10');
  await k.ok('c = b + 1');
  await k.ok('items = [1, 2]');
  await k.ok('items.append(3)'); // a mutation with no name rebound is still a change
  const kept = await mine();
  assert.equal(kept.length, 3, 'only the most recent 3 are kept');
  assert.deepEqual(kept.map((c) => c.cell.code), ['c = b + 1', 'items = [1, 2]', 'items.append(3)']);
  assert.ok(kept.every((c) => c.name === null && c.pinned === false && c.source === 'kernel'));
  const session = kept[0].autosave.session;
  assert.ok(kept.every((c) => c.autosave.session === session && c.autosave.keep === 3));
  assert.ok(kept.every((c) => existsSync(join(b.home, 'checkpoints', `${c.id}.dill`))));

  // `berth checkpoint list` shows the cell that made each
  const cli = b.cli('checkpoint', 'list');
  assert.equal(cli.status, 0, cli.stderr);
  assert.match(cli.stdout, /CELL/);
  assert.match(cli.stdout, new RegExp(`\\[${kept[2].cell.number}\\] items\\.append\\(3\\)`));

  // pin the state after `c = b + 1`, then keep working: it survives the pruning
  const pinCell = await k.ok(`%berth_pin ${kept[0].id} state-with-c`);
  assert.match(pinCell.stdout, /pinned as 'state-with-c'/);
  for (const cell of ['d = 1', 'd = 2', 'd = 3', 'd = 4']) await k.ok(cell);
  await mine();
  const after = await checkpoints();
  const pinned = after.find((c) => c.name === 'state-with-c');
  assert.ok(pinned, 'the pinned autosave is kept');
  assert.equal(pinned.cell.code, 'c = b + 1');
  const unpinned = after.filter((c) => c.autosave && c.name === null);
  assert.deepEqual(unpinned.map((c) => c.cell.code), ['d = 2', 'd = 3', 'd = 4']);
  for (const c of kept.slice(1)) assert.ok(!existsSync(join(b.home, 'checkpoints', `${c.id}.dill`)), 'pruned blobs are deleted');

  const status = await k.ok('%berth_autocheckpoint status');
  assert.match(status.stdout, /autocheckpoint on, keeping 3; \d+ recorded, \d+ unchanged cells skipped, 0 failed/);
  assert.match(status.stdout, /pinned as 'state-with-c'/);

  // the pinned state backs a node: its cell serves (b comes in, c goes out)
  const node = await b.request('POST', '/v1/nodes', { name: 'from-autosave', checkpointId: 'state-with-c', inputs: [{ name: 'b', type: 'int' }], outputs: [{ name: 'c', type: 'int' }] });
  assert.equal(node.status, 201, JSON.stringify(node.body));
  await waitFor('from-autosave Healthy', async () => (await b.request('GET', `/v1/nodes/${node.body.id}`)).body.status === 'Healthy', 60_000);
  assert.deepEqual((await execute(b, node.body.id, { b: 5 })).body, { output: { c: 6 } });

  await k.ok('%berth_autocheckpoint off');
  const count = (await checkpoints()).length;
  await k.ok('e = 5');
  assert.equal((await checkpoints()).length, count, 'off records nothing');
});

test('%%berth_deploy creates the node, waits until Healthy and prints a curl line that works; again, it updates it', async () => {
  await k.ok('offset = 41\nv = 1');
  const first = await k.ok('%%berth_deploy adder --input v:int --output w:int\nw = add(v)\n', 180);
  assert.match(first.stdout, /created node adder \((\w+)\) in folder default/, first.stdout + first.stderr);
  assert.match(first.stdout, /node adder: Healthy/);
  assert.match(first.stdout, /is Healthy, revision 1\. Call it:/);
  const curl = first.stdout.slice(first.stdout.indexOf('curl -X POST'));
  assert.match(curl, /--data-raw '\{"folder_id": "default", "input": \{"v": 1\}\}'/, 'the example input is the kernel\'s own value');
  const call = (): { status: number | null; stdout: string; stderr: string } => {
    const r = spawnSync('bash', ['-c', curl], { env: { ...process.env, BERTH_TOKEN: b.token }, encoding: 'utf8', timeout: 30_000 });
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  };
  const r1 = call();
  assert.equal(r1.status, 0, r1.stderr);
  assert.deepEqual(JSON.parse(r1.stdout), { output: { w: 42 } });
  const node = (await b.request('GET', '/v1/nodes/adder')).body;
  assert.equal(node.status, 'Healthy');
  const ck = (await b.request('GET', `/v1/checkpoints/${node.checkpointId}`)).body;
  assert.match(ck.name, /^adder-\d{8}-\d{6}$/);
  assert.equal(ck.cell.code, 'w = add(v)\n');

  // change the state and deploy again: the same node, a new revision rolled out
  await k.ok('offset = 100');
  const second = await k.ok('%%berth_deploy adder --input v:int --output w:int\nw = add(v)\n', 180);
  assert.match(second.stdout, /updating node adder \(\w+\) to revision 2/, second.stdout + second.stderr);
  assert.match(second.stdout, /revision 2: \d+ new healthy, \d+ old — Complete|is Healthy, revision 2/);
  assert.match(second.stdout, /is Healthy, revision 2\. Call it:/);
  assert.equal((await b.request('GET', '/v1/nodes')).body.nodes.filter((n: any) => n.name === 'adder').length, 1);
  assert.deepEqual(JSON.parse(call().stdout), { output: { w: 101 } });

  // bad options change nothing and run nothing
  const bad = await k.ok('%%berth_deploy adder --input v --output w:int\nran = True\n');
  assert.match(bad.stderr, /--input takes name:type/);
  assert.equal((await k.ok('"ran" in dir()')).result, 'False');
  const noOut = await k.ok('%%berth_deploy adder --input v:int\nw = add(v)\n');
  assert.match(noOut.stderr, /at least one --output/);
  // a type the server refuses: the node is not changed and the checkpoint made for it is removed
  const before = (await checkpoints()).length;
  const refused = await k.ok('%%berth_deploy adder --input v:complex --output w:int\nw = add(v)\n');
  assert.match(refused.stderr, /not deployed: INVALID_ARGUMENT/);
  assert.equal((await checkpoints()).length, before);
  assert.equal((await b.request('GET', '/v1/nodes/adder')).body.revision, 2);
});

test('access: a token of another folder cannot deploy into this one; an executor cannot make checkpoints or nodes', async () => {
  const node = (await b.request('GET', '/v1/nodes/adder')).body;
  const before = (await checkpoints()).length;
  try {
    await useToken(tokens.other!);
    const cross = await k.ok('%%berth_deploy adder --folder default --input v:int --output w:int\nw = add(v)\n');
    assert.match(cross.stderr, /not deployed: PERMISSION_DENIED/);
    const crossCk = await k.ok('%%berth_checkpoint --name sneaky --folder default\nw = add(v)\n');
    assert.match(crossCk.stderr, /checkpoint not saved: PERMISSION_DENIED/);

    await useToken(tokens.executor!);
    const ckpt = await k.ok('%%berth_checkpoint --name exec-state\nw = add(v)\n');
    assert.match(ckpt.stderr, /checkpoint not saved: PERMISSION_DENIED/);
    const dep = await k.ok('%%berth_deploy exec-node --input v:int --output w:int\nw = add(v)\n');
    assert.match(dep.stderr, /not deployed: PERMISSION_DENIED/);
    // in the kernel itself (--sync): the refusal shows in the cell that made the change
    await k.ok('%berth_autocheckpoint on --sync');
    const cell = await k.ok('f = 1');
    assert.match(cell.stderr, /autocheckpoint turned off: PERMISSION_DENIED/);
    await k.ok('f = 2');
    assert.match((await k.ok('%berth_autocheckpoint status')).stdout, /autocheckpoint off/);
    // in a forked child (the default): the refusal is reported at the next cell
    await k.ok('%berth_autocheckpoint on');
    await k.ok('f = 3');
    const next = await k.ok('%berth_autocheckpoint status');
    assert.match(next.stderr, /autocheckpoint turned off: PERMISSION_DENIED/);
    assert.match(next.stdout, /autocheckpoint off/);
    // the API itself, as the executor: no node either
    const direct = await b.request('POST', '/v1/nodes', { name: 'exec-node', checkpointId: 'kernel-state', inputs: [{ name: 'x', type: 'int' }], outputs: [{ name: 'y', type: 'int' }] },
      { authorization: `Bearer ${tokens.executor}` });
    assert.equal(direct.status, 403);
    assert.equal(direct.body.code, 'PERMISSION_DENIED');
  } finally {
    await useToken(b.token);
    await k.ok('%berth_autocheckpoint off');
  }
  // nothing changed
  assert.equal((await checkpoints()).length, before);
  assert.equal((await checkpoints('team-x')).length, 0);
  const now = (await b.request('GET', '/v1/nodes/adder')).body;
  assert.equal(now.revision, node.revision);
  assert.equal(now.checkpointId, node.checkpointId);
  assert.equal((await b.request('GET', '/v1/nodes/exec-node')).status, 404);
});

test('hostile upload metadata: a bad cell or autosave is a 400 naming the field, and nothing is stored', async () => {
  const before = (await checkpoints()).length;
  const send = async (meta: Record<string, unknown>): Promise<{ status: number; body: any }> => {
    const body = Buffer.concat([Buffer.from(JSON.stringify({ code: 'y = 1\n', ...meta }) + '\n'), Buffer.from('not-dill')]);
    const res = await fetch(`${b.url}/v1/checkpoints:upload`, { method: 'POST', body, headers: { authorization: `Bearer ${b.token}`, 'content-type': 'application/vnd.berth.checkpoint' } });
    return { status: res.status, body: await res.json() };
  };
  for (const [meta, field] of [
    [{ autosave: { session: 'abc', keep: 0 } }, 'autosave.keep'],
    [{ autosave: { session: 'abc', keep: 1.5 } }, 'autosave.keep'],
    [{ autosave: { session: '../etc', keep: 2 } }, 'autosave.session'],
    [{ autosave: 'yes' }, 'autosave'],
    [{ autosave: { session: 'abc', keep: 2 }, name: 'pinned-autosave' }, 'name'],
    [{ cell: { number: -1, code: 'x' } }, 'cell.number'],
    [{ cell: { number: 1, code: 7 } }, 'cell.code'],
    [{ cell: [] }, 'cell'],
  ] as const) {
    const r = await send(meta);
    assert.equal(r.status, 400, JSON.stringify(r.body));
    assert.equal(r.body.details.field, field, JSON.stringify(r.body));
  }
  assert.equal((await checkpoints()).length, before);
  // an executor cannot upload at all, whatever the body
  const res = await fetch(`${b.url}/v1/checkpoints:upload`, { method: 'POST', body: '{"code":"x"}\nblob', headers: { authorization: `Bearer ${tokens.executor}`, 'content-type': 'application/vnd.berth.checkpoint' } });
  assert.equal(res.status, 403);
  assert.equal((await checkpoints()).length, before);
  // the kernel's own name list: a sanity check that the driver really is an IPython kernel
  const hidden = await k.ok('sorted(k for k in get_ipython().user_ns_hidden if k in ("In", "Out", "get_ipython", "exit", "quit"))');
  assert.equal(hidden.result, "['In', 'Out', 'exit', 'get_ipython', 'quit']");
  assert.ok(readFileSync(join(b.home, 'admin-token'), 'utf8').trim().length > 0);
});
