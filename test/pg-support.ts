// PostgreSQL for tests: whether a server answers (skip on a laptop without one, fail in CI, like
// docker-support.ts's dockerProblem), and a fresh database per run (`berth_test_<random>`,
// created through the `postgres` database and dropped afterwards).
// BERTH_TEST_PG_URL points at the server's `postgres` database (default: the Unix socket in
// /var/run/postgresql as the current user, who must be allowed to create databases).
import { randomBytes } from 'node:crypto';
import { userInfo } from 'node:os';
import type { TestContext } from 'node:test';
import pg from 'pg';

export const PG_ADMIN_URL = process.env.BERTH_TEST_PG_URL
  ?? `postgres://${encodeURIComponent(userInfo().username)}@localhost/postgres?host=/var/run/postgresql`;

let available: Promise<string | null> | null = null;

/** Why PostgreSQL cannot be used here, or null when it answers. Asked once per process. */
export function pgProblem(): Promise<string | null> {
  available ??= (async () => {
    const c = new pg.Client({ connectionString: PG_ADMIN_URL, connectionTimeoutMillis: 3000 });
    try {
      await c.connect();
      await c.query('SELECT 1');
      return null;
    } catch (err) {
      return `PostgreSQL not reachable at ${PG_ADMIN_URL} (${(err as Error).message}): install postgresql, start it and create a superuser role for this user (see .ci/run)`;
    } finally {
      await c.end().catch(() => {});
    }
  })();
  return available;
}

/**
 * For a test that needs PostgreSQL. Without it: in CI (`CI` set) the test fails, elsewhere it is
 * skipped with the reason printed. Returns whether the test should go on.
 */
export async function requirePostgres(t: TestContext): Promise<boolean> {
  const problem = await pgProblem();
  if (!problem) return true;
  if (process.env.CI) throw new Error(`CI must have PostgreSQL: ${problem}`);
  console.log(`# skipping "${t.name}": ${problem}`);
  t.skip(problem);
  return false;
}

export interface TestDatabase {
  name: string;
  /** A URL for it (same server, user and socket as PG_ADMIN_URL). */
  url: string;
  drop(): Promise<void>;
}

async function admin<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: PG_ADMIN_URL, connectionTimeoutMillis: 5000 });
  await c.connect();
  try { return await fn(c); } finally { await c.end().catch(() => {}); }
}

/** A new empty database; drop() removes it even with connections still open (their pools are ended first by the test). */
export async function createTestDatabase(): Promise<TestDatabase> {
  const name = `berth_test_${randomBytes(6).toString('hex')}`;
  await admin((c) => c.query(`CREATE DATABASE ${name}`));
  const u = new URL(PG_ADMIN_URL);
  u.pathname = '/' + name;
  return {
    name, url: u.toString(),
    drop: () => admin(async (c) => { await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`); }),
  };
}
