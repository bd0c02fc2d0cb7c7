/**
 * state.json: parsed and checked at the edge like any file,
 * written whole with core/fsx writeFileAtomic (temp + fsync + rename + dir
 * fsync). lowdb is not used: its writer (steno) renames a fixed-name temp file
 * without fsyncing the file or the directory, so a power cut can leave an
 * empty state.json, and two processes share one temp name.
 */
import { isSha256Hex } from '../core/encoding.js';
import { writeFileAtomic } from '../platform/fsx.js';
import { parseIsoUtc } from '../core/time.js';
import { MirrorError } from './errors.js';
import type { SequenceMark } from '../core/freshness.js';
import type { ManifestRef, MirrorState } from './trust-state.js';

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

function assertMark(v: unknown, field: string): asserts v is SequenceMark {
  if (!isObject(v) || !Number.isSafeInteger(v.sequence) || !isSha256Hex(v.payloadDigest))
    throw bad(field, 'must be {sequence, payloadDigest, signers}');
  if (v.signers !== null && !(Array.isArray(v.signers) && v.signers.every(isSha256Hex)))
    throw bad(`${field}.signers`, 'must be null or a list of keyids');
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
  if (v.mark !== null) assertMark(v.mark, 'mark');
  if (!Number.isSafeInteger(v.signedTime) || (v.signedTime as number) < 0)
    throw bad('signedTime', 'is not a time in ms');
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
  v = migrate(v);
  assertMirrorState(v);
  return v;
}

/**
 * A state.json written before the one sequence space kept a mark per
 * publisher and no time memory. The single mark becomes the highest of them
 * (its signers unknown, so it binds until the next accepted manifest); the
 * signed time starts at zero and grows with the next import.
 */
function migrate(v: unknown): unknown {
  if (!isObject(v) || !('publishers' in v) || 'mark' in v) return v;
  const { publishers, ...rest } = v;
  if (!isObject(publishers)) throw bad('publishers', 'is not an object');
  let mark: SequenceMark | null = null;
  for (const [name, m] of Object.entries(publishers)) {
    assertMark({ ...(isObject(m) ? m : {}), signers: null }, `publishers.${name}`);
    const seq = (m as { sequence: number }).sequence;
    if (mark === null || seq > mark.sequence)
      mark = { sequence: seq, payloadDigest: (m as { payloadDigest: string }).payloadDigest, signers: null };
  }
  return { ...rest, mark, signedTime: 0 };
}

export function initialState(site: string, rootBytes: Uint8Array): MirrorState {
  return {
    format: 'ferry.mirror-state/v1',
    site,
    roots: [Buffer.from(rootBytes).toString('base64')],
    active: null,
    pending: [],
    mark: null,
    signedTime: 0,
    quarantine: [],
    imports: [],
  };
}

export async function writeMirrorState(path: string, state: MirrorState): Promise<void> {
  await writeFileAtomic(path, JSON.stringify(state, null, 2) + '\n', { mode: 0o644 });
}
