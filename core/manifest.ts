import { isSha256Hex } from './encoding.js';
import { isSemver } from './semver.js';
import { FerryError } from './errors.js';
import { parseIsoUtc } from './time.js';
import { JsonError, parseJsonStrict } from './json.js';
import { parseEnvelope, type Envelope } from './dsse.js';

export const MANIFEST_PAYLOAD_TYPE = 'application/vnd.ferry.manifest+json';
/**
 * Hard limit on the manifest envelope (a bundle's first entry, a mirror's
 * `GET /v1/manifest`), checked before a byte of it is parsed. The signed
 * payload inside is smaller still (base64 grows it by a third).
 */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
/** Deepest nesting a manifest has: payload → rollout → waves → wave (or window → days). */
const MANIFEST_DEPTH = 4;

export const ARTIFACT_KINDS = ['agent', 'script', 'policy', 'file'] as const;
export type ArtifactKind = (typeof ARTIFACT_KINDS)[number];

export interface Artifact {
  name: string;
  kind: ArtifactKind;
  version: string;
  platform?: string;
  interpreter?: string;
  sha256: string;
  size: number;
}

export interface Wave {
  percent: number;
  soakMinutes?: number;
}

export interface Rollout {
  agent: string;
  strategy?: string;
  waves: Wave[];
  maxFailureRate?: number;
  window?: { days: string[]; start: string; end: string; tz: string };
}

