import { randomBytes, createHash } from 'node:crypto';

const ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';

/** A resource id: 20 lowercase alphanumerics, like the modelled platform's. */
export function newId(): string {
  const bytes = randomBytes(20);
  let id = '';
  // first char a letter, so ids never look like numbers
  id += ALPHABET[bytes[0]! % 26];
  for (let i = 1; i < 20; i++) id += ALPHABET[bytes[i]! % 36];
  return id;
}

/** A bearer token: shown once, stored only as its sha256. */
export function newToken(): string {
  return 'brt_' + randomBytes(24).toString('base64url');
}

export function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

export function nowIso(): string {
  return new Date().toISOString();
}
