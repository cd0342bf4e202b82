// Hands out unprivileged uids from a configured range: each live sandbox (instance or
// checkpoint run) has its own, so two of them never share files, sockets or signals.

export class UidPool {
  private readonly used = new Set<number>();

  constructor(readonly first: number, readonly count: number) {
    if (!Number.isInteger(first) || first < 1000 || !Number.isInteger(count) || count < 1) {
      throw new Error(`sandbox uid range ${first}+${count}: needs integers, first ≥ 1000`);
    }
  }

  /** The lowest free uid of the range (gid is the same number). */
  take(): number {
    const own = process.getuid?.() ?? -1;
    for (let uid = this.first; uid < this.first + this.count; uid++) {
      if (uid === own || this.used.has(uid)) continue;
      this.used.add(uid);
      return uid;
    }
    throw new Error(`all ${this.count} sandbox uids from ${this.first} are in use`);
  }

  give(uid: number): void { this.used.delete(uid); }
}
