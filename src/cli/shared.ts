// What several CLI command groups use: the client for the server the global options name, the
// printer every command goes through (a table/line, or --json), option collectors, and the
// execute and wait-for-Healthy helpers. Kept apart so each group file holds only its commands.
import type { Command } from 'commander';
import { Client, findToken, serverUrl } from './client.js';
import { table } from './format.js';
import type { ExecuteAnswer, NodeView } from './views.js';

/** A client for the server named by --url (read when a command runs, after parsing). */
export const clientFor = (cli: Command) => (): Client => new Client(serverUrl(cli.opts<{ url?: string }>().url), findToken);

/** Every command prints through this: JSON with --json, else the human form. */
export const out = (json: boolean | undefined, data: unknown, human: () => string): void => {
  console.log(json ? JSON.stringify(data, null, 2) : human());
};

/** For repeatable options: each occurrence appends. */
export const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

/** The answer of an execute call: one row per output variable, or the raw JSON. */
export const printOutput = (json: boolean | undefined, r: ExecuteAnswer): void =>
  out(json, r, () => table(['OUTPUT', 'VALUE'], Object.entries(r.output ?? {}).map(([k, v]) => [k, JSON.stringify(v)])));

export const parseInput = (text: string): unknown => {
  try { return JSON.parse(text); } catch { throw new Error('--input must be a JSON object, e.g. --input \'{"x": 1}\''); }
};

/** Shows progress while instances start; gives up with the instances' last errors. */
export async function waitHealthy(c: Client, id: string, progress: boolean, timeoutS = Number(process.env.BERTH_WAIT_SECONDS ?? 300)): Promise<NodeView> {
  const started = Date.now();
  let last = '';
  for (;;) {
    const n = await c.request<NodeView>('GET', `/v1/nodes/${id}`);
    const line = `node ${n.name}: ${n.status} — ` + (n.instances.map((i) => i.status).join(', ') || 'no instances yet');
    if (progress && line !== last) { process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${line}\n`); last = line; }
    if (n.status === 'Healthy') return n;
    // the controller calls a node Unhealthy only once its instances fail (crash, failed checks):
    // say why now rather than at the timeout (the %%berth_deploy magic stops on the same rule)
    if (n.status === 'Unhealthy' && !n.instances.some((i) => i.status === 'Healthy')) {
      const why = n.instances.map((i) => i.lastError).filter(Boolean).at(-1) ?? n.transitions?.at(-1)?.reason ?? 'no reason given';
      throw new Error(`node ${n.name} cannot become Healthy: ${why} (berth node get ${id}; it keeps retrying)`);
    }
    if (Date.now() - started > timeoutS * 1000) {
      const errors = n.instances.map((i) => i.lastError).filter(Boolean);
      throw new Error(`node ${id} is not Healthy after ${timeoutS}s (${n.status})${errors.length ? `: ${errors[0]}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** The option nearly every command takes. */
export interface JsonOption { json?: boolean }
