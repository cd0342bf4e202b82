// The folder a typed or Open Inference Protocol call comes from, for protocols whose
// messages have no (or an optional) folder field: the message's folder_id, else the
// x-folder-id header (as header-routed calls carry it), else the token's folder when it
// holds exactly one. Anything else is ambiguous and refused naming the field.
import { BerthError } from '../../core/errors.js';
import type { TokenRecord } from '../../core/types.js';

export function callerFolder(token: TokenRecord, explicit: unknown, header: unknown): string {
  if (typeof explicit === 'string' && explicit.length > 0) return explicit;
  const h = Array.isArray(header) ? header[0] : header;
  if (typeof h === 'string' && h.length > 0) return h;
  // the token's one folder, whatever its role there: too small a role is then refused as for execute
  const folders = Object.keys(token.roles);
  if (folders.length === 1 && folders[0] !== '*') return folders[0]!;
  throw new BerthError('INVALID_ARGUMENT', 'the folder you call from is needed: send the x-folder-id header (or folder_id), or use a token of one folder', { field: 'x-folder-id' });
}
