/**
 * The mirror's trusted state and the pure steps over it: what the freshness
 * verdict (core/freshness.ts) means for the store, and which accepted
 * manifest becomes active once its blobs are held. No I/O here; the import
 * driver reads, verifies and persists.
 */
import type { Freshness, FreshnessVerdict, SequenceMark } from '../core/freshness.js';
import { parseIsoUtc } from '../core/time.js';
import type { QuarantineCode } from './errors.js';

/** One accepted manifest, as the store knows it. */
export interface ManifestRef {
  /** A label: with the sequence it names the stored envelope file, and nothing more. */
  publisher: string;
  sequence: number;
  /** SHA-256 of the exact envelope bytes: the stored manifest's identity (and ETag). */
  digest: string;
  /** SHA-256 of the signed payload bytes: what "the same content" means. */
  payloadDigest: string;
  expires: string;
}

export interface QuarantineRecord {
  file: string;
  code: QuarantineCode;
  message: string;
  at: string;
}

export interface ImportRecord {
  file: string;
  at: string;
  publisher: string;
  sequence: number;
  status: 'active' | 'pending' | 'retired';
  blobsAdded: number;
}

export interface MirrorState {
  format: 'ferry.mirror-state/v1';
  site: string;
  /** Trusted root envelopes, exact bytes in base64, pinned first, each the next version. */
  roots: string[];
  active: ManifestRef | null;
  /** Accepted manifests still waiting for blobs (volumes in any order, deltas). */
  pending: ManifestRef[];
  /** The one sequence mark for everything the site's root authorises (core/freshness.ts). */
  mark: SequenceMark | null;
  /** Latest signed time seen (manifest and root `created`), ms: the mirror's memory of time. */
  signedTime: number;
  quarantine: QuarantineRecord[];
  imports: ImportRecord[];
}

export const MAX_QUARANTINE_RECORDS = 200;
export const MAX_IMPORT_RECORDS = 200;

export type Decision =
  | { kind: 'accept' }
  /** The manifest the mark already names (volumes, re-imports, an added signature). */
  | { kind: 'known'; where: 'active' | 'pending' | 'retired' };

/** The mirror's memory, as core/freshness.ts takes it. */
export const freshnessOf = (s: MirrorState): Freshness => ({ mark: s.mark, signedTime: s.signedTime });

const sameManifest = (a: ManifestRef, b: ManifestRef) =>
  a.sequence === b.sequence && a.payloadDigest === b.payloadDigest;

/** What a non-refusing freshness verdict means for the store. */
export function decide(
  state: MirrorState,
  verdict: Exclude<FreshnessVerdict, { kind: 'refuse' }>,
  ref: ManifestRef,
): Decision {
  if (verdict.kind === 'accept') return { kind: 'accept' };
  if (state.active && sameManifest(state.active, ref)) return { kind: 'known', where: 'active' };
  if (state.pending.some((p) => sameManifest(p, ref))) return { kind: 'known', where: 'pending' };
  return { kind: 'known', where: 'retired' };
}

/** The stored ref a known manifest refers to. */
export function storedRef(state: MirrorState, ref: ManifestRef): ManifestRef {
  return [state.active, ...state.pending].find((r) => r !== null && sameManifest(r, ref)) ?? ref;
}

/** Records an accepted manifest as pending and moves the mark (and signed time) to it. */
export function accept(state: MirrorState, ref: ManifestRef, next: Freshness): MirrorState {
  return { ...state, pending: [...state.pending, ref], mark: next.mark, signedTime: next.signedTime };
}

/** Folds signed time seen (a same verdict, an adopted root) into the state; it only moves forward. */
export function observe(state: MirrorState, f: Freshness): MirrorState {
  return f.signedTime > state.signedTime ? { ...state, signedTime: f.signedTime } : state;
}

/**
 * Drops the active and pending manifests that no longer verify under a newly
 * adopted root (signed only by bundle keys it removed): they stop being served.
 */
export function retire(state: MirrorState, revoked: readonly ManifestRef[]): MirrorState {
  if (revoked.length === 0) return state;
  const gone = (r: ManifestRef) => revoked.some((x) => x.digest === r.digest);
  return {
    ...state,
    active: state.active && gone(state.active) ? null : state.active,
    pending: state.pending.filter((p) => !gone(p)),
  };
}

export interface Activation {
  state: MirrorState;
  /** The manifest that became active in this step, if any. */
  activated: ManifestRef | null;
  /** Manifests the store no longer needs: superseded, expired before completion, or replaced. */
  retired: ManifestRef[];
}

/**
 * Activates the latest-accepted pending manifest whose blobs are all held.
 * Acceptance order is sequence order in the one sequence space, except after
 * a key-compromise recovery, when what was accepted last is what the new root
 * vouches for. Time is trusted time (core/freshness.ts): a pending manifest
 * that expired before its last blob arrived is never newly applied, and the
 * pending manifests accepted before the one activated can never activate.
 */
export function activate(state: MirrorState, complete: ReadonlySet<string>, now: number): Activation {
  const retired: ManifestRef[] = [];
  const live: ManifestRef[] = [];
  for (const p of state.pending) {
    if ((parseIsoUtc(p.expires) ?? 0) <= now) retired.push(p);
    else live.push(p);
  }
  const last = live.findLastIndex((p) => complete.has(p.digest));
  if (last < 0) return { state: { ...state, pending: live }, activated: null, retired };
  const activated = live[last]!;
  if (state.active) retired.push(state.active);
  retired.push(...live.slice(0, last));
  return {
    state: { ...state, active: activated, pending: live.slice(last + 1) },
    activated,
    retired,
  };
}

export function recordQuarantine(state: MirrorState, rec: QuarantineRecord): MirrorState {
  return { ...state, quarantine: [...state.quarantine, rec].slice(-MAX_QUARANTINE_RECORDS) };
}

export function recordImport(state: MirrorState, rec: ImportRecord): MirrorState {
  return { ...state, imports: [...state.imports, rec].slice(-MAX_IMPORT_RECORDS) };
}
