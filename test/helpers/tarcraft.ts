/**
 * Raw ustar blocks crafted in code, so that a test can build any hostile
 * archive byte by byte: every header field can be set, including the ones a
 * well-behaved writer never gets wrong (checksum, magic, base-256 size).
 * Nothing here trusts or reuses the reader's own tar code.
 */
import { pack, type Header } from 'tar-stream';

/** What tar-stream's pack.entry accepts. */
export type TarStreamHeader = Partial<Header> & Pick<Header, 'name'>;

export const BLOCK = 512;
/** The end-of-archive marker: two zero blocks. */
export const END = Buffer.alloc(2 * BLOCK);
/** POSIX ustar magic "ustar\0" followed by version "00". */
export const POSIX_MAGIC = Buffer.from('ustar\x0000', 'latin1');
/** The old GNU magic "ustar  \0" (magic and version run together). */
export const GNU_MAGIC = Buffer.from('ustar  \x00', 'latin1');

export function padTo512(size: number): number {
  return (BLOCK - (size % BLOCK)) % BLOCK;
}

export interface HeaderFields {
  /** Raw bytes or UTF-8 text of the 100-byte name field; longer input is an error, not a truncation. */
  name: string | Buffer;
  /** Declared body size; defaults to 0. */
  size?: number | bigint;
  /** 'octal' (default) writes 11 digits and a NUL; 'base256' sets 0x80 then 11 big-endian bytes. */
  sizeEncoding?: 'octal' | 'base256';
  /** Raw replacement for the 12-byte size field; wins over size. */
  rawSize?: Buffer;
  /** One character; '0' (regular file) by default. */
  typeflag?: string;
  linkname?: string;
  /** The 8 bytes at offset 257 (magic + version). */
  magic?: Buffer;
  prefix?: string | Buffer;
  mode?: number;
  mtime?: number;
  /** A number to store instead of the true checksum, or a raw 8-byte field. */
  checksum?: number | Buffer;
}

function putBytes(h: Buffer, value: string | Buffer, offset: number, length: number, field: string): void {
  const bytes = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
  if (bytes.length > length)
    throw new Error(`tarcraft: ${field} is ${bytes.length} bytes; the field holds ${length}`);
  bytes.copy(h, offset);
}

function putOctal(h: Buffer, value: number | bigint, offset: number, length: number): void {
  h.write(value.toString(8).padStart(length - 1, '0') + '\0', offset, length, 'latin1');
}

/** The checksum as POSIX defines it: unsigned byte sum with the checksum field read as spaces. */
export function ustarChecksum(h: Buffer): number {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i]!;
  return sum;
}

/** Encodes one 512-byte header block exactly as told. */
export function header(f: HeaderFields): Buffer {
  const h = Buffer.alloc(BLOCK);
  putBytes(h, f.name, 0, 100, 'name');
  putOctal(h, f.mode ?? 0o644, 100, 8);
  putOctal(h, 0, 108, 8); // uid
  putOctal(h, 0, 116, 8); // gid
  const size = BigInt(f.size ?? 0);
  if (f.rawSize) {
    putBytes(h, f.rawSize, 124, 12, 'size');
  } else if ((f.sizeEncoding ?? 'octal') === 'octal') {
    putOctal(h, size, 124, 12);
  } else {
    h[124] = 0x80;
    let v = size;
    for (let i = 135; i > 124; i--) {
      h[i] = Number(v & 0xffn);
      v >>= 8n;
    }
  }
  putOctal(h, f.mtime ?? 1_700_000_000, 136, 12);
  h.write(f.typeflag ?? '0', 156, 1, 'latin1');
  if (f.linkname !== undefined) putBytes(h, f.linkname, 157, 100, 'linkname');
  putBytes(h, f.magic ?? POSIX_MAGIC, 257, 8, 'magic');
  if (f.prefix !== undefined) putBytes(h, f.prefix, 345, 155, 'prefix');
  if (Buffer.isBuffer(f.checksum)) {
    putBytes(h, f.checksum, 148, 8, 'checksum');
  } else {
    putOctal(h, f.checksum ?? ustarChecksum(h), 148, 7);
    h[155] = 0x20;
  }
  return h;
}

/** One entry as it sits in an archive: header, body, and the padding that follows. */
export interface RawEntry {
  header: Buffer;
  body: Buffer;
  /** Defaults to the zero bytes that round the body up to a block. */
  padding?: Buffer;
}

/** A regular file (unless the fields say otherwise) whose declared size defaults to the body's. */
export function entry(fields: HeaderFields, body: Buffer | string = Buffer.alloc(0)): RawEntry {
  const b = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
  return { header: header({ size: b.length, ...fields }), body: b };
}

export function joinArchive(entries: readonly RawEntry[], trailer: Buffer = END): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) parts.push(e.header, e.body, e.padding ?? Buffer.alloc(padTo512(e.body.length)));
  parts.push(trailer);
  return Buffer.concat(parts);
}

export interface ParsedEntry extends RawEntry {
  /** The name field up to its first NUL (the writer under test never uses prefix). */
  name: string;
  /** Byte offset of the header within the archive. */
  offset: number;
}

/**
 * Splits a well-formed archive (one the writer under test produced) into its
 * entries and the trailer. Only octal sizes: the fixtures are small.
 */
export function splitArchive(bytes: Buffer): { entries: ParsedEntry[]; trailer: Buffer } {
  const entries: ParsedEntry[] = [];
  let pos = 0;
  while (pos + BLOCK <= bytes.length) {
    const h = bytes.subarray(pos, pos + BLOCK);
    if (h.every((b) => b === 0)) break;
    const nameField = h.subarray(0, 100);
    const end = nameField.indexOf(0);
    const name = nameField.subarray(0, end < 0 ? 100 : end).toString('utf8');
    const size = parseInt(h.subarray(124, 136).toString('latin1').replace(/\0.*$/s, ''), 8);
    const body = bytes.subarray(pos + BLOCK, pos + BLOCK + size);
    const padding = bytes.subarray(pos + BLOCK + size, pos + BLOCK + size + padTo512(size));
    entries.push({
      name,
      offset: pos,
      header: Buffer.from(h),
      body: Buffer.from(body),
      padding: Buffer.from(padding),
    });
    pos += BLOCK + size + padTo512(size);
  }
  return { entries, trailer: Buffer.from(bytes.subarray(pos)) };
}

/**
 * Entries encoded by tar-stream (an independent writer), without its
 * end-of-archive marker, to splice into an archive.
 */
export async function tarStreamBytes(
  entries: readonly { header: TarStreamHeader; body?: Buffer }[],
): Promise<Buffer> {
  const p = pack();
  for (const e of entries)
    p.entry({ mtime: new Date(1_700_000_000_000), ...e.header }, e.body ?? Buffer.alloc(0));
  p.finalize();
  const chunks: Buffer[] = [];
  for await (const c of p) chunks.push(Buffer.from(c as Uint8Array));
  const all = Buffer.concat(chunks);
  return all.subarray(0, all.length - END.length);
}

/** One pax record, "LEN key=value\n", where LEN counts its own digits. */
export function paxRecord(key: string, value: string): string {
  const rest = ` ${key}=${value}\n`;
  let len = Buffer.byteLength(rest) + 1;
  while (String(len).length + Buffer.byteLength(rest) !== len) len++;
  return `${len}${rest}`;
}
