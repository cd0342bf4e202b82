// Secrets (registry passwords…): AES-256-GCM at rest, with a key kept outside the
// database (BERTH_HOME/secret.key, owner-only). The API never returns a value.
import { createCipheriv, createDecipheriv, createHmac, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BerthError, invalidArgument } from '../core/errors.js';
import { newId, nowIso } from '../core/ids.js';
import { validateName } from '../core/node-spec.js';
import type { Secret } from '../core/types.js';
import type { SecretRecord, Store } from '../store/store.js';

const MAX_VALUE_BYTES = 64 * 1024;

export class Secrets {
  private readonly key: Buffer;

  /** `keyFile`: servers sharing a store share this file (`--secret-key-file`); default <home>/secret.key. */
  constructor(home: string, private readonly store: Store, keyFile: string | null = null) {
    this.key = loadSecretKey(home, keyFile);
  }

  /** A fingerprint of the key (not the key): servers sharing a store check they hold the same one. */
  keyCheck(): string {
    return createHmac('sha256', this.key).update('berth secret key check').digest('hex');
  }

  /** Names are unique per folder (the database's index decides). */
  async create(where: { folderId: string; projectId: string }, name: string, value: unknown, createdBy: string): Promise<Secret> {
    validateName(name);
    if (typeof value !== 'string' || value.length === 0) throw invalidArgument('value', 'must be a non-empty string');
    if (Buffer.byteLength(value) > MAX_VALUE_BYTES) throw invalidArgument('value', `must be at most ${MAX_VALUE_BYTES} bytes`);
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', this.key, iv);
    const body = Buffer.concat([cipher.update(value, 'utf8'), cipher.final()]);
    const record: SecretRecord = { id: newId(), folderId: where.folderId, projectId: where.projectId, name, createdAt: nowIso(), createdBy, ciphertext: Buffer.concat([iv, cipher.getAuthTag(), body]) };
    await this.store.insertSecret(record);
    return view(record);
  }

  /** The secrets of some folders (null: every folder). */
  async list(folders: string[] | null): Promise<Secret[]> {
    return (await this.store.listSecrets()).filter((s) => folders === null || folders.includes(s.folderId)).map(view);
  }

  async delete(folderId: string, name: string): Promise<Secret> {
    const s = await this.store.getSecretByName(folderId, name);
    if (!s) throw new BerthError('SECRET_NOT_FOUND', `secret ${name} not found`, { name });
    await this.store.deleteSecret(s.id);
    return view(s);
  }

  /** The plain value, for the runtime only (a registry login). */
  async reveal(folderId: string, name: string): Promise<string> {
    const s = await this.store.getSecretByName(folderId, name);
    if (!s) throw new BerthError('SECRET_NOT_FOUND', `secret ${name} not found`, { name });
    const iv = s.ciphertext.subarray(0, 12);
    const tag = s.ciphertext.subarray(12, 28);
    const decipher = createDecipheriv('aes-256-gcm', this.key, iv);
    decipher.setAuthTag(tag);
    return Buffer.concat([decipher.update(s.ciphertext.subarray(28)), decipher.final()]).toString('utf8');
  }

  async exists(folderId: string, name: string): Promise<boolean> {
    return (await this.store.getSecretByName(folderId, name)) !== undefined;
  }
}

/**
 * The server's 32-byte secret key (created on first use): `keyFile`, else <home>/secret.key.
 * Also read by the Swarm runtime, which derives instance secrets from it (docs/security.md).
 */
export function loadSecretKey(home: string, keyFile: string | null = null): Buffer {
  const file = keyFile ?? join(home, 'secret.key');
  if (!existsSync(file)) {
    // 'wx': whoever reads the key first (server or runtime) makes it, never both
    try { writeFileSync(file, randomBytes(32).toString('base64') + '\n', { mode: 0o600, flag: 'wx' }); } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
  const key = Buffer.from(readFileSync(file, 'utf8').trim(), 'base64');
  if (key.length !== 32) throw new Error(`${file} does not hold a 32-byte key`);
  return key;
}

function view(s: SecretRecord): Secret {
  return { id: s.id, name: s.name, folderId: s.folderId, projectId: s.projectId, createdAt: s.createdAt, createdBy: s.createdBy };
}
