// Call deadlines on one shared timer per process (callDeadlines): calls' deadlines and how long
// a queued call may wait for a session. Every call used to arm its own setTimeout and create an
// AbortController (whose EventTarget signal is among the costliest objects on the call path).
// Calls with the same timeout expire in the order they started, so each timeout value keeps a
// FIFO list; one coarse tick expires list heads, and finishing a call unlinks it in O(1).
// A Deadline is also the call's abort signal: the dispatcher's queue, the upstream clients
// and the proxy listen to it.

/** How late a deadline may fire: the tick. Timeouts are whole seconds or tenths; 25 ms is noise. */
const TICK_MS = 25;

/** The subset of AbortSignal the call path uses; a Deadline implements it without EventTarget. */
export interface CallSignal {
  readonly aborted: boolean;
  readonly reason: unknown;
  addEventListener(type: 'abort', listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}

export class Deadline implements CallSignal {
  aborted = false;
  reason: unknown = undefined;
  /** Position in its list while armed. */
  prev: Deadline | null = null;
  next: Deadline | null = null;
  list: DeadlineList | null = null;
  private listeners: Array<() => void> | null = null;

  constructor(readonly expiresAt: number, readonly onExpire: ((d: Deadline) => void) | null) {}

  addEventListener(_type: 'abort', listener: () => void): void {
    (this.listeners ??= []).push(listener);
  }

  removeEventListener(_type: 'abort', listener: () => void): void {
    const l = this.listeners;
    if (!l) return;
    const i = l.indexOf(listener);
    if (i >= 0) l.splice(i, 1);
  }

  /** Aborts the call once: listeners run with `reason` set; later aborts are ignored. */
  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    const l = this.listeners;
    this.listeners = null;
    if (l) for (const fn of l) fn();
  }
}

/** The armed deadlines of one timeout value, oldest first. */
class DeadlineList {
  head: Deadline | null = null;
  tail: Deadline | null = null;

  push(d: Deadline): void {
    d.list = this;
    d.prev = this.tail;
    if (this.tail) this.tail.next = d; else this.head = d;
    this.tail = d;
  }

  unlink(d: Deadline): void {
    if (d.prev) d.prev.next = d.next; else this.head = d.next;
    if (d.next) d.next.prev = d.prev; else this.tail = d.prev;
    d.prev = d.next = null;
    d.list = null;
  }
}

export class DeadlineWheel {
  private readonly lists = new Map<number, DeadlineList>();
  private armed = 0;
  private timer: NodeJS.Timeout | null = null;

  /** A deadline `timeoutMs` from now; `onExpire` runs then unless the call ended first (`clear`). */
  start(timeoutMs: number, onExpire: (d: Deadline) => void): Deadline {
    // grouped by the tick: callers' own deadlines (grpc-timeout) vary per call and would each make a list
    const key = Math.ceil(timeoutMs / TICK_MS) * TICK_MS;
    const d = new Deadline(Date.now() + timeoutMs, onExpire);
    let list = this.lists.get(key);
    if (!list) { list = new DeadlineList(); this.lists.set(key, list); }
    list.push(d);
    if (++this.armed === 1 && !this.timer) {
      // kept alive while a deadline is armed, as a call's own setTimeout would be; stopped once none is
      this.timer = setInterval(() => this.tick(), TICK_MS);
    }
    return d;
  }

  /** The call ended: its deadline will not fire. Safe to call twice. */
  clear(d: Deadline): void {
    if (!d.list) return;
    d.list.unlink(d);
    this.armed--;
  }

  /** Deadlines armed now (for tests and shutdown). */
  get size(): number { return this.armed; }

  private tick(): void {
    const now = Date.now();
    const due: Deadline[] = [];
    for (const [key, list] of this.lists) {
      while (list.head && list.head.expiresAt <= now) {
        const d = list.head;
        list.unlink(d);
        this.armed--;
        due.push(d);
      }
      if (!list.head) this.lists.delete(key);
    }
    // a late tick (a busy loop) can find several lists due: fire in deadline order all the same
    if (due.length > 1) due.sort((a, b) => a.expiresAt - b.expiresAt);
    for (const d of due) d.onExpire?.(d);
    if (this.armed === 0 && this.timer) { clearInterval(this.timer); this.timer = null; }
  }
}

/** The process's one deadline timer: every call's deadline and queue wait. */
export const callDeadlines = new DeadlineWheel();
