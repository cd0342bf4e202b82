// Tokens and what they may do. Tokens are stored only as sha256 hashes and kept in memory
// for the hot path; each holds a role per folder (the folder `*` stands for every folder).
import { existsSync, readFileSync, writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { BerthError } from './errors.js';
import { hashToken, newId, newToken, nowIso } from './ids.js';
import type { Role, TokenRecord } from './types.js';

/** Where tokens are kept: the part of the store Auth uses (core does not depend on store/). */
export interface TokenStore {
  insertToken(t: TokenRecord): Promise<void>;
  listTokens(): Promise<TokenRecord[]>;
  deleteToken(id: string): Promise<boolean>;
}

export const ADMIN_TOKEN_FILE = 'admin-token';

/** Verified raw tokens kept so a call does not hash its token again; bounded. */
const MAX_CACHED_TOKENS = 10_000;

/** What a request wants to do in a folder. */
export type Permission = 'read' | 'write' | 'execute' | 'admin';

/** admin: everything; editor: manage and call; executor: call only; viewer: read only. */
const GRANTS: Record<Role, ReadonlySet<Permission>> = {
  admin: new Set(['read', 'write', 'execute', 'admin']),
  editor: new Set(['read', 'write', 'execute']),
  executor: new Set(['execute']),
  viewer: new Set(['read']),
};

export class Auth {
  private byHash = new Map<string, TokenRecord>();
  private verified = new Map<string, TokenRecord>();
  private readonly listeners: Array<() => void> = [];

  /** Without a store (a gateway worker): tokens arrive from the primary through replace(). */
  constructor(private readonly store: TokenStore | null) {}

  async load(): Promise<void> {
    this.replace(await this.db().listTokens());
  }

  /** Swaps the whole token set (hashes and roles; never the raw tokens). */
  replace(records: readonly TokenRecord[]): void {
    const map = new Map<string, TokenRecord>();
    for (const t of records) map.set(t.hash, t);
    this.byHash = map;
    this.verified = new Map(); // a revoked token must not stay valid here
    this.changed();
  }

  /** Every token record: what gateway workers need to authenticate without the database. */
  records(): TokenRecord[] { return [...this.byHash.values()]; }

  /** Called after every change of the token set. */
  onChange(fn: () => void): void { this.listeners.push(fn); }

  private changed(): void { for (const fn of this.listeners) fn(); }

  private db(): TokenStore {
    if (!this.store) throw new BerthError('INTERNAL', 'tokens are managed by the primary process');
    return this.store;
  }

  /** On first start: create the admin token and store it readable only by its owner. */
  async ensureAdminToken(home: string): Promise<void> {
    const file = join(home, ADMIN_TOKEN_FILE);
    if (existsSync(file)) {
      const token = readFileSync(file, 'utf8').trim();
      if (this.byHash.has(hashToken(token))) return;
    }
    const { token } = await this.create('admin', { '*': 'admin' });
    writeFileSync(file, token + '\n', { mode: 0o600 });
    chmodSync(file, 0o600);
  }

  async create(name: string, roles: Record<string, Role>): Promise<{ record: TokenRecord; token: string }> {
    const token = newToken();
    const record: TokenRecord = { id: newId(), name, hash: hashToken(token), roles, createdAt: nowIso() };
    await this.db().insertToken(record);
    this.byHash.set(record.hash, record);
    this.changed();
    return { record, token };
  }

  async remove(id: string): Promise<boolean> {
    const ok = await this.db().deleteToken(id);
    if (ok) await this.load();
    return ok;
  }

  /** `Authorization: Bearer <token>` or `Api-Key <token>` (the modelled platform accepts both). */
  authenticate(header: string | string[] | undefined): TokenRecord {
    if (typeof header !== 'string' || header.length === 0) {
      throw new BerthError('UNAUTHENTICATED', 'missing Authorization header: send "Authorization: Bearer <token>"');
    }
    const space = header.indexOf(' ');
    const scheme = space > 0 ? header.slice(0, space).toLowerCase() : '';
    if (scheme !== 'bearer' && scheme !== 'api-key') {
      throw new BerthError('UNAUTHENTICATED', 'Authorization header must be "Bearer <token>" or "Api-Key <key>"');
    }
    const raw = header.slice(space + 1).trim();
    const cached = this.verified.get(raw);
    if (cached) return cached;
    const record = this.byHash.get(hashToken(raw));
    if (!record) throw new BerthError('UNAUTHENTICATED', 'invalid token');
    if (this.verified.size >= MAX_CACHED_TOKENS) this.verified.clear();
    this.verified.set(raw, record);
    return record;
  }

  /** Whether the token may do `what` in `folderId` (through its role there or on `*`). */
  static can(token: TokenRecord, folderId: string, what: Permission): boolean {
    const here = token.roles[folderId];
    if (here && GRANTS[here].has(what)) return true;
    const everywhere = token.roles['*'];
    return everywhere !== undefined && GRANTS[everywhere].has(what);
  }

  /** The admin of every folder: manages tokens and quotas. */
  static isSuperAdmin(token: TokenRecord): boolean {
    return token.roles['*'] === 'admin';
  }

  /** Folders the token may do `what` in; null means every folder. */
  static foldersFor(token: TokenRecord, what: Permission): string[] | null {
    if (token.roles['*'] && GRANTS[token.roles['*']].has(what)) return null;
    return Object.entries(token.roles).filter(([, r]) => GRANTS[r].has(what)).map(([f]) => f);
  }

  /** Calling a node or alias from `folderId` (the folder named in the call). */
  static mayExecute(token: TokenRecord, folderId: string): boolean {
    return Auth.can(token, folderId, 'execute');
  }
}
