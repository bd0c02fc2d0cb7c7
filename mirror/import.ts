/**
 * Imports one bundle file into the store: the I/O driver around the pure
 * decisions in state.ts. Order of events, all under the store's lock:
 *
 *   read + verify (signatures, root chain, every blob's digest), blobs to tmp/
 *   → adopt any newer root the bundle carries
 *   → decide (site, expiry, sequence, equivocation)
 *   → on refusal: discard tmp/, record quarantine, nothing else changes
 *   → write the manifest, move blobs into place, activate what is complete
 *   → write state.json (the commit point), drop manifests no longer needed
 *
 * The source file is only ever read.
 */
import { createHash } from 'node:crypto';
import { resolve } from 'node:path';
import { readBundle, type BundleContents } from '../core/bundle/reader.js';
import { fileSource } from '../platform/fsx.js';
import { decodeBase64Strict } from '../core/encoding.js';
import { FerryError, isFerryError } from '../core/errors.js';
import { isoUtc } from '../core/time.js';
import { isMirrorError, refusalOf, type RefusalCode } from './errors.js';
import {
  accept,
  activate,
  decide,
  recordImport,
  recordQuarantine,
  type ManifestRef,
  type MirrorState,
} from './state.js';
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
}

export interface ImportRefused {
  ok: false;
  file: string;
  code: RefusalCode;
  message: string;
}

export type ImportResult = ImportAccepted | ImportRefused;

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** Exists for crash tests (test/mirror-crash.test.ts): FERRY_CRASH_AT=<phase> dies here like a power cut. */
const crashPoint = (phase: string): void => {
  if (process.env.FERRY_CRASH_AT === phase) process.kill(process.pid, 'SIGKILL');
};

export interface ImportOptions {
  /** Bytes of the file read so far (for a progress line). */
  onProgress?: (bytes: number) => void;
}

/** Imports a bundle (or one volume of it). Refusals are returned, not thrown; I/O failures throw. */
export function importBundle(store: Store, path: string, opts: ImportOptions = {}): Promise<ImportResult> {
  return store.exclusive(() => importLocked(store, resolve(path), opts));
}

async function importLocked(store: Store, file: string, opts: ImportOptions): Promise<ImportResult> {
  const now = store.now();
  let state = await store.readState();
  const stage = store.stage();
  try {
    let contents: BundleContents;
    try {
      contents = await readBundle(fileSource(file), {
        trusted: store.trustedRoot(state),
        site: state.site,
        now,
        openBlob: stage.openBlob,
        ...(opts.onProgress && { onProgress: opts.onProgress }),
      });
    } catch (e) {
      const r = refusalOf(e);
      if (!r) throw operational(e, file);
      return await quarantine(store, state, file, now, r);
    }
    crashPoint('staged');
    const adopted = adoptRoots(state, contents);
    state = adopted.state;
    const ref: ManifestRef = {
      publisher: contents.manifest.publisher,
      sequence: contents.manifest.sequence,
      digest: sha256(contents.envelopeBytes),
      payloadDigest: sha256(decodeBase64Strict(contents.envelope.payload, 'manifest payload')),
      expires: contents.manifest.expires,
    };
    const decision = decide(state, contents.manifest, ref, now, state.site);
    if (decision.kind === 'refuse') {
      await stage.discard();
      return await quarantine(store, state, file, now, { code: decision.code, message: decision.reason });
    }
    let stored = ref;
    if (decision.kind === 'accept') {
      await store.writeManifest(ref, contents.envelopeBytes);
      crashPoint('manifest-written');
      state = accept(state, ref);
    } else {
      stored =
        [state.active, ...state.pending].find(
          (r) => r !== null && r.publisher === ref.publisher && r.sequence === ref.sequence,
        ) ?? ref;
    }
    const blobsAdded = decision.kind === 'known' && decision.where === 'retired' ? [] : await stage.publish();
    crashPoint('blobs-published');
    const step = activate(state, await completeSet(store, state), now);
    state = step.state;
    const status = statusOf(state, stored);
    const missing = status === 'pending' ? await store.missingBlobs(stored) : [];
    state = recordImport(state, {
      file,
      at: isoUtc(now),
      publisher: ref.publisher,
      sequence: ref.sequence,
      status,
      blobsAdded: blobsAdded.length,
    });
    crashPoint('before-state-write');
    await store.writeState(state);
    crashPoint('after-state-write');
    for (const r of step.retired) await store.removeManifest(r);
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
    };
  } finally {
    await stage.discard();
  }
}

/** Appends the root envelopes the reader walked to (exact bytes, oldest first). */
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
  return { state: { ...state, roots }, versions: contents.adoptedRoots };
}

/** Envelope digests of pending manifests whose blobs the store now holds in full. */
async function completeSet(store: Store, state: MirrorState): Promise<Set<string>> {
  const out = new Set<string>();
  for (const p of state.pending) if ((await store.missingBlobs(p)).length === 0) out.add(p.digest);
  return out;
}

function statusOf(state: MirrorState, ref: ManifestRef): ImportAccepted['status'] {
  const same = (r: ManifestRef | null) =>
    r !== null && r.publisher === ref.publisher && r.sequence === ref.sequence;
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
  r: { code: RefusalCode; message: string },
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
