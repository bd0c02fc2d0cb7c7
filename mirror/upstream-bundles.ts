/**
 * The mirror's bundle link to the server (`--upstream URL`, unless `--upstream-bundles off`): every
 * interval it asks the server for its site's newest signed bundle newer than the sequence it holds
 * (server/bundle-link.ts), downloads it resumably (Range, If-Range, stop at the size the server
 * named, digest checked) into `upstream/staging/` in the data dir, and imports it through the one
 * adoption path (import.ts `importFrom`), with every check a drop-folder file meets: root chain,
 * signatures, site, sequence, expiry, every blob's digest. What the server says about the bundle
 * decides only what is downloaded, never what is accepted.
 *
 * Each request is signed with the mirror's own key (core/link-auth.ts). An upstream that is a
 * mirror, not a server, answers 404: the link then says so and keeps quiet (not an error).
 * A refusal is the link's last error (with its code) and changes nothing in the store; the
 * partial download of a broken link is kept for the next attempt and removed once imported or
 * refused.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { isCodedError } from '../core/errors.js';
import { parseJsonStrict } from '../core/json.js';
import { LINK_AUTH_HEADER, signLinkRequest } from '../core/link-auth.js';
import { fileSource } from '../platform/fsx.js';
import { listEntries } from '../platform/bundle-entries.js';
import { decodeBase64Strict, isSha256Hex } from '../core/encoding.js';
import { MANIFEST_ENTRY } from '../core/bundle/reader.js';
import { MAX_MANIFEST_BYTES, parseManifestEnvelope } from '../core/manifest.js';
import { open } from 'node:fs/promises';
import { backoffMs, download, request } from '../platform/http/client.js';
import type { ClientLimits } from '../platform/http/limits.js';
import type { Transport } from '../platform/http/transport.js';
import type { Logger } from '../platform/log.js';
import type { MirrorIdentity } from './identity.js';
import { importFrom, type ImportResult } from './import.js';
import type { Store } from './store.js';

export interface UpstreamBundlesOptions {
  upstream: string;
  dataDir: string;
  store: Store;
  identity: MirrorIdentity;
  site: string;
  log: Logger;
  /** Between checks when all is well (ms); default one minute. */
  intervalMs?: number;
  /** First retry after a failure (ms), doubling up to the interval. */
  retryBaseMs?: number;
  transport?: Transport;
  limits?: Partial<ClientLimits>;
  onImported?: (r: ImportResult) => void;
}

export type LinkState = 'starting' | 'idle' | 'downloading' | 'importing' | 'not-a-server' | 'failing';

export interface UpstreamBundlesStatus {
  url: string;
  state: LinkState;
  lastCheckAt: string | null;
  lastOkAt: string | null;
  lastError: { code: string; message: string; at: string } | null;
  /** The last bundle imported over the link. */
  lastImported: { id: string; sequence: number; status: string; at: string } | null;
  /** The bundle being downloaded, and how far. */
  transfer: { id: string; sequence: number; bytes: number; have: number } | null;
}

interface Offer {
  id: string;
  sequence: number;
  bytes: number;
  sha256: string;
}

const MAX_LISTING_BYTES = 64 * 1024;
const ID = /^[A-Za-z0-9._-]{1,140}$/;

/** What the server's listing says, checked field by field. */
function parseOffer(body: Buffer): Offer | null {
  const v = parseJsonStrict(body, { maxBytes: MAX_LISTING_BYTES }) as { bundle?: unknown };
  if (typeof v !== 'object' || v === null || !('bundle' in v)) throw new Error('listing has no bundle field');
  if (v.bundle === null) return null;
  const b = v.bundle as Record<string, unknown>;
  if (
    typeof b !== 'object' ||
    typeof b.id !== 'string' ||
    !ID.test(b.id) ||
    !Number.isSafeInteger(b.sequence) ||
    !Number.isSafeInteger(b.bytes) ||
    (b.bytes as number) < 0 ||
    typeof b.sha256 !== 'string' ||
    !/^[0-9a-f]{64}$/.test(b.sha256)
  )
    throw new Error('listing: bundle must be {id, sequence, bytes, sha256}');
  return { id: b.id, sequence: b.sequence as number, bytes: b.bytes as number, sha256: b.sha256 };
}

export class UpstreamBundles {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;
  private failures = 0;
  private readonly abort = new AbortController();
  /** Offers refused (by the file's sha256): not downloaded again while the server offers the same. */
  private readonly refused = new Map<string, string>();
  private readonly s: UpstreamBundlesStatus;
  readonly staging: string;

