/**
 * state.json: parsed and checked at the edge like any file (CONVENTIONS 6),
 * written whole with core/fsx writeFileAtomic (temp + fsync + rename + dir
 * fsync). lowdb is not used: its writer (steno) renames a fixed-name temp file
 * without fsyncing the file or the directory, so a power cut can leave an
 * empty state.json, and two processes share one temp name.
 */
import { isSha256Hex } from '../core/encoding.js';
import { writeFileAtomic } from '../platform/fsx.js';
import { parseIsoUtc } from '../core/time.js';
import { MirrorError } from './errors.js';
import type { ManifestRef, MirrorState } from './state.js';

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function isSiteName(s: unknown): s is string {
  return typeof s === 'string' && NAME.test(s);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function bad(field: string, why: string): MirrorError {
  return new MirrorError('STORE_INVALID', `state.json: ${field} ${why}`);
}

function assertRef(v: unknown, field: string): asserts v is ManifestRef {
  if (!isObject(v)) throw bad(field, 'is not an object');
  if (typeof v.publisher !== 'string' || !NAME.test(v.publisher))
    throw bad(`${field}.publisher`, 'is not a name');
  if (!Number.isSafeInteger(v.sequence) || (v.sequence as number) < 1)
    throw bad(`${field}.sequence`, 'is not a positive integer');
  if (!isSha256Hex(v.digest)) throw bad(`${field}.digest`, 'is not a sha256');
  if (!isSha256Hex(v.payloadDigest)) throw bad(`${field}.payloadDigest`, 'is not a sha256');
  if (parseIsoUtc(v.expires) === undefined) throw bad(`${field}.expires`, 'is not an ISO UTC time');
}

function assertArray(v: unknown, field: string): asserts v is unknown[] {
  if (!Array.isArray(v)) throw bad(field, 'is not an array');
}

/** Validates what was read from state.json; names the bad field. */
export function assertMirrorState(v: unknown): asserts v is MirrorState {
  if (!isObject(v)) throw bad('document', 'is not a JSON object');
  if (v.format !== 'ferry.mirror-state/v1') throw bad('format', 'must be "ferry.mirror-state/v1"');
  if (!isSiteName(v.site)) throw bad('site', 'is not a site name');
  assertArray(v.roots, 'roots');
  if (v.roots.length === 0) throw bad('roots', 'is empty; the mirror has no trust root');
  for (const [i, r] of v.roots.entries())
    if (typeof r !== 'string') throw bad(`roots[${i}]`, 'is not a string');
  if (v.active !== null) assertRef(v.active, 'active');
  assertArray(v.pending, 'pending');
  for (const [i, p] of v.pending.entries()) assertRef(p, `pending[${i}]`);
  if (!isObject(v.publishers)) throw bad('publishers', 'is not an object');
  for (const [name, m] of Object.entries(v.publishers)) {
    if (!NAME.test(name)) throw bad('publishers', `has an invalid name ${JSON.stringify(name)}`);
    if (!isObject(m) || !Number.isSafeInteger(m.sequence) || !isSha256Hex(m.payloadDigest))
      throw bad(`publishers.${name}`, 'must be {sequence, payloadDigest}');
  }
  assertArray(v.quarantine, 'quarantine');
  for (const [i, q] of v.quarantine.entries())
    if (
      !isObject(q) ||
      typeof q.file !== 'string' ||
      typeof q.code !== 'string' ||
      typeof q.message !== 'string'
    )
      throw bad(`quarantine[${i}]`, 'must be {file, code, message, at}');
  assertArray(v.imports, 'imports');
}

export function parseMirrorState(text: string): MirrorState {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new MirrorError('STORE_INVALID', 'state.json is not valid JSON', { cause: e });
  }
  assertMirrorState(v);
  return v;
}

export function initialState(site: string, rootBytes: Uint8Array): MirrorState {
  return {
    format: 'ferry.mirror-state/v1',
    site,
    roots: [Buffer.from(rootBytes).toString('base64')],
    active: null,
    pending: [],
    publishers: {},
    quarantine: [],
    imports: [],
  };
}

export async function writeMirrorState(path: string, state: MirrorState): Promise<void> {
  await writeFileAtomic(path, JSON.stringify(state, null, 2) + '\n', { mode: 0o644 });
}
