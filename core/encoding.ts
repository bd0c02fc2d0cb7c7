import { FerryError } from './errors.js';

const STD = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const URL_SAFE = /^(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2}(?:==)?|[A-Za-z0-9_-]{3}=?)?$/;

/**
 * Strict base64: standard or URL-safe alphabet, canonical padding, nothing else.
 * Node's Buffer.from(s, 'base64') silently skips garbage; this refuses it, and
 * refuses non-canonical trailing bits so that one byte string has one encoding.
 */
export function decodeBase64Strict(s: string, field = 'value'): Buffer {
  // Fast path for what every signer sends (padded standard base64): if re-encoding the decoded bytes
  // gives `s` back, `s` is canonical standard base64 by construction, so the checks below would pass.
  // Anything else (URL-safe, unpadded, garbage) takes the full check and gets its exact answer.
  if ((s.length & 3) === 0) {
    const fast = Buffer.from(s, 'base64');
    if (fast.toString('base64') === s) return fast;
  }
  let buf: Buffer;
  if (STD.test(s)) buf = Buffer.from(s, 'base64');
  else if (URL_SAFE.test(s)) buf = Buffer.from(s, 'base64url');
  else throw new FerryError('ENVELOPE_INVALID', `${field} is not valid base64`);
  const canonical = buf.toString('base64');
  const unpadded = canonical.replace(/=+$/, '');
  const given = s.replace(/=+$/, '').replace(/-/g, '+').replace(/_/g, '/');
  if (given !== unpadded) throw new FerryError('ENVELOPE_INVALID', `${field} has non-canonical base64`);
  return buf;
}

const HEX = /^(?:[0-9a-f]{2})*$/;

export function decodeHex(s: string, bytes: number, field: string): Buffer {
  if (s.length !== bytes * 2 || !HEX.test(s)) {
    throw new FerryError('KEY_INVALID', `${field} must be ${bytes * 2} lowercase hex characters`);
  }
  return Buffer.from(s, 'hex');
}

export function isSha256Hex(s: unknown): s is string {
  return typeof s === 'string' && /^[0-9a-f]{64}$/.test(s);
}
