/**
 * What the HTTP side serves, cached until state.json changes. Every change to
 * the store ends with an atomic rename of state.json, so (inode, mtime, size)
 * of that one file tells whether anything the API shows may have changed: one
 * stat per request instead of reading and validating state on every poll.
 */
import { stat } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { decodeBase64Strict } from '../core/encoding.js';
import { parseEnvelope } from '../core/dsse.js';
import { decodeManifest, type Manifest } from '../core/manifest.js';
import type { MirrorState } from './state.js';
import type { Store } from './store.js';

export interface Snapshot {
  state: MirrorState;
  rootVersion: number;
  /** Exact bytes of the active manifest envelope, its ETag and its payload. */
  active: { bytes: Buffer; etag: string; manifest: Manifest } | null;
}

export class StateView {
  private cached: { tag: string; snap: Snapshot } | undefined;
  private loading: Promise<Snapshot> | undefined;

  constructor(private readonly store: Store) {}

  async current(): Promise<Snapshot> {
    const st = await stat(this.store.paths.state);
    // In-process writes bump the revision (no timestamp-granularity blind spot); other
    // processes' writes (`ferry mirror import`) replace the file, changing inode or mtime.
    const tag = `${this.store.revision}:${st.ino}:${st.mtimeMs}:${st.size}`;
    if (this.cached?.tag === tag) return this.cached.snap;
    this.loading ??= this.load(tag).finally(() => (this.loading = undefined));
    return this.loading;
  }

  private async load(tag: string): Promise<Snapshot> {
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
      this.cached = { tag, snap };
      return snap;
    }
  }
}
