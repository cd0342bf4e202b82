// PostgreSQL for tests: the machine's server (started by .ci/run), reached over its unix socket
// as the current user (a superuser role of that name); a fresh database per test file, dropped after.
import pg from 'pg';
import { randomBytes } from 'node:crypto';
import { userInfo } from 'node:os';

const SOCKET_DIR = process.env.BERTH_TEST_PG_HOST ?? '/var/run/postgresql';

export interface TestDatabase {
  /** postgres:// URL of the fresh database. */
  url: string;
  name: string;
  drop(): Promise<void>;
}

function urlOf(db: string): string {
  return `postgres://${userInfo().username}@${encodeURIComponent(SOCKET_DIR)}/${db}`;
}

/** Why PostgreSQL cannot be used here, or null. */
export async function pgProblem(): Promise<string | null> {
  const c = new pg.Client({ connectionString: urlOf('postgres') });
  try {
    await c.connect();
    await c.query('SELECT 1');
    return null;
  } catch (err) {
    return `PostgreSQL not reachable at ${SOCKET_DIR}: ${(err as Error).message}`;
  } finally {
    await c.end().catch(() => undefined);
  }
}

export async function freshDatabase(): Promise<TestDatabase> {
  const name = `berth_test_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: urlOf('postgres') });
  await admin.connect();
  try { await admin.query(`CREATE DATABASE ${name}`); } finally { await admin.end(); }
  return {
    url: urlOf(name),
    name,
    drop: async () => {
      const c = new pg.Client({ connectionString: urlOf('postgres') });
      await c.connect();
      try { await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`); } finally { await c.end(); }
    },
  };
}