export interface Manifest {
  type: 'ferry.manifest/v1';
  publisher: string;
  sequence: number;
  created: string;
  expires: string;
  sites: string[];
  artifacts: Artifact[];
  rollout?: Rollout;
  pins?: Record<string, string>;
  minAgentVersion?: string;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const VERSION = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$/;
const PLATFORM = /^[a-z0-9]+-[a-z0-9_]+$/;
const INTERPRETER = /^[A-Za-z0-9._-]{1,64}$/;
const DAYS = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'];
const HHMM = /^([01]\d|2[0-3]):[0-5]\d$/;
/** Artifact sizes are capped at 1 TiB: far above need, far below float trouble. */
export const MAX_ARTIFACT_SIZE = 2 ** 40;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

type Bad = (field: string, why: string) => FerryError;

const FIELDS = {
  manifest: [
    'type',
    'publisher',
    'sequence',
    'created',
    'expires',
    'sites',
    'artifacts',
    'rollout',
    'pins',
    'minAgentVersion',
  ],
  artifact: ['name', 'kind', 'version', 'platform', 'interpreter', 'sha256', 'size'],
  rollout: ['agent', 'strategy', 'waves', 'maxFailureRate', 'window'],
  wave: ['percent', 'soakMinutes'],
  window: ['days', 'start', 'end', 'tz'],
} as const;

/** A signed document means only what ferry reads: a field it does not know is refused, by name. */
function onlyKnown(o: Record<string, unknown>, known: readonly string[], at: string, bad: Bad): void {
  for (const k of Object.keys(o))
    if (!known.includes(k)) throw bad(at === '' ? JSON.stringify(k) : `${at}.${k}`, 'is not a known field');
}

export { isSemver };

/** Validates an untrusted manifest payload; the message names the bad field. */
export function assertManifest(
  v: unknown,
  code: 'MANIFEST_INVALID' | 'SPEC_INVALID' = 'MANIFEST_INVALID',
): asserts v is Manifest {
  const bad = (field: string, why: string) => new FerryError(code, `manifest: ${field} ${why}`);
  if (!isObject(v)) throw bad('payload', 'is not a JSON object');
  onlyKnown(v, FIELDS.manifest, '', bad);
  if (v.type !== 'ferry.manifest/v1') throw bad('type', 'must be "ferry.manifest/v1"');
  if (typeof v.publisher !== 'string' || !NAME.test(v.publisher))
    throw bad('publisher', 'must be a name of A-Z a-z 0-9 . _ -');
  if (!Number.isSafeInteger(v.sequence) || (v.sequence as number) < 1)
    throw bad('sequence', 'must be a positive integer');
  const created = parseIsoUtc(v.created);
  const expires = parseIsoUtc(v.expires);
  if (created === undefined) throw bad('created', 'must be an ISO UTC time');
  if (expires === undefined) throw bad('expires', 'must be an ISO UTC time');
  if (expires <= created) throw bad('expires', 'must be after created');
  if (!Array.isArray(v.sites) || v.sites.length === 0) throw bad('sites', 'must be a non-empty array');
  for (const s of v.sites as unknown[])
    if (typeof s !== 'string' || (s !== '*' && !NAME.test(s)))
      throw bad('sites', `has an invalid site ${JSON.stringify(s)}`);
  if (!Array.isArray(v.artifacts)) throw bad('artifacts', 'must be an array');
  const names = new Set<string>();
  const sizeOf = new Map<string, number>();
  for (const [i, a] of (v.artifacts as unknown[]).entries()) {
    const f = `artifacts[${i}]`;
    if (!isObject(a)) throw bad(f, 'is not an object');
    onlyKnown(a, FIELDS.artifact, f, bad);
    if (typeof a.name !== 'string' || !NAME.test(a.name))
      throw bad(`${f}.name`, 'must be a name of A-Z a-z 0-9 . _ -');
    if (names.has(a.name)) throw bad(`${f}.name`, `${a.name} appears twice`);
    names.add(a.name);
    if (!ARTIFACT_KINDS.includes(a.kind as ArtifactKind))
      throw bad(`${f}.kind`, `must be one of ${ARTIFACT_KINDS.join(', ')}`);
    if (typeof a.version !== 'string' || !VERSION.test(a.version))
      throw bad(`${f}.version`, 'must be a version string');
    if (a.kind === 'agent') {
      if (!isSemver(a.version)) throw bad(`${f}.version`, 'of an agent must be semver (1.4.2)');
      if (typeof a.platform !== 'string' || !PLATFORM.test(a.platform))
        throw bad(`${f}.platform`, 'of an agent must be like linux-x64');
    } else if (a.platform !== undefined && (typeof a.platform !== 'string' || !PLATFORM.test(a.platform))) {
      throw bad(`${f}.platform`, 'must be like linux-x64');
    }
    if (
      a.interpreter !== undefined &&
      (typeof a.interpreter !== 'string' || !INTERPRETER.test(a.interpreter))
    ) {
      throw bad(`${f}.interpreter`, 'must be a program name');
    }
    if (!isSha256Hex(a.sha256)) throw bad(`${f}.sha256`, 'must be 64 lowercase hex characters');
    if (!Number.isSafeInteger(a.size) || (a.size as number) < 0 || (a.size as number) > MAX_ARTIFACT_SIZE) {
      throw bad(`${f}.size`, 'must be a non-negative integer');
    }
    const prior = sizeOf.get(a.sha256);
    if (prior !== undefined && prior !== a.size)
      throw bad(`${f}.size`, 'differs from another artifact with the same sha256');
    sizeOf.set(a.sha256, a.size as number);
  }
  if (v.rollout !== undefined) assertRollout(v.rollout, bad);
  if (v.pins !== undefined) {
    if (!isObject(v.pins)) throw bad('pins', 'must be an object');
    for (const [k, ver] of Object.entries(v.pins)) {
      if (!/^(group|agent):[A-Za-z0-9._-]{1,128}$/.test(k))
        throw bad('pins', `key ${JSON.stringify(k)} must be group:NAME or agent:ID`);
      if (!isSemver(ver)) throw bad(`pins.${k}`, 'must be a semver version');
    }
  }
  if (v.minAgentVersion !== undefined && !isSemver(v.minAgentVersion))
    throw bad('minAgentVersion', 'must be semver');
}

function assertRollout(r: unknown, bad: Bad): void {
  if (!isObject(r)) throw bad('rollout', 'must be an object');
  onlyKnown(r, FIELDS.rollout, 'rollout', bad);
  if (!isSemver(r.agent)) throw bad('rollout.agent', 'must be a semver version');
  if (r.strategy !== undefined && !['immediate', 'staggered', 'manual'].includes(r.strategy as string))
    throw bad('rollout.strategy', 'must be immediate, staggered or manual');
  if (!Array.isArray(r.waves) || r.waves.length === 0)
    throw bad('rollout.waves', 'must be a non-empty array');
  let last = 0;
  for (const [i, w] of (r.waves as unknown[]).entries()) {
    if (!isObject(w) || typeof w.percent !== 'number' || !(w.percent > last && w.percent <= 100)) {
      throw bad(`rollout.waves[${i}].percent`, 'must grow and be at most 100');
    }
    onlyKnown(w, FIELDS.wave, `rollout.waves[${i}]`, bad);
    last = w.percent;
    if (
      w.soakMinutes !== undefined &&
      !(Number.isSafeInteger(w.soakMinutes) && (w.soakMinutes as number) >= 0)
    ) {
      throw bad(`rollout.waves[${i}].soakMinutes`, 'must be a non-negative integer');
    }
  }
  if (last !== 100) throw bad('rollout.waves', 'must end at 100 percent');
  if (
    r.maxFailureRate !== undefined &&
    !(typeof r.maxFailureRate === 'number' && r.maxFailureRate >= 0 && r.maxFailureRate <= 1)
  ) {
    throw bad('rollout.maxFailureRate', 'must be between 0 and 1');
  }
  if (r.window !== undefined) {
    const w = r.window;
    if (
      !isObject(w) ||
      !Array.isArray(w.days) ||
      !(w.days as unknown[]).every((d) => DAYS.includes(d as string))
    ) {
      throw bad('rollout.window.days', `must list days of ${DAYS.join(' ')}`);
    }
    onlyKnown(w, FIELDS.window, 'rollout.window', bad);
    if (typeof w.start !== 'string' || !HHMM.test(w.start))
      throw bad('rollout.window.start', 'must be HH:MM');
    if (typeof w.end !== 'string' || !HHMM.test(w.end)) throw bad('rollout.window.end', 'must be HH:MM');
    if (typeof w.tz !== 'string' || w.tz === '') throw bad('rollout.window.tz', 'must be an IANA time zone');
    try {
      new Intl.DateTimeFormat('en', { timeZone: w.tz });
    } catch {
      throw bad('rollout.window.tz', `${w.tz} is not a known time zone`);
    }
  }
}

/**
 * Parses a manifest envelope: MANIFEST_TOO_LARGE above `maxBytes` before a byte
 * is parsed, then strict JSON and the envelope's shape (core/dsse.ts).
 */
export function parseManifestEnvelope(
  bytes: Uint8Array,
  what = 'manifest envelope',
  maxBytes = MAX_MANIFEST_BYTES,
): Envelope {
  if (bytes.byteLength > maxBytes)
    throw new FerryError(
      'MANIFEST_TOO_LARGE',
      `${what} is ${bytes.byteLength} bytes; the limit is ${maxBytes}`,
    );
  return parseEnvelope(bytes, what, maxBytes);
}

/**
 * Parses the exact signed payload bytes into a validated manifest: strict JSON
 * (core/json.ts) no deeper than a manifest nests, then every field checked and
 * any unknown one refused.
 */
export function decodeManifest(body: Uint8Array): Manifest {
  if (body.byteLength > MAX_MANIFEST_BYTES)
    throw new FerryError(
      'MANIFEST_TOO_LARGE',
      `manifest payload is ${body.byteLength} bytes; the limit is ${MAX_MANIFEST_BYTES}`,
    );
  let v: unknown;
  try {
    v = parseJsonStrict(body, { maxBytes: MAX_MANIFEST_BYTES, maxDepth: MANIFEST_DEPTH });
  } catch (e) {
    if (!(e instanceof JsonError)) throw e;
    throw new FerryError('MANIFEST_INVALID', `manifest: payload is not strict JSON: ${e.message}`, {
      cause: e,
    });
  }
  assertManifest(v);
  return v;
}

/** Distinct blobs a manifest names, with their sizes. */
export function manifestBlobs(m: Manifest): Map<string, number> {
  const out = new Map<string, number>();
  for (const a of m.artifacts) out.set(a.sha256, a.size);
  return out;
}

export function siteAllowed(m: Manifest, site: string): boolean {
  return m.sites.includes('*') || m.sites.includes(site);
}
