import { FerryError } from './errors.js';

const STD = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * Strict base64: the standard alphabet (RFC 4648 section 4) with its padding,
 * in canonical form, and nothing else. Node's Buffer.from(s, 'base64') silently
 * skips garbage and also reads the URL-safe alphabet and unpadded text; this
 * refuses all of that, and non-canonical trailing bits, so that one byte string
 * has exactly one encoding, the one `base64 -w0` prints (docs/bundle-format.md).
 */
export function decodeBase64Strict(s: string, field = 'value'): Buffer {
  // Canonical padded standard base64 is exactly the text that re-encoding its decoded bytes gives back.
  if ((s.length & 3) === 0) {
    const buf = Buffer.from(s, 'base64');
    if (buf.toString('base64') === s) return buf;
  }
  if (!STD.test(s)) throw new FerryError('ENVELOPE_INVALID', `${field} is not padded standard base64`);
  throw new FerryError('ENVELOPE_INVALID', `${field} has non-canonical base64`);
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
