/**
 * The mirror's trusted state and the pure decisions over it: whether a
 * verified manifest may be accepted, and which accepted manifest becomes
 * active once its blobs are held. No I/O here; the import driver reads,
 * verifies and persists (CONVENTIONS 2).
 */
import type { Manifest } from '../core/manifest.js';
import { parseIsoUtc } from '../core/time.js';
import type { RefusalCode } from './errors.js';

/** One accepted manifest, as the store knows it. */
export interface ManifestRef {
  publisher: string;
  sequence: number;
  /** SHA-256 of the exact envelope bytes: the stored manifest's identity (and ETag). */
  digest: string;
  /** SHA-256 of the signed payload bytes: what "the same content" means. */
  payloadDigest: string;
  expires: string;
}

/** The highest sequence accepted from a publisher, and what it said. */
export interface PublisherMark {
  sequence: number;
  payloadDigest: string;
}

export interface QuarantineRecord {
  file: string;
  code: RefusalCode;
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
  publishers: Record<string, PublisherMark>;
  quarantine: QuarantineRecord[];
  imports: ImportRecord[];
}

export const MAX_QUARANTINE_RECORDS = 200;
export const MAX_IMPORT_RECORDS = 200;

export type Decision =
  | { kind: 'accept' }
  /** Same publisher, sequence and signed payload as before: idempotent, nothing to decide. */
  | { kind: 'known'; where: 'active' | 'pending' | 'retired' }
  | { kind: 'refuse'; code: RefusalCode; reason: string };

const sameManifest = (a: ManifestRef, b: ManifestRef) =>
  a.publisher === b.publisher && a.sequence === b.sequence;

/** Decides whether a verified manifest may enter the store. */
export function decide(
  state: MirrorState,
  manifest: Pick<Manifest, 'sites' | 'expires'>,
  ref: ManifestRef,
  now: number,
  site: string,
): Decision {
  if (!manifest.sites.includes('*') && !manifest.sites.includes(site)) {
    return {
      kind: 'refuse',
      code: 'SITE_MISMATCH',
      reason: `bundle is for site(s) ${manifest.sites.join(', ')}, not ${site}`,
    };
  }
  if ((parseIsoUtc(manifest.expires) ?? 0) <= now) {
    return {
      kind: 'refuse',
      code: 'MANIFEST_EXPIRED',
      reason: `manifest sequence ${ref.sequence} expired at ${manifest.expires}`,
    };
  }
  const mark = state.publishers[ref.publisher];
  if (mark === undefined || ref.sequence > mark.sequence) return { kind: 'accept' };
  if (ref.sequence < mark.sequence) {
    return {
      kind: 'refuse',
      code: 'SEQUENCE_ROLLBACK',
      reason: `${ref.publisher} sequence ${ref.sequence} is below sequence ${mark.sequence} this mirror already accepted`,
    };
  }
  if (ref.payloadDigest !== mark.payloadDigest) {
    return {
      kind: 'refuse',
      code: 'EQUIVOCATION',
      reason: `${ref.publisher} sequence ${ref.sequence} differs from the manifest with the same sequence this mirror already accepted`,
    };
  }
  if (state.active && sameManifest(state.active, ref)) return { kind: 'known', where: 'active' };
  if (state.pending.some((p) => sameManifest(p, ref))) return { kind: 'known', where: 'pending' };
  return { kind: 'known', where: 'retired' };
}

/** Records an accepted manifest as pending and raises its publisher's mark. */
export function accept(state: MirrorState, ref: ManifestRef): MirrorState {
  return {
    ...state,
    pending: [...state.pending, ref],
    publishers: {
      ...state.publishers,
      [ref.publisher]: { sequence: ref.sequence, payloadDigest: ref.payloadDigest },
    },
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
 * Activates the newest pending manifest whose blobs are all held. A pending
 * manifest that expired before its last blob arrived is never newly applied;
 * pending manifests below a newly active one can never activate and are retired.
 */
export function activate(state: MirrorState, complete: ReadonlySet<string>, now: number): Activation {
  const retired: ManifestRef[] = [];
  let pending: ManifestRef[] = [];
  for (const p of state.pending) {
    if ((parseIsoUtc(p.expires) ?? 0) <= now) retired.push(p);
    else pending.push(p);
  }
  let active = state.active;
  let activated: ManifestRef | null = null;
  const ready = pending.filter((p) => complete.has(p.digest)).sort((a, b) => a.sequence - b.sequence);
  for (const p of ready) {
    if (active && active.publisher === p.publisher && active.sequence >= p.sequence) continue;
    if (active) retired.push(active);
    active = p;
    activated = p;
  }
  if (active) {
    const a = active;
    const keep: ManifestRef[] = [];
    for (const p of pending) {
      if (sameManifest(p, a)) continue;
      if (p.publisher === a.publisher && p.sequence < a.sequence) retired.push(p);
      else keep.push(p);
    }
    pending = keep;
  }
  return { state: { ...state, active, pending }, activated, retired };
}

export function recordQuarantine(state: MirrorState, rec: QuarantineRecord): MirrorState {
  return { ...state, quarantine: [...state.quarantine, rec].slice(-MAX_QUARANTINE_RECORDS) };
}

export function recordImport(state: MirrorState, rec: ImportRecord): MirrorState {
  return { ...state, imports: [...state.imports, rec].slice(-MAX_IMPORT_RECORDS) };
}
