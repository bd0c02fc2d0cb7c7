/**
 * What the HTTP side serves, cached until state.json changes. Every change to
 * the store ends with an atomic rename of state.json. This process's own writes
 * (drop-folder imports) bump the store's revision and show at once; another
 * process's (`ferry mirror import`) are noticed by (inode, mtime, size) of
 * state.json, checked at most every `recheckMs`, so that a thousand polls a
 * second do not cost a thousand stats.
 */
import { stat } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { decodeBase64Strict } from '../core/encoding.js';
import { parseEnvelope } from '../core/dsse.js';
import { decodeManifest, type Manifest } from '../core/manifest.js';
import type { MirrorState } from './trust-state.js';
import type { Store } from './store.js';

export interface Snapshot {
  state: MirrorState;
  rootVersion: number;
  /** Exact bytes of the active manifest envelope, its ETag and its payload. */
  active: { bytes: Buffer; etag: string; manifest: Manifest } | null;
}

export const DEFAULT_RECHECK_MS = 250;

export class StateView {
  private cached: { tag: string; snap: Snapshot; revision: number; checkedAt: number } | undefined;
  private loading: Promise<Snapshot> | undefined;

  constructor(
    private readonly store: Store,
    private readonly recheckMs = DEFAULT_RECHECK_MS,
  ) {}

  async current(): Promise<Snapshot> {
    const c = this.cached;
    const now = Date.now();
    if (c && c.revision === this.store.revision && now - c.checkedAt < this.recheckMs) return c.snap;
    const st = await stat(this.store.paths.state);
    // In-process writes bump the revision (no timestamp-granularity blind spot); other
    // processes' writes (`ferry mirror import`) replace the file, changing inode or mtime.
    const tag = `${this.store.revision}:${st.ino}:${st.mtimeMs}:${st.size}`;
    if (this.cached?.tag === tag) {
      this.cached.checkedAt = now;
      return this.cached.snap;
    }
    this.loading ??= this.load(tag, this.store.revision, now).finally(() => (this.loading = undefined));
    return this.loading;
  }

  private async load(tag: string, revision: number, checkedAt: number): Promise<Snapshot> {
    // An import may retire the active manifest's file between reading state and reading it: read again.
    for (let attempt = 0; ; attempt++) {
      const state = await this.store.readState();
      const rootVersion = this.store.trustedRoot(state).payload.version;
      let active: Snapshot['active'] = null;
      if (state.active) {
        let bytes: Buffer;
        try {
          bytes = await this.store.readManifestBytes(state.active);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'ENOENT' && attempt < 2) continue;
          throw e;
        }
        const env = parseEnvelope(bytes, 'stored manifest');
        const manifest = decodeManifest(decodeBase64Strict(env.payload, 'stored manifest payload'));
        active = { bytes, etag: `"${createHash('sha256').update(bytes).digest('hex')}"`, manifest };
      }
      const snap = { state, rootVersion, active };
      this.cached = { tag, snap, revision, checkedAt };
      return snap;
    }
  }
}
