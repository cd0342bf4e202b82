// Creating a node (a cell node from a pinned checkpoint by form, any node by its JSON spec)
// and an alias. The API validates; its messages are shown as they are, naming the field.
import { useEffect, useState } from 'preact/hooks';
import { ApiError, api, foldersWith } from '../api';
import { ErrorBox, Me, go, useAction } from '../common';
import { useLive } from '../store';
import type { Checkpoint } from './checkpoints';

const TYPES = ['int', 'float', 'str', 'bool', 'list', 'dict', 'bytes', 'any', 'ndarray', 'dataframe', 'list[int]', 'list[float]', 'list[str]'];

interface Var { name: string; type: string }

function Vars({ label, vars, set, testid }: { label: string; vars: Var[]; set: (v: Var[]) => void; testid: string }) {
  return (
    <fieldset data-testid={testid}>
      <legend>{label}</legend>
      {vars.map((v, i) => (
        <div class="row" key={i}>
          <input placeholder="name" value={v.name} onInput={(e) => set(vars.map((x, j) => (j === i ? { ...x, name: (e.target as HTMLInputElement).value } : x)))} data-testid={`${testid}-name`} />
          <input list="var-types" value={v.type} onInput={(e) => set(vars.map((x, j) => (j === i ? { ...x, type: (e.target as HTMLInputElement).value } : x)))} data-testid={`${testid}-type`} />
          <button type="button" onClick={() => set(vars.filter((_, j) => j !== i))}>remove</button>
        </div>
      ))}
      <button type="button" onClick={() => set([...vars, { name: '', type: 'str' }])} data-testid={`${testid}-add`}>add</button>
    </fieldset>
  );
}

export function CreateNode() {
  const me = Me.current;
  const params = new URLSearchParams(location.hash.split('?')[1] ?? '');
  const folders = foldersWith(me, 'write');
  const [mode, setMode] = useState<'form' | 'json'>('form');
  const [folder, setFolder] = useState(folders[0] ?? me?.defaultFolder ?? 'default');
  const [name, setName] = useState('');
  const [checkpoints, setCheckpoints] = useState<Checkpoint[]>([]);
  const [checkpoint, setCheckpoint] = useState(params.get('checkpoint') ?? '');
  const [inputs, setInputs] = useState<Var[]>([]);
  const [outputs, setOutputs] = useState<Var[]>([]);
  const [min, setMin] = useState('1');
  const [max, setMax] = useState('1');
  const [timeout, setTimeoutS] = useState('60');
  const [json, setJson] = useState('{\n  "kind": "image",\n  "name": "",\n  "image": "",\n  "endpoint": {"port": 8080, "protocol": "http"}\n}');
  const a = useAction();
  useEffect(() => { void api<{ checkpoints: Checkpoint[] }>('GET', '/v1/checkpoints').then((r) => setCheckpoints(r.checkpoints.filter((c) => c.pinned))).catch(() => undefined); }, []);
  const inFolder = checkpoints.filter((c) => c.folderId === folder);
  useEffect(() => { if (!inFolder.some((c) => c.id === checkpoint) && inFolder[0]) setCheckpoint(inFolder[0].id); }, [folder, checkpoints.length]);

  const submit = () => a.run(async () => {
    let spec: unknown;
    if (mode === 'json') {
      try { spec = JSON.parse(json); } catch (err) { throw new ApiError(400, { code: 'INVALID_JSON', message: (err as Error).message, details: { field: 'body' } }); }
    } else {
      spec = {
        kind: 'cell', name, folderId: folder, checkpointId: checkpoint, inputs, outputs, timeout: Number(timeout),
        scaling: { minInstances: Number(min), maxInstances: Number(max) },
      };
    }
    const n = await api<{ id: string }>('POST', '/v1/nodes', spec);
    go(`/nodes/${n.id}`);
  });
  const bad = a.error instanceof ApiError ? a.error.field : undefined;
  const mark = (f: string): string => (bad && (bad === f || bad.startsWith(`${f}.`) || bad.startsWith(`${f}[`)) ? 'invalid' : '');
  if (folders.length === 0 && me?.roles['*'] !== 'admin' && me?.roles['*'] !== 'editor') return <div class="page"><p class="note">This token may not create nodes.</p></div>;
  return (
    <div class="page" data-testid="create-node">
      <h2>New node</h2>
      <nav class="tabs">
        <a href="javascript:void 0" class={mode === 'form' ? 'on' : ''} onClick={() => setMode('form')}>Cell node from a checkpoint</a>
        <a href="javascript:void 0" class={mode === 'json' ? 'on' : ''} onClick={() => setMode('json')} data-testid="create-json-mode">Any node (JSON spec)</a>
      </nav>
      <datalist id="var-types">{TYPES.map((t) => <option key={t} value={t} />)}</datalist>
      <form class="form" onSubmit={(e) => { e.preventDefault(); void submit(); }}>
        {mode === 'form' ? (
          <>
            <label class={mark('name')}>name <input value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} data-testid="create-name" /></label>
            <label class={mark('folderId')}>folder
              {folders.length > 0
                ? <select value={folder} onChange={(e) => setFolder((e.target as HTMLSelectElement).value)} data-testid="create-folder">{folders.map((f) => <option key={f}>{f}</option>)}</select>
                : <input value={folder} onInput={(e) => setFolder((e.target as HTMLInputElement).value)} data-testid="create-folder" />}
            </label>
            <label class={mark('checkpointId')}>checkpoint
              <select value={checkpoint} onChange={(e) => setCheckpoint((e.target as HTMLSelectElement).value)} data-testid="create-checkpoint">
                {inFolder.length === 0 && <option value="">no pinned checkpoint in {folder}</option>}
                {inFolder.map((c) => <option key={c.id} value={c.id}>{c.name} ({c.variables.length} variables, Python {c.python})</option>)}
              </select>
            </label>
            <Vars label="inputs" vars={inputs} set={setInputs} testid="create-inputs" />
            <Vars label="outputs" vars={outputs} set={setOutputs} testid="create-outputs" />
            <div class="row">
              <label class={`inline ${mark('scaling')}`}>min instances <input type="number" min="0" value={min} onInput={(e) => setMin((e.target as HTMLInputElement).value)} data-testid="create-min" /></label>
              <label class={`inline ${mark('scaling')}`}>max instances <input type="number" min="1" value={max} onInput={(e) => setMax((e.target as HTMLInputElement).value)} data-testid="create-max" /></label>
              <label class={`inline ${mark('timeout')}`}>timeout (s) <input type="number" min="1" value={timeout} onInput={(e) => setTimeoutS((e.target as HTMLInputElement).value)} /></label>
            </div>
          </>
        ) : (
          <label>spec (as for POST /v1/nodes or berth apply)<textarea rows={16} value={json} onInput={(e) => setJson((e.target as HTMLTextAreaElement).value)} data-testid="create-json" /></label>
        )}
        <button type="submit" class="primary" disabled={a.busy} data-testid="create-submit">{a.busy ? 'Creating…' : 'Create'}</button>
      </form>
      <ErrorBox error={a.error} />
    </div>
  );
}

