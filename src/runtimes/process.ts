// The embedded runtime: each instance is a local Python process. Needs no Docker.
import { spawn } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { PYTHON_DIR } from '../core/config.js';
import type { ExitInfo, InstanceSpec, LogQuery, Runtime, RuntimeInstance } from './runtime.js';
import { DEFAULT_LOG_LIMITS, InstanceLog, pruneInstanceLogs, rotatedPaths, tailLines, type LogLimits } from './log-file.js';

// sockaddr_un.sun_path is 108 bytes; fall back to a short directory when home is deep.
const MAX_SOCKET_PATH = 100;

export class ProcessRuntime implements Runtime {
  readonly name = 'process';
  readonly supportsImages = false;
  private readonly logDir: string;
  private readonly socketDir: string;
  /** Logs being written, by instance id (closed when the instance's pipes end). */
  private readonly openLogs = new Map<string, InstanceLog>();

  constructor(home: string, private readonly logLimits: LogLimits = DEFAULT_LOG_LIMITS) {
    this.logDir = join(home, 'logs');
    let socketDir = join(home, 'run');
    if (socketDir.length + 30 > MAX_SOCKET_PATH) {
      socketDir = join(tmpdir(), 'berth-' + createHash('sha256').update(home).digest('hex').slice(0, 12));
    }
    this.socketDir = socketDir;
    mkdirSync(this.logDir, { recursive: true });
    mkdirSync(this.socketDir, { recursive: true, mode: 0o700 });
  }

  async check(): Promise<string | null> { return null; }

  /** Workers die with Berth (PR_SET_PDEATHSIG), so nothing is ever left to adopt. */
  async list(): Promise<RuntimeInstance[]> { return []; }

  unenforced(r: InstanceSpec['resources']): string[] {
    return [`the process runtime does not limit CPU or memory (requested ${r.cores} cores, ${r.memoryGb} GB${r.gpus ? `, ${r.gpus} GPU` : ''})`];
  }

  async start(spec: InstanceSpec): Promise<RuntimeInstance> {
    const w = spec.workload;
    if (w.kind !== 'cell') throw new Error('image nodes need a container runtime: start Berth with --runtime docker');
    const socketPath = join(this.socketDir, `${spec.instanceId}.sock`);
    rmSync(socketPath, { force: true });
    const logFile = this.logPath(spec.nodeId, spec.instanceId);
    mkdirSync(join(this.logDir, spec.nodeId), { recursive: true });
    // stdout/stderr go through pipes into a capped, rotated file (log-file.ts)
    const log = new InstanceLog(logFile, this.logLimits, `starting instance ${spec.instanceId} with ${w.python}`);
    this.openLogs.set(spec.instanceId, log);
    void pruneInstanceLogs(join(this.logDir, spec.nodeId), new Set(this.openLogs.keys()));
    const config = {
      socket: socketPath, checkpoint: w.checkpointPath, code: w.code, requires: w.requires,
      inputs: w.inputs, outputs: w.outputs, maxResponseBytes: w.maxResponseBytes, parentPid: process.pid,
    };
    const bootstrap = `import sys; sys.path.insert(0, ${JSON.stringify(PYTHON_DIR)}); import berth_worker; berth_worker.main()`;
    const child = spawn(w.python, ['-u', '-c', bootstrap], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, BERTH_WORKER_CONFIG: JSON.stringify(config), PYTHONUNBUFFERED: '1' },
      detached: true, // own process group, so a kill reaches anything the cell spawned
    });
    const exited = new Promise<ExitInfo>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
      child.once('error', (err) => {
        resolve({ code: null, signal: null, error: `cannot start ${w.python}: ${err.message}` });
        console.error(`[berth] instance ${spec.instanceId}: cannot start ${w.python}: ${err.message}`);
      });
    });
    log.attach([child.stdout, child.stderr], exited);
    void log.ended.then(() => { if (this.openLogs.get(spec.instanceId) === log) this.openLogs.delete(spec.instanceId); });
    return { nodeId: spec.nodeId, instanceId: spec.instanceId, endpoint: { path: socketPath }, ports: new Map(), pid: child.pid ?? null, exited };
  }

  async stop(instance: RuntimeInstance, graceMs: number): Promise<void> {
    signalGroup(instance.pid, 'SIGTERM');
    const timer = setTimeout(() => signalGroup(instance.pid, 'SIGKILL'), graceMs);
    await instance.exited;
    clearTimeout(timer);
    signalGroup(instance.pid, 'SIGKILL'); // anything the cell left behind in its group
    if (instance.endpoint.path) rmSync(instance.endpoint.path, { force: true });
  }

  kill(instance: RuntimeInstance): void {
    signalGroup(instance.pid, 'SIGKILL');
  }

  /** The last lines, read backwards from the end across rotated files: O(lines), never the whole file. */
  async logs(nodeId: string, instanceId: string, lines: number, query: LogQuery = {}): Promise<string> {
    return (await tailLines(rotatedPaths(this.logPath(nodeId, instanceId), this.logLimits.files), lines, query)).text;
  }

  follow(_nodeId: string, instanceId: string, onData: (chunk: Buffer) => void, onEnd: () => void): () => void {
    const log = this.openLogs.get(instanceId);
    if (!log) { queueMicrotask(onEnd); return () => undefined; }
    return log.follow(onData, onEnd);
  }

  async cleanup(nodeId: string): Promise<void> {
    // a process that escaped the group may still hold a pipe: cut it off, end followers
    const mine = [...this.openLogs.entries()].filter(([, l]) => l.path.startsWith(join(this.logDir, nodeId) + '/'));
    await Promise.all(mine.map(([id, l]) => { this.openLogs.delete(id); return l.close(); }));
    await rm(join(this.logDir, nodeId), { recursive: true, force: true });
  }

  private logPath(nodeId: string, instanceId: string): string {
    return join(this.logDir, nodeId, `${instanceId}.log`);
  }
}

function signalGroup(pid: number | null, signal: NodeJS.Signals): void {
  if (!pid) return;
  try { process.kill(-pid, signal); } catch { /* already gone */ }
}
