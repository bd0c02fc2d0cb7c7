/**
 * The mirror's data directory:
 *
 *   state.json                         trusted state (roots, active, pending, marks, quarantine)
 *   blobs/sha256/<hex>                 content-addressed artifact bytes, read-only
 *   manifests/<publisher>/<seq>.dsse.json   envelopes of the active and pending manifests
 *   tmp/                               blobs being received; emptied at open
 *   peer-pulls/                        blobs pulled from peer mirrors, verified by digest as they
 *                                      arrived, and partial pulls kept for a resume; only the
 *                                      serving process writes here, and the import takes a blob
 *                                      only if the signed manifest names it at its file's size
 *   lock                               held by the process importing (pid inside)
 *
 * Every change reaches disk by rename after fsync; state.json is the commit
 * point, so a crash leaves at worst unreferenced files. Open removes temp
 * files, lock candidates of dead processes and manifests state.json does not
 * name; blobs are kept, since each was verified before it was published and a
 * later import of the same release reuses it (see docs/mirror.md).
 */
import { mkdir, readdir, readFile, realpath, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { decodeBase64Strict } from '../core/encoding.js';
import { parseEnvelope } from '../core/dsse.js';
import { fsyncDir, writeFileAtomic } from '../platform/fsx.js';
import { decodeManifest, manifestBlobs, MAX_MANIFEST_BYTES } from '../core/manifest.js';
import { loadPinnedRoot, trustStoredChain, type TrustedRoot } from '../core/root.js';
import { BlobStage } from './stage.js';
import { MirrorError } from './errors.js';
import { acquireLock, removeStaleCandidates, serialize, type LockOptions } from '../platform/lock.js';
import type { ManifestRef, MirrorState } from './trust-state.js';
import { initialState, isSiteName, parseMirrorState, writeMirrorState } from './statefile.js';

export interface StoreOptions {
  /** Clock for expiry decisions and records (tests move it). */
  now?: () => number;
  lock?: LockOptions;
  /** First start: the root to pin and this mirror's site. Checked against the store on later starts. */
  init?: { rootBytes: Uint8Array; site: string };
}

export class Store {
  readonly now: () => number;
  readonly paths: {
    state: string;
    blobs: string;
    manifests: string;
    tmp: string;
    peerPulls: string;
    lock: string;
  };

  private constructor(
    readonly dir: string,
    private readonly opts: StoreOptions,
  ) {
    this.now = opts.now ?? Date.now;
    this.paths = {
      state: join(dir, 'state.json'),
      blobs: join(dir, 'blobs', 'sha256'),
      manifests: join(dir, 'manifests'),
      tmp: join(dir, 'tmp'),
      peerPulls: join(dir, 'peer-pulls'),
      lock: join(dir, 'lock'),
    };
  }

  /** Opens (or, with `init`, creates) a store and clears what a crash may have left. */
  static async open(dir: string, opts: StoreOptions = {}): Promise<Store> {
    if (!opts.init) {
      const found = await stat(join(dir, 'state.json')).catch(() => undefined);
      if (!found?.isFile())
        throw new MirrorError(
          'STORE_INVALID',
          `${dir} is not set up; start the mirror once with --trust and --site`,
        );
    }
    await mkdir(dir, { recursive: true });
    const store = new Store(await realpath(dir), opts);
    for (const d of [store.paths.blobs, store.paths.manifests, store.paths.tmp])
      await mkdir(d, { recursive: true });
    await store.exclusive(async () => {
      if (opts.init) await store.initOrCheck(opts.init);
      const state = await store.readState();
      store.trustedRoot(state);
      await store.removeLeftovers(state);
    });
    return store;
  }

  /** Runs `fn` with this data directory to itself: queued in-process, locked across processes. */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return serialize(this.dir, async () => {
      const release = await acquireLock(this.paths.lock, this.opts.lock);
      try {
        return await fn();
      } finally {
        await release();
      }
    });
  }

  private async initOrCheck(init: { rootBytes: Uint8Array; site: string }): Promise<void> {
    if (!isSiteName(init.site))
      throw new MirrorError('STORE_MISMATCH', `site ${JSON.stringify(init.site)} is not a site name`);
    const existing = await readFile(this.paths.state, 'utf8').catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return undefined;
      throw e;
    });
    if (existing === undefined) {
      loadPinnedRoot(init.rootBytes); // refuses a root that is not self-signed
      await writeMirrorState(this.paths.state, initialState(init.site, init.rootBytes));
      return;
    }
    const state = parseMirrorState(existing);
    if (state.site !== init.site)
      throw new MirrorError('STORE_MISMATCH', `${this.dir} serves site ${state.site}, not ${init.site}`);
    const given = Buffer.from(init.rootBytes).toString('base64');
    if (!state.roots.includes(given))
      throw new MirrorError('STORE_MISMATCH', `the trust root given is not in the chain ${this.dir} trusts`);
  }

  async readState(): Promise<MirrorState> {
    let text: string;
    try {
      text = await readFile(this.paths.state, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT')
        throw new MirrorError(
          'STORE_INVALID',
          `${this.dir} is not set up; start the mirror once with --trust and --site`,
        );
      throw e;
    }
    return parseMirrorState(text);
  }

  /** Bumped by every state write of this process: with state.json's stat, what the HTTP cache keys on. */
  revision = 0;

  async writeState(state: MirrorState): Promise<void> {
    await writeMirrorState(this.paths.state, state);
    this.revision++;
  }

  /** The newest root of the stored chain, re-verified link by link. */
  trustedRoot(state: MirrorState): TrustedRoot {
    try {
      return trustStoredChain(state.roots);
    } catch (e) {
      throw new MirrorError(
        'STORE_INVALID',
        `state.json: stored root chain does not verify: ${(e as Error).message}`,
        {
          cause: e,
        },
      );
    }
  }

  blobPath(digest: string): string {
    return join(this.paths.blobs, digest);
  }

  async hasBlob(digest: string): Promise<boolean> {
    try {
      return (await stat(this.blobPath(digest))).isFile();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw e;
    }
  }

  /** A stage for one import. */
  stage(): BlobStage {
    return new BlobStage(this.paths.tmp, this.paths.blobs, (d) => this.hasBlob(d));
  }

  manifestPath(ref: Pick<ManifestRef, 'publisher' | 'sequence'>): string {
    return join(this.paths.manifests, ref.publisher, `${ref.sequence}.dsse.json`);
  }

  async writeManifest(ref: ManifestRef, envelopeBytes: Uint8Array): Promise<void> {
    const dir = join(this.paths.manifests, ref.publisher);
    const made = await mkdir(dir, { recursive: true });
    if (made !== undefined) await fsyncDir(this.paths.manifests);
    await writeFileAtomic(this.manifestPath(ref), envelopeBytes, { mode: 0o644 });
  }

  async readManifestBytes(ref: Pick<ManifestRef, 'publisher' | 'sequence'>): Promise<Buffer> {
    const path = this.manifestPath(ref);
    // Written here only after verification, under the same cap; a file past it was not written by ferry.
    if ((await stat(path)).size > MAX_MANIFEST_BYTES)
      throw new MirrorError('STORE_INVALID', `${path} is larger than a manifest may be`);
    return readFile(path);
  }

  /** Digests a stored manifest names that the store does not hold yet. */
  async missingBlobs(ref: Pick<ManifestRef, 'publisher' | 'sequence'>): Promise<string[]> {
    const env = parseEnvelope(await this.readManifestBytes(ref), 'stored manifest');
    const manifest = decodeManifest(decodeBase64Strict(env.payload, 'stored manifest payload'));
    const missing: string[] = [];
    for (const digest of manifestBlobs(manifest).keys())
      if (!(await this.hasBlob(digest))) missing.push(digest);
    return missing;
  }

  async removeManifest(ref: ManifestRef): Promise<void> {
    await rm(this.manifestPath(ref), { force: true });
  }

  /** Clears tmp/, half-written temp files, and manifest files state.json does not name. Caller holds the lock. */
  private async removeLeftovers(state: MirrorState): Promise<void> {
    for (const name of await readdir(this.paths.tmp))
      await rm(join(this.paths.tmp, name), { recursive: true, force: true });
    for (const name of await readdir(this.dir))
      if (/^\..*\.tmp$/.test(name)) await rm(join(this.dir, name), { force: true });
    await removeStaleCandidates(this.paths.lock);
    const keep = new Set(
      [...(state.active ? [state.active] : []), ...state.pending].map((r) => this.manifestPath(r)),
    );
    for (const pub of await readdir(this.paths.manifests, { withFileTypes: true })) {
      const dir = join(this.paths.manifests, pub.name);
      if (!pub.isDirectory()) {
        await rm(dir, { force: true });
        continue;
      }
      for (const name of await readdir(dir))
        if (!keep.has(join(dir, name))) await rm(join(dir, name), { force: true });
    }
  }
}
