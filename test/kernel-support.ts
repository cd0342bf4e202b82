// A real Jupyter kernel for tests and benchmarks: test/kernel_driver.py (jupyter_client's
// KernelManager starting Debian's ipykernel under /usr/bin/python3) speaks the kernel protocol;
// this side sends it one cell at a time as a JSON line and reads the cell's outcome back.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { ROOT, PYTHON } from './helpers.js';

export interface CellResult { status: string; execution_count?: number; stdout: string; stderr: string; result: string | null; error: { ename: string; evalue: string } | null }

/** A kernel and the protocol driver in front of it; `run` sends one cell and waits for it. */
export class Kernel {
  private readonly lines: AsyncIterableIterator<string>;
  private queue: Promise<unknown> = Promise.resolve();
  /** The kernel process's pid (for CPU accounting), from the driver. */
  kernelPid: number | null = null;
  constructor(readonly proc: ChildProcess, private readonly stderr: () => string) {
    this.lines = createInterface({ input: proc.stdout! })[Symbol.asyncIterator]();
  }

  static async start(env: Record<string, string>): Promise<Kernel> {
    const proc = spawn(PYTHON, [join(ROOT, 'test/kernel_driver.py')], { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let err = '';
    proc.stderr!.on('data', (d) => { err += d; });
    const k = new Kernel(proc, () => err);
    const first = await Promise.race([k.lines.next(), new Promise<never>((_, rej) => setTimeout(() => rej(new Error(`kernel did not start: ${err}`)), 60_000))]);
    assert.ok(!first.done && JSON.parse(first.value).ready, `kernel did not start: ${err}`);
    k.kernelPid = JSON.parse(first.value).pid ?? null;
    return k;
  }

  run(code: string, timeout = 120): Promise<CellResult> {
    const next = this.queue.then(async () => {
      this.proc.stdin!.write(JSON.stringify({ code, timeout }) + '\n');
      const r = await this.lines.next();
      if (r.done) throw new Error(`the kernel driver exited: ${this.stderr()}`);
      return JSON.parse(r.value) as CellResult;
    });
    this.queue = next.catch(() => undefined);
    return next;
  }

  /** Runs a cell that must succeed. */
  async ok(code: string, timeout?: number): Promise<CellResult> {
    const r = await this.run(code, timeout);
    assert.equal(r.status, 'ok', `cell failed: ${code}\n${JSON.stringify(r, null, 1)}`);
    return r;
  }

  async close(): Promise<void> {
    if (this.proc.exitCode !== null) return;
    const exited = new Promise((r) => this.proc.once('exit', r));
    this.proc.stdin!.end(); // the driver shuts the kernel down and exits
    const t = setTimeout(() => this.proc.kill('SIGKILL'), 20_000);
    await exited;
    clearTimeout(t);
  }
}
