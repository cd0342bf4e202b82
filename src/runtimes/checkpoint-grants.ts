// Checkpoints served by Berth to the instances that restore them (issue 13): instead of a path
// bound into its sandbox, a worker may get {url, sha256, token} and fetch its blob from
// GET /internal/v1/instances/{instanceId}/checkpoint (src/api/internal.ts), authenticated by its
// instance secret (no user token works there), then verify the sha256 as it streams in. A grant
// names exactly one blob, that of the revision the instance runs, and lasts while it runs.
import { timingSafeEqual } from 'node:crypto';

export interface CheckpointGrant { path: string; sha256: string }

/** How Berth listens, for runtimes whose workers run on other machines (swarm: see remoteBase there). */
export interface ListenInfo {
  /** The --host Berth bound (0.0.0.0 / :: / an address / a loopback address). */
  host: string;
  port: number;
  /** --advertise-url, when given. */
  advertiseUrl: string | null;
}

export class CheckpointGrants {
  private readonly grants = new Map<string, CheckpointGrant & { secret: Buffer }>();
  /** http://host:port of this Berth as instances reach it; null until it listens (or with TLS: not served). */
  private base: string | null = null;

  private listenInfo: ListenInfo | null = null;

  /** Called once Berth listens (`listen`: how, for workers on other machines; absent: the base is all there is). */
  serveAt(baseUrl: string, listen?: ListenInfo): void {
    this.base = baseUrl.replace(/\/+$/, '');
    this.listenInfo = listen ?? null;
  }

  /** The base URL as served (null: not served), and how Berth listens when it said so. */
  get served(): { base: string; listen: ListenInfo | null } | null {
    return this.base ? { base: this.base, listen: this.listenInfo } : null;
  }

  /** Where `instanceId` fetches its checkpoint, or null when Berth does not serve checkpoints (yet). */
  url(instanceId: string): string | null {
    return this.base ? `${this.base}/internal/v1/instances/${encodeURIComponent(instanceId)}/checkpoint` : null;
  }

  grant(instanceId: string, secret: string, g: CheckpointGrant): void {
    this.grants.set(instanceId, { ...g, secret: Buffer.from(secret, 'utf8') });
  }

  /** Ends a grant, unless the instance id was granted again since (a restart) with another secret. */
  revoke(instanceId: string, secret: string): void {
    const g = this.grants.get(instanceId);
    if (g && g.secret.equals(Buffer.from(secret, 'utf8'))) this.grants.delete(instanceId);
  }

  /** The blob `instanceId` may fetch with `presented` (constant-time compare), or null. */
  check(instanceId: string, presented: string): CheckpointGrant | null {
    const g = this.grants.get(instanceId);
    const p = Buffer.from(presented, 'utf8');
    if (!g || p.length !== g.secret.length || !timingSafeEqual(p, g.secret)) return null;
    return { path: g.path, sha256: g.sha256 };
  }
}