  constructor(private readonly o: UpstreamBundlesOptions) {
    this.s = {
      url: o.upstream,
      state: 'starting',
      lastCheckAt: null,
      lastOkAt: null,
      lastError: null,
      lastImported: null,
      transfer: null,
    };
    this.staging = join(o.dataDir, 'upstream', 'staging');
  }

  status(): UpstreamBundlesStatus {
    return structuredClone(this.s);
  }

  start(): void {
    this.schedule(0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    this.abort.abort();
    await this.running?.catch(() => undefined);
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.running = this.round().then((next) => this.schedule(next));
    }, ms);
    this.timer.unref();
  }

  /** Headers for one request, signed for exactly this method and path. */
  private headers(method: string, url: string): Record<string, string> {
    const u = new URL(url);
    return {
      [LINK_AUTH_HEADER]: signLinkRequest(
        {
          mirror: this.o.identity.id,
          site: this.o.site,
          method,
          path: u.pathname + u.search,
          nonce: randomBytes(16).toString('hex'),
          now: Date.now(),
        },
        this.o.identity.key,
      ),
    };
  }

  private base(): string {
    return this.o.upstream.replace(/\/+$/, '');
  }

  /** One check (and download and import); returns the delay before the next. */
  async round(): Promise<number> {
    const interval = this.o.intervalMs ?? 60_000;
    this.s.lastCheckAt = new Date().toISOString();
    try {
      const state = await this.o.store.readState();
      const after = state.active?.sequence ?? 0;
      const url = `${this.base()}/v1/link/bundles?after=${after}`;
      const res = await request(url, {
        headers: this.headers('GET', url),
        maxBytes: MAX_LISTING_BYTES,
        signal: this.abort.signal,
        ...(this.o.transport && { transport: this.o.transport }),
        ...(this.o.limits && { limits: this.o.limits }),
      });
      if (res.status === 404) {
        // a mirror upstream (telemetry relay only) has no bundles for us: not an error
        this.s.state = 'not-a-server';
        this.s.lastOkAt = new Date().toISOString();
        this.failures = 0;
        return interval;
      }
      if (res.status !== 200) throw refusedBy(res.status, res.body);
      let offer: Offer | null;
      try {
        offer = parseOffer(res.body);
      } catch (e) {
        throw Object.assign(
          new Error(`the server's answer is not a bundle listing: ${(e as Error).message}`),
          {
            code: 'LINK_BAD_ANSWER',
          },
        );
      }
      await this.clean(offer);
      const before = offer && this.refused.get(offer.sha256);
      if (offer && before) {
        // the same file again: refused before, refused now, without downloading it again
        this.s.state = 'failing';
        this.s.lastOkAt = new Date().toISOString();
        return interval;
      }
      if (offer) await this.fetchAndImport(offer);
      this.s.state = 'idle';
      this.s.lastOkAt = new Date().toISOString();
      this.failures = 0;
      return interval;
    } catch (e) {
      if (this.stopped) return interval;
      const code = isCodedError(e) ? e.code : ((e as { code?: string }).code ?? 'IO_ERROR');
      const message = e instanceof Error ? e.message : String(e);
      this.s.state = 'failing';
      this.s.lastError = { code, message, at: new Date().toISOString() };
      this.o.log.warn('upstream_bundles.failed', { url: this.o.upstream, code, reason: message });
      this.failures++;
      return backoffMs(this.failures - 1, {
        baseMs: this.o.retryBaseMs ?? 1000,
        maxMs: interval,
        jitter: 'equal',
      });
    }
  }

  /** Staged files of any other offer are stale: removed. */
  private async clean(keep: Offer | null): Promise<void> {
    await mkdir(this.staging, { recursive: true });
    for (const f of await readdir(this.staging))
      if (!keep || f !== `${keep.id}.part`) await rm(join(this.staging, f), { force: true });
  }

  private async fetchAndImport(offer: Offer): Promise<void> {
    const path = join(this.staging, `${offer.id}.part`);
    const url = `${this.base()}/v1/link/bundles/${encodeURIComponent(offer.id)}`;
    this.s.state = 'downloading';
    this.s.transfer = { id: offer.id, sequence: offer.sequence, bytes: offer.bytes, have: 0 };
    try {
      const d = await download(url, path, {
        expectedSize: offer.bytes,
        expectedSha256: offer.sha256,
        headers: this.headers('GET', url),
        signal: this.abort.signal,
        onBytes: (have) => {
          if (this.s.transfer) this.s.transfer.have = have;
        },
        ...(this.o.transport && { transport: this.o.transport }),
        ...(this.o.limits && { limits: this.o.limits }),
      });
      this.o.log.info('upstream_bundles.downloaded', {
        bundle: offer.id,
        bytes: offer.bytes,
        resumedFrom: d.resumedFrom,
        received: d.received,
      });
    } catch (e) {
      if (isCodedError(e) && (e.code === 'BLOB_DIGEST_MISMATCH' || e.code === 'BLOB_SIZE_MISMATCH'))
        await rm(path, { force: true }); // not the file the listing named: never resumed
      throw e;
    }
    this.s.state = 'importing';
    let r: ImportResult;
    try {
      const missing = await missingFromDelta(path, this.o.store);
      if (missing.length > 0)
        throw Object.assign(
          new Error(
            `bundle ${offer.id} is a delta that leaves out ${missing.length} blob(s) this mirror does not hold (${missing[0]!.slice(0, 12)}…): ask the server for a full bundle (ferry server bundle --full)`,
          ),
          { code: 'DELTA_INCOMPLETE' },
        );
      r = await importFrom(this.o.store, {
        label: `upstream ${this.o.upstream} bundle ${offer.id}`,
        open: () => fileSource(path),
        quarantine: false,
      });
    } catch (e) {
      this.refused.set(offer.sha256, (e as { code?: string }).code ?? 'IO_ERROR');
      throw e;
    } finally {
      await rm(path, { force: true });
      this.s.transfer = null;
    }
    this.o.onImported?.(r);
    if (!r.ok) {
      this.refused.set(offer.sha256, r.code);
      this.o.log.warn('upstream_bundles.refused', { bundle: offer.id, code: r.code, reason: r.message });
      throw Object.assign(new Error(`bundle ${offer.id} refused: ${r.message}`), { code: r.code });
    }
    this.s.lastImported = {
      id: offer.id,
      sequence: r.sequence,
      status: r.status,
      at: new Date().toISOString(),
    };
    this.o.log.info('upstream_bundles.imported', {
      bundle: offer.id,
      sequence: r.sequence,
      status: r.status,
      missing: r.missing.length,
    });
  }
}

