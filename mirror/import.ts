/**
 * Imports one bundle file into the store: the I/O driver around the pure
 * decisions in state.ts. Order of events, all under the store's lock:
 *
 *   read + verify (root chain, signatures, the freshness rule of
 *   core/freshness.ts: site, sequence, equivocation, expiry against trusted
 *   time, all before the first blob), every blob's digest, blobs to tmp/
 *   → on refusal: discard tmp/, record quarantine, nothing else changes
 *   → adopt any newer root the bundle carries; retire the active and pending
 *     manifests that no longer verify under it (signed only by removed keys)
 *   → write the manifest, move blobs into place, activate what is complete
 *   → write state.json (the commit point), drop manifests no longer needed
 *
 * The source file is only ever read. A peer's offer comes through the same
 * function (importFrom): its manifest and the roots it serves are laid out as
 * a bundle stream (bundle-source.ts) and read by the same reader with the same
 * state, so a peer can never get past a check a courier's file would meet.
 * The blobs pulled for it were hashed as they were received (every byte
 * written to the file went through the hash, platform/http/download.ts) and
 * are taken in without a second read, but only those the signed manifest
 * names, at the signed size.
 */
import { createHash } from 'node:crypto';
import { resolve } from 'node:path';
import { readBundle, type BundleContents } from '../core/bundle/reader.js';
import { fileSource } from '../platform/fsx.js';
import { crashPoint } from '../platform/crash.js';
import { decodeBase64Strict } from '../core/encoding.js';
import { FerryError, isFerryError } from '../core/errors.js';
import { isoUtc } from '../core/time.js';
import { parseEnvelope, verifyEnvelope } from '../core/dsse.js';
import { observeRoot, trustedTime } from '../core/freshness.js';
import { MANIFEST_PAYLOAD_TYPE, manifestBlobs } from '../core/manifest.js';
import type { TrustedRoot } from '../core/root.js';
import { isMirrorError, refusalOf, type QuarantineCode } from './errors.js';
import {
  accept,
  activate,
  decide,
  freshnessOf,
  observe,
  recordImport,
  recordQuarantine,
  retire,
  storedRef,
  type ManifestRef,
  type MirrorState,
} from './trust-state.js';
import type { Store } from './store.js';

export interface ImportAccepted {
  ok: true;
  file: string;
  publisher: string;
  sequence: number;
  /** SHA-256 of the manifest envelope bytes. */
  digest: string;
  /** Where this bundle's manifest stands after the import. */
  status: 'active' | 'pending' | 'retired';
  /** True when this import changed the store (new blobs, manifest, root or activation). */
  changed: boolean;
  blobsAdded: string[];
  /** Blobs the manifest names that the store still lacks. */
  missing: string[];
  adoptedRoots: number[];
  /** Manifests retired because the adopted root no longer authorises their signers. */
  revoked: { publisher: string; sequence: number }[];
}

export interface ImportRefused {
  ok: false;
  file: string;
  code: QuarantineCode;
  message: string;
}

export type ImportResult = ImportAccepted | ImportRefused;

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

export interface ImportOptions {
  /** Bytes of the file read so far (for a progress line). */
  onProgress?: (bytes: number) => void;
}

/** Where the bundle bytes come from: a file, or a peer's offer laid out as a bundle stream. */
export interface ImportSource {
  /** What the import record (and a quarantine record) names: the file path, or `peer <url>`. */
  label: string;
  open(): AsyncIterable<Buffer>;
  /**
   * Blobs already received into files on the store's filesystem whose sha256 was checked over every
   * byte written (digest → path), such as fetchVerifiedBlob's. Once the manifest has passed every
   * check, each one it names whose file has the signed size is moved into the store; the rest are
   * left alone.
   */
  verified?: ReadonlyMap<string, string>;
  /** Whether a refusal is kept in the quarantine list (a file's is; a peer's goes to its back-off). */
  quarantine: boolean;
}

/** Imports a bundle (or one volume of it). Refusals are returned, not thrown; I/O failures throw. */
export function importBundle(store: Store, path: string, opts: ImportOptions = {}): Promise<ImportResult> {
  const file = resolve(path);
  return importFrom(store, { label: file, open: () => fileSource(file), quarantine: true }, opts);
}

/** The one adoption path, for drop-folder files, `ferry mirror import` and peers alike. */
export function importFrom(store: Store, src: ImportSource, opts: ImportOptions = {}): Promise<ImportResult> {
  return store.exclusive(() => importLocked(store, src, opts));
}

