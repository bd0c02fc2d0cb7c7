import { FerryError } from './errors.js';

const NOT_STD = /[^A-Za-z0-9+/]/;

/**
 * Strict base64: the standard alphabet (RFC 4648 section 4) with its padding,
 * in canonical form, and nothing else. Node's Buffer.from(s, 'base64') silently
 * skips garbage and also reads the URL-safe alphabet and unpadded text; this
 * refuses all of that, and non-canonical trailing bits, so that one byte string
 * has exactly one encoding, the one `base64 -w0` prints (docs/bundle-format.md).
 * It allocates nothing but the decoded bytes: manifests reach 4 MiB.
 */
export function decodeBase64Strict(s: string, field = 'value'): Buffer {
  const pad = s.endsWith('==') ? 2 : s.endsWith('=') ? 1 : 0;
  if (s.length % 4 !== 0 || NOT_STD.test(pad === 0 ? s : s.slice(0, -pad)))
    throw new FerryError('ENVELOPE_INVALID', `${field} is not padded standard base64`);
  const buf = Buffer.from(s, 'base64');
  // Canonical: the unused bits of a padded last quantum are zero, so it re-encodes to itself.
  if (pad !== 0 && buf.subarray(buf.length - (3 - pad)).toString('base64') !== s.slice(-4))
    throw new FerryError('ENVELOPE_INVALID', `${field} has non-canonical base64`);
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