/**
 * Blobs a bundle file's manifest names that neither the file nor the store holds (a delta built for
 * a store this mirror no longer matches). Read without trusting anything: a file that does not parse
 * is left to the import, which refuses it with its own code.
 */
async function missingFromDelta(path: string, store: Store): Promise<string[]> {
  let names: string[];
  let artifacts: unknown;
  try {
    const entries = await listEntries(path);
    const first = entries[0];
    if (!first || first.name !== MANIFEST_ENTRY || first.size > MAX_MANIFEST_BYTES) return [];
    const fh = await open(path, 'r');
    const bytes = Buffer.alloc(first.size);
    try {
      await fh.read(bytes, 0, first.size, first.offset);
    } finally {
      await fh.close();
    }
    const env = parseManifestEnvelope(bytes);
    artifacts = (
      parseJsonStrict(decodeBase64Strict(env.payload, 'manifest payload')) as { artifacts?: unknown }
    ).artifacts;
    names = entries.map((e) => e.name);
  } catch {
    return [];
  }
  if (!Array.isArray(artifacts)) return [];
  const carried = new Set(names.map((n) => n.replace(/^blobs\/sha256\//, '')));
  const missing: string[] = [];
  for (const a of artifacts as { sha256?: unknown }[]) {
    const d = a?.sha256;
    if (isSha256Hex(d) && !carried.has(d) && !(await store.hasBlob(d))) missing.push(d);
  }
  return missing;
}

/** A non-200 answer: the server's own code when it sent one. */
function refusedBy(status: number, body: Buffer): Error {
  let code = 'HTTP_STATUS';
  let message = `the server answered ${status}`;
  try {
    const v = parseJsonStrict(body, { maxBytes: MAX_LISTING_BYTES }) as { code?: unknown; message?: unknown };
    if (typeof v.code === 'string' && /^[A-Z_]{1,40}$/.test(v.code)) code = v.code;
    if (typeof v.message === 'string') message += `: ${v.message.slice(0, 300)}`;
  } catch {
    // not JSON: the status says enough
  }
  return Object.assign(new Error(message), { code });
}