async function importLocked(store: Store, src: ImportSource, opts: ImportOptions): Promise<ImportResult> {
  const file = src.label;
  const clock = store.now();
  let state = await store.readState();
  const stage = store.stage();
  try {
    let contents: BundleContents;
    try {
      contents = await readBundle(src.open(), {
        trusted: store.trustedRoot(state),
        site: state.site,
        now: clock,
        freshness: freshnessOf(state),
        acceptedExpired: 'refuse',
        openBlob: stage.openBlob,
        ...(opts.onProgress && { onProgress: opts.onProgress }),
      });
    } catch (e) {
      const r = refusalOf(e);
      if (!r) throw operational(e, file);
      if (!src.quarantine) return { ok: false, file, code: r.code, message: r.message };
      return await quarantine(store, state, file, clock, r);
    }
    if (src.verified) await stage.takeVerified(manifestBlobs(contents.manifest), src.verified);
    crashPoint('staged');
    const verdict = contents.verdict!;
    const root = contents.root!;
    const adopted = adoptRoots(state, contents);
    state = adopted.state;
    const revoked = adopted.versions.length > 0 ? await revokedBy(store, state, root) : [];
    // the verdict's memory is authoritative: after a recovery it drops the mark and the time it vouched for
    state = { ...retire(state, revoked), mark: verdict.next.mark, signedTime: verdict.next.signedTime };
    const ref: ManifestRef = {
      publisher: contents.manifest.publisher,
      sequence: contents.manifest.sequence,
      digest: sha256(contents.envelopeBytes),
      payloadDigest: sha256(decodeBase64Strict(contents.envelope.payload, 'manifest payload')),
      expires: contents.manifest.expires,
    };
    const decision = decide(state, verdict, ref);
    let stored = ref;
    if (decision.kind === 'accept') {
      await store.writeManifest(ref, contents.envelopeBytes);
      crashPoint('manifest-written');
      state = accept(state, ref, verdict.next);
    } else {
      stored = storedRef(state, ref);
    }
    const blobsAdded = decision.kind === 'known' && decision.where === 'retired' ? [] : await stage.publish();
    crashPoint('blobs-published');
    const now = trustedTime(freshnessOf(state), clock, root.payload);
    const step = activate(state, await completeSet(store, state), now);
    state = step.state;
    const status = statusOf(state, stored);
    const missing = status === 'pending' ? await store.missingBlobs(stored) : [];
    state = recordImport(state, {
      file,
      at: isoUtc(clock),
      publisher: ref.publisher,
      sequence: ref.sequence,
      status,
      blobsAdded: blobsAdded.length,
    });
    crashPoint('before-state-write');
    await store.writeState(state);
    crashPoint('after-state-write');
    const keep = store.manifestPath(stored);
    for (const r of [...revoked, ...step.retired])
      if (store.manifestPath(r) !== keep) await store.removeManifest(r);
    return {
      ok: true,
      file,
      publisher: ref.publisher,
      sequence: ref.sequence,
      digest: stored.digest,
      status,
      changed:
        decision.kind === 'accept' ||
        blobsAdded.length > 0 ||
        step.activated !== null ||
        adopted.versions.length > 0,
      blobsAdded,
      missing,
      adoptedRoots: adopted.versions,
      revoked: revoked.map((r) => ({ publisher: r.publisher, sequence: r.sequence })),
    };
  } finally {
    await stage.discard();
  }
}

/** The active and pending manifests whose signatures no longer meet `root`'s bundle threshold. */
async function revokedBy(store: Store, state: MirrorState, root: TrustedRoot): Promise<ManifestRef[]> {
  const out: ManifestRef[] = [];
  for (const r of [...(state.active ? [state.active] : []), ...state.pending]) {
    try {
      const env = parseEnvelope(await store.readManifestBytes(r), 'stored manifest');
      verifyEnvelope(env, MANIFEST_PAYLOAD_TYPE, root.roles.bundle, 'stored manifest');
    } catch (e) {
      if (!isFerryError(e)) throw e;
      out.push(r);
    }
  }
  return out;
}

/** Appends the root envelopes the reader walked to (exact bytes, oldest first) and their signed time. */
function adoptRoots(
  state: MirrorState,
  contents: BundleContents,
): { state: MirrorState; versions: number[] } {
  if (contents.adoptedRoots.length === 0) return { state, versions: [] };
  const roots = [...state.roots];
  for (const v of contents.adoptedRoots) {
    const entry = contents.rootEntries.find((r) => r.version === v);
    if (!entry) throw new FerryError('ROOT_INVALID', `root v${v} was adopted but its bytes are missing`);
    roots.push(entry.bytes.toString('base64'));
  }
  return {
    state: observe({ ...state, roots }, observeRoot(freshnessOf(state), contents.root!.payload)),
    versions: contents.adoptedRoots,
  };
}

/** Envelope digests of pending manifests whose blobs the store now holds in full. */
async function completeSet(store: Store, state: MirrorState): Promise<Set<string>> {
  const out = new Set<string>();
  for (const p of state.pending) if ((await store.missingBlobs(p)).length === 0) out.add(p.digest);
  return out;
}

function statusOf(state: MirrorState, ref: ManifestRef): ImportAccepted['status'] {
  const same = (r: ManifestRef | null) => r !== null && r.digest === ref.digest;
  if (same(state.active)) return 'active';
  if (state.pending.some(same)) return 'pending';
  return 'retired';
}

/** Records a refusal in quarantine; nothing else in the store changes. */
async function quarantine(
  store: Store,
  state: MirrorState,
  file: string,
  now: number,
  r: { code: QuarantineCode; message: string },
): Promise<ImportRefused> {
  await store.writeState(
    recordQuarantine(state, { file, code: r.code, message: r.message, at: isoUtc(now) }),
  );
  return { ok: false, file, code: r.code, message: r.message };
}

/** A failure of the mirror rather than of the bundle: thrown, with a code. */
function operational(e: unknown, file: string): unknown {
  if (isFerryError(e) || isMirrorError(e)) return e;
  return new FerryError('IO_ERROR', `cannot import ${file}: ${(e as Error).message}`, { cause: e });
}