export function CreateAlias() {
  const l = useLive();
  const me = Me.current;
  const folders = foldersWith(me, 'write');
  const [name, setName] = useState('');
  const [folder, setFolder] = useState(folders[0] ?? me?.defaultFolder ?? 'default');
  const [backends, setBackends] = useState<Array<{ nodeId: string; weight: number }>>([]);
  const a = useAction();
  const nodes = [...l.nodes.values()].filter((n) => n.folderId === folder);
  return (
    <div class="page" data-testid="create-alias">
      <h2>New alias</h2>
      <form class="form" onSubmit={(e) => { e.preventDefault(); void a.run(async () => { await api('POST', '/v1/aliases', { name, folderId: folder, backends }); go(`/aliases/${encodeURIComponent(name)}`); }); }}>
        <label>name <input value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} data-testid="alias-name" /></label>
        <label>folder <input value={folder} onInput={(e) => setFolder((e.target as HTMLInputElement).value)} /></label>
        <fieldset><legend>backends</legend>
          {nodes.map((n) => {
            const b = backends.find((x) => x.nodeId === n.id);
            return (
              <div class="row" key={n.id}>
                <label class="inline"><input type="checkbox" checked={!!b} onChange={(e) => setBackends((e.target as HTMLInputElement).checked ? [...backends, { nodeId: n.id, weight: 100 }] : backends.filter((x) => x.nodeId !== n.id))} /> {n.name}</label>
                {b && <input type="number" min="1" value={b.weight} onInput={(e) => setBackends(backends.map((x) => (x.nodeId === n.id ? { ...x, weight: Number((e.target as HTMLInputElement).value) } : x)))} />}
              </div>
            );
          })}
          {nodes.length === 0 && <p class="muted">No nodes in {folder}.</p>}
        </fieldset>
        <button type="submit" class="primary" disabled={a.busy}>Create</button>
      </form>
      <ErrorBox error={a.error} />
    </div>
  );
}
