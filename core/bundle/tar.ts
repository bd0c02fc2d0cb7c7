import { FerryError } from '../errors.js';

/**
 * The strict POSIX ustar subset a ferry bundle uses: regular files only, short
 * names, no extended headers. Writer and reader live together so that what we
 * write is exactly what we accept.
 */
export const BLOCK = 512;
const USTAR_MAGIC = Buffer.from('ustar\x0000', 'latin1'); // magic "ustar\0" + version "00"
const MAX_OCTAL_SIZE = 8 ** 11 - 1; // 11 octal digits

export function paddingFor(size: number): number {
  const r = size % BLOCK;
  return r === 0 ? 0 : BLOCK - r;
}

function writeOctal(buf: Buffer, value: number, offset: number, length: number): void {
  buf.write(value.toString(8).padStart(length - 1, '0') + '\0', offset, length, 'latin1');
}

/** Encodes a regular-file header. Sizes of 8 GiB and more use the base-256 size field. */
export function encodeHeader(name: string, size: number, mtimeSec: number): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  if (nameBytes.length > 100) throw new Error(`tar entry name too long: ${name}`);
  const h = Buffer.alloc(BLOCK);
  nameBytes.copy(h, 0);
  writeOctal(h, 0o644, 100, 8);
  writeOctal(h, 0, 108, 8); // uid
  writeOctal(h, 0, 116, 8); // gid
  if (size <= MAX_OCTAL_SIZE) {
    writeOctal(h, size, 124, 12);
  } else {
    h[124] = 0x80;
    let v = BigInt(size);
    for (let i = 135; i > 124; i--) {
      h[i] = Number(v & 0xffn);
      v >>= 8n;
    }
  }
  writeOctal(h, mtimeSec, 136, 12);
  h.write('        ', 148, 8, 'latin1'); // checksum placeholder
  h[156] = 0x30; // '0' regular file
  USTAR_MAGIC.copy(h, 257);
  writeOctal(h, checksum(h), 148, 7);
  h[155] = 0x20;
  return h;
}

function checksum(h: Buffer): number {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i]!;
  return sum;
}

const TYPE_NAMES: Record<string, string> = {
  '1': 'hard link',
  '2': 'symbolic link',
  '3': 'character device',
  '4': 'block device',
  '5': 'directory',
  '6': 'FIFO',
  '7': 'contiguous file',
  x: 'pax extended header',
  g: 'pax global header',
  L: 'GNU long name',
  K: 'GNU long link name',
  S: 'GNU sparse file',
};

export interface TarHeader {
  name: string;
  size: number;
}

function parseOctal(field: Buffer, what: string): number {
  const s = field
    .toString('latin1')
    .replace(/[\0 ]+$/, '')
    .replace(/^ +/, '');
  if (!/^[0-7]{1,12}$/.test(s)) throw new FerryError('TAR_INVALID', `tar header ${what} field is not octal`);
  return parseInt(s, 8);
}

function parseSize(field: Buffer): number {
  if (field[0] === 0x80) {
    // base-256 (positive): the remaining 11 bytes, big-endian
    let v = 0n;
    for (let i = 1; i < field.length; i++) v = (v << 8n) | BigInt(field[i]!);
    // Saturate: anything this large is over every limit, and the caller names which one.
    return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
  }
  return parseOctal(field, 'size');
}

/** A NUL-terminated header string; bytes after the terminator must all be NUL. */
function cString(h: Buffer, offset: number, length: number): string {
  const field = h.subarray(offset, offset + length);
  const end = field.indexOf(0);
  if (end >= 0 && field.subarray(end).some((b) => b !== 0)) {
    throw new FerryError('ENTRY_NAME_FORBIDDEN', 'tar entry name contains a NUL byte');
  }
  const bytes = end >= 0 ? field.subarray(0, end) : field;
  const s = bytes.toString('utf8');
  if (!Buffer.from(s, 'utf8').equals(bytes))
    throw new FerryError('ENTRY_NAME_FORBIDDEN', 'tar entry name is not valid UTF-8');
  return s;
}

export function isZeroBlock(h: Buffer): boolean {
  for (let i = 0; i < h.length; i++) if (h[i] !== 0) return false;
  return true;
}

/** Decodes one header block; refuses anything that is not a plain ustar regular file. */
export function decodeHeader(h: Buffer): TarHeader {
  const stored = parseOctal(h.subarray(148, 156), 'checksum');
  if (stored !== checksum(h))
    throw new FerryError('TAR_INVALID', 'tar header checksum mismatch (corrupted archive)');
  if (!h.subarray(257, 265).equals(USTAR_MAGIC))
    throw new FerryError('TAR_INVALID', 'not a POSIX ustar header');
  const base = cString(h, 0, 100);
  const prefix = cString(h, 345, 155);
  const name = prefix ? `${prefix}/${base}` : base;
  const flag = String.fromCharCode(h[156]!);
  if (flag !== '0' && flag !== '\0') {
    const kind = TYPE_NAMES[flag] ?? `type ${JSON.stringify(flag)}`;
    throw new FerryError(
      'ENTRY_TYPE_FORBIDDEN',
      `entry ${JSON.stringify(name)} is a ${kind}; bundles hold regular files only`,
    );
  }
  if (prefix) {
    // One name, one encoding: ferry never writes the prefix field, so a name built with it is refused.
    throw new FerryError('ENTRY_NAME_FORBIDDEN', `entry ${JSON.stringify(name)} uses the ustar prefix field`);
  }
  return { name, size: parseSize(h.subarray(124, 136)) };
}

/**
 * Explains why an entry name is refused, naming the hostile construction;
 * returns undefined for names of the right shape.
 */
export function hostileNameReason(name: string): string | undefined {
  if (name === '') return 'empty name';
  if (name.startsWith('/')) return 'absolute path';
  if (name.includes('\\')) return 'backslash in name';
  if (name.split('/').some((p) => p === '..')) return '".." path component';
  if (name.split('/').some((p) => p === '.' || p === '')) return 'empty or "." path component';
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) return 'control character in name';
  }
  return undefined;
}
