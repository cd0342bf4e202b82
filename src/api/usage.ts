// GET /v1/usage: what each folder used — instance time per node and resources preset, calls,
// bytes in and out — over a range of hour buckets, grouped by node, folder or day
// (docs/usage.md). Any readable role (viewer and up) sees its folders' usage and no other's.
import type { FastifyInstance } from 'fastify';
import { Auth } from '../core/auth.js';
import { BerthError, invalidArgument } from '../core/errors.js';
import { validateFolder } from '../core/node-spec.js';
import type { UsageGroupBy } from '../usage/store.js';
import type { ApiDeps } from './deps.js';
import { Usage, errors, query, ref, route, usageQuery } from './schemas.js';

const QUERY_FIELDS = ['folder', 'folderId', 'from', 'to', 'groupBy'];
const GROUP_BY: readonly UsageGroupBy[] = ['node', 'folder', 'day'];
const DAY_MS = 86_400_000;
const HOUR_MS = 3_600_000;
/** Defaults: the last 30 days. */
const DEFAULT_RANGE_MS = 30 * DAY_MS;
/** A date (UTC midnight) or a date-time with its zone: a time without a zone would mean the server's. */
const ISO = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2}))?$/;

type Query = Record<string, string | string[] | undefined>;

export function usageRoutes(app: FastifyInstance, { store, usage }: ApiDeps): void {
  app.get<{ Querystring: Query }>('/v1/usage', {
    schema: route({
      tags: ['usage'], summary: "What the token's folders used: instance seconds, calls, bytes in and out (from/to ISO, groupBy node|folder|day)",
      querystring: query(usageQuery), response: { 200: ref(Usage), ...errors(400, 403) },
    }),
  }, async (req) => {
    const q = req.query ?? {};
    for (const k of Object.keys(q)) if (!QUERY_FIELDS.includes(k)) throw invalidArgument(k, `is not a query parameter of /v1/usage (${QUERY_FIELDS.join(', ')})`);
    const to = q.to === undefined ? Date.now() : instant(one(q, 'to'), 'to');
    const from = q.from === undefined ? to - DEFAULT_RANGE_MS : instant(one(q, 'from'), 'from');
    if (from >= to) throw invalidArgument('from', `must be before to (${new Date(to).toISOString()})`);
    const groupBy = (q.groupBy === undefined ? 'node' : one(q, 'groupBy')) as UsageGroupBy;
    if (!GROUP_BY.includes(groupBy)) throw invalidArgument('groupBy', `must be one of ${GROUP_BY.join(', ')}`);

    const readable = Auth.foldersFor(req.token, 'read');
    let folders: string[] | null = readable;
    const named = q.folder ?? q.folderId;
    if (named !== undefined) {
      const field = q.folder !== undefined ? 'folder' : 'folderId';
      if (q.folder !== undefined && q.folderId !== undefined) throw invalidArgument('folderId', 'name the folder once (folder or folderId)');
      const f = validateFolder(one(q, field), field);
      if (!Auth.can(req.token, f, 'read')) {
        throw new BerthError('PERMISSION_DENIED', `this token may not read folder ${f}`, { folderId: f, needs: 'read' });
      }
      folders = [f];
    } else if (readable !== null && readable.length === 0) {
      throw new BerthError('PERMISSION_DENIED', 'usage needs a role that may read (viewer or above) in some folder', { needs: 'read' });
    }
    await usage.flush(); // current to now: running instances' time and the calls counted so far
    // whole hour buckets: the one `from` falls in and every one that starts before `to`
    const rows = await store.queryUsage({ folders, from: Math.floor(from / HOUR_MS) * HOUR_MS, to, groupBy });
    return { from: new Date(from).toISOString(), to: new Date(to).toISOString(), groupBy, rows };
  });
}

/** One value for a query parameter (a repeated one is refused, not guessed at). */
function one(q: Query, field: string): string {
  const v = q[field];
  if (typeof v !== 'string') throw invalidArgument(field, 'must be given once');
  return v;
}

function instant(v: string, field: string): number {
  let ms = ISO.test(v) ? Date.parse(v) : NaN;
  // Date.parse rolls 2025-02-30 over into March: the calendar date must come back as written
  if (Number.isFinite(ms) && new Date(Date.parse(v.slice(0, 10))).toISOString().slice(0, 10) !== v.slice(0, 10)) ms = NaN;
  if (!Number.isFinite(ms)) throw invalidArgument(field, 'must be an ISO 8601 date (2025-01-31) or date-time with a zone (2025-01-31T12:00:00Z)', { value: v.slice(0, 64) });
  if (ms < 0) throw invalidArgument(field, 'must not be before 1970');
  return ms;
}
