// A fast 32-bit string hash for rendezvous hashing (sticky keys over nodes and instances):
// FNV-1a with a final avalanche. Not for anything secret.

/** FNV-1a: a fast, stable 32-bit hash for rendezvous choices. */
export function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  // a final avalanche so similar keys spread
  h ^= h >>> 16; h = Math.imul(h, 0x85ebca6b); h ^= h >>> 13; h = Math.imul(h, 0xc2b2ae35); h ^= h >>> 16;
  return h >>> 0;
}
