/**
 * The one `Range` header parser of the HTTP services (the mirror's blobs, the server's bundles over
 * a mirror's link): a single byte range (RFC 9110 14.1.2).
 */
export type RangeResult =
  { kind: 'none' } | { kind: 'partial'; start: number; end: number } | { kind: 'unsatisfiable' };

/**
 * One byte range of a `size`-byte body (RFC 9110 14.1.2), end inclusive.
 * A header that does not parse is ignored, as the RFC allows. A multi-range
 * request is answered with the whole body (200): clients of this API resume
 * one download at a time, and multipart/byteranges is not worth its parser.
 */
export function parseRange(header: string | undefined, size: number): RangeResult {
  if (!header) return { kind: 'none' };
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m) return { kind: 'none' }; // includes "bytes=0-1,5-6": served whole
  const [, a = '', b = ''] = m;
  if (a === '' && b === '') return { kind: 'none' };
  if (a === '') {
    const n = Number(b);
    if (n === 0 || size === 0) return { kind: 'unsatisfiable' };
    return { kind: 'partial', start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(a);
  const end = b === '' ? Infinity : Number(b);
  if (!Number.isSafeInteger(start) || end < start) return { kind: 'none' }; // "5-2" is invalid: ignored
  if (start >= size) return { kind: 'unsatisfiable' };
  return { kind: 'partial', start, end: Math.min(end, size - 1) };
}
