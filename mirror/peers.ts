/**
 * Bundle sync between the mirrors of a site. Each round, every peer not on
 * back-off is asked for its manifest (`If-None-Match`: an unchanged one costs
 * a 304). An offer is checked against this mirror's own pinned root chain,
 * site, sequence mark and trusted time before anything else is fetched — the
 * reader and the freshness rule a courier's file meets (import.ts). The
 * newest offer that passes has its missing blobs pulled from whichever peers
 * hold them (peer-pull.ts), and is then adopted by importFrom with those
 * blobs, which checks everything again under the store's lock.
 *
 * A peer is never trusted, only used: one whose offer is refused
 * (equivocation, expiry, another site, an unknown signer, bad bytes, a body
 * past its limit) is put on back-off and the others are asked instead; its
 * refusal is logged and shown in the peer status, never written to the store.
 * A peer whose manifest verifies and is only older than ours is `behind`, not
 * hostile: it is no source for the manifest, but it is not backed off, and the
 * blobs it holds are pulled like any other peer's.
 *
 * Site-wide rollout decisions (a halt or approval made at one mirror) have
 * their place here too: round() asks every reachable peer once per round, and
 * exchanging those decisions would be one more request per peer beside poll(),
 * merged by the rollout gate's own rule rather than by the manifest's.
 */
import { mkdir, rm } from 'node:fs/promises';
import { readBundle } from '../core/bundle/reader.js';
import { parseEnvelope } from '../core/dsse.js';
import { parseJsonStrict } from '../core/json.js';
import { decodeManifest, manifestBlobs, MAX_MANIFEST_BYTES, type Manifest } from '../core/manifest.js';
import { MAX_ROOT_CHAIN_BYTES, peekRootPayload } from '../core/root.js';
import { decodeBase64Strict, isSha256Hex } from '../core/encoding.js';
import { CodedError, isCodedError } from '../core/errors.js';
import { backoffMs } from '../platform/http/retry.js';
import { request } from '../platform/http/request.js';
import type { ClientLimits } from '../platform/http/limits.js';
import type { Transport } from '../platform/http/transport.js';
import type { Logger } from '../platform/log.js';
import { offerSource, type Offer } from './bundle-source.js';
import { importFrom, type ImportResult } from './import.js';
import { pullBlobs, type PullPeer } from './peer-pull.js';
import type { Range } from './peer-ranges.js';
import { sweepPartials } from './peer-partials.js';
import { freshnessOf, type MirrorState } from './trust-state.js';
import type { Store } from './store.js';

export interface PeerSyncOptions {
  store: Store;
  /** The peers to ask now (re-evaluated every round: a peers file may change). */
  peers: () => Promise<string[]>;
  transport: Transport;
  log: Logger;
  /** Between rounds (ms); default 10 s. */
  intervalMs?: number;
  /** Back-off of a failing or refused peer: doubles from base to max (ms). */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** Blobs pulled at once; default 4. */
  parallel?: number;
  limits?: Partial<ClientLimits>;
  /** Told of every adoption (logs, metrics). */
  onAdopted?: (r: ImportResult, peer: string) => void;
  onReceived?: (peer: string, bytes: number) => void;
  /** Blobs this large or larger are pulled in ranges from several peers at once; default 64 MiB. */
  rangeMinBytes?: number;
  /** One range of such a pull; default 16 MiB. */
  rangeBytes?: number;
}

export type LinkState = 'unknown' | 'up' | 'down';

export interface PeerStatus {
  url: string;
  link: LinkState;
  /** Sequence of the peer's active manifest, as it last offered it (null: none, or not asked yet). */
  sequence: number | null;
  /**
   * How its offer compares with what this mirror holds: `behind` is a valid manifest that is only
   * older (a peer that has not caught up yet): not a source for the manifest, not backed off.
   */
  offer: 'newer' | 'same' | 'behind' | 'refused' | 'none' | null;
  failures: number;
  backoffUntil: string | null;
  lastError: { code: string; message: string; at: string } | null;
  busy: number;
  transfer: { digest: string; have: number; total: number } | null;
  received: number;
}

interface Peer extends PullPeer {
  link: LinkState;
  etag: string | undefined;
  envelopeBytes: Buffer | undefined;
  roots: Offer['roots'];
  sequence: number | null;
  offer: PeerStatus['offer'];
  retryAt: number;
  lastError: PeerStatus['lastError'];
  /** Digests its last answer names for this mirror (empty: nothing); undefined until it answers. */
  wants: Set<string> | undefined;
}

const MAX_INVENTORY_BYTES = 64 * 1024 * 1024;
/** Faults of the link rather than of what the peer said. */
const LINK_FAULTS = /^HTTP_(NETWORK|TIMEOUT)$/;

interface Candidate {
  peer: Peer;
  manifest: Manifest;
  offer: Offer;
}

export class PeerSync {
  private readonly peers = new Map<string, Peer>();
  private readonly abort = new AbortController();
  private loop: Promise<void> | undefined;
  private wake: (() => void) | undefined;
  private readonly dir: string;
  /** Ranges of large blobs received in earlier rounds (peer-ranges.ts). */
  private readonly carried = new Map<string, Range[]>();

  constructor(private readonly o: PeerSyncOptions) {
    this.dir = o.store.paths.peerPulls;
  }

  start(): void {
    this.loop ??= this.run();
  }

  /** Ends the loop; a transfer under way stops, keeping its verified prefix until the next start. */
  async stop(): Promise<void> {
    this.abort.abort();
    this.wake?.();
    await this.loop;
  }

  /** Starts the next round now (a test, or an operator's nudge). */
  poke(): void {
    this.wake?.();
  }

  status(): PeerStatus[] {
    const now = Date.now();
    return [...this.peers.values()].map((p) => ({
      url: p.url,
      link: p.link,
      sequence: p.sequence,
      offer: p.offer,
      failures: p.failures,
      backoffUntil: p.retryAt > now ? new Date(p.retryAt).toISOString() : null,
      lastError: p.lastError,
      busy: p.busy,
      transfer: p.transfer,
      received: p.received,
    }));
  }

  private async run(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    await this.sweep();
    while (!this.abort.signal.aborted) {
      try {
        await this.round();
      } catch (e) {
        this.o.log.error('peer.round_failed', { error: (e as Error).message });
      }
      if (this.abort.signal.aborted) break;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, this.o.intervalMs ?? 10_000);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wake = undefined;
    }
  }

  private usable = (p: PullPeer) => (p as Peer).retryAt <= Date.now();

  private async syncList(): Promise<Peer[]> {
    const urls = new Set((await this.o.peers()).map((u) => u.replace(/\/+$/, '')));
    for (const url of this.peers.keys()) if (!urls.has(url)) this.peers.delete(url);
    for (const url of urls)
      if (!this.peers.has(url))
        this.peers.set(url, {
          url,
          busy: 0,
          failures: 0,
          holds: new Set(),
          transfer: null,
          received: 0,
          link: 'unknown',
          etag: undefined,
          envelopeBytes: undefined,
          roots: [],
          sequence: null,
          offer: null,
          retryAt: 0,
          wants: undefined,
          lastError: null,
        });
    return [...this.peers.values()];
  }

  /** One round: poll every usable peer, then pull and adopt the newest acceptable offer. */
  async round(): Promise<ImportResult | undefined> {
    const peers = await this.syncList();
    const state = await this.o.store.readState();
    const candidates: Candidate[] = [];
    for (const p of peers.filter(this.usable)) {
      if (this.abort.signal.aborted) return undefined;
      const c = await this.poll(p, state).catch((e: unknown) => this.fault(p, e));
      if (c) candidates.push(c);
      // What it offers now; a peer that answered with nothing (or with a refused offer) wants nothing.
      if (c) p.wants = new Set(manifestBlobs(c.manifest).keys());
      else if (p.link === 'up') p.wants = new Set();
    }
    candidates.sort((a, b) => b.manifest.sequence - a.manifest.sequence);
    const best = candidates[0];
    try {
      return best ? await this.pullAndAdopt(best, peers) : undefined;
    } finally {
      await this.sweep();
    }
  }

  /** Removes stale files from peer-pulls/ (peer-partials.ts); a failure is logged, the sync goes on. */
  private async sweep(): Promise<void> {
    await this.sweepOnce().catch((e: unknown) =>
      this.o.log.error('peer.sweep_failed', { error: (e as Error).message }),
    );
  }

  private async sweepOnce(): Promise<void> {
    let wanted: Set<string> | undefined;
    const peers = [...this.peers.values()];
    if (peers.length > 0 && peers.every((p) => p.wants !== undefined)) {
      wanted = new Set(peers.flatMap((p) => [...p.wants!]));
      const state = await this.o.store.readState();
      for (const ref of state.pending) for (const d of await this.o.store.missingBlobs(ref)) wanted.add(d);
    }
    const removed = await sweepPartials({
      dir: this.dir,
      held: (d) => this.o.store.hasBlob(d),
      ranged: new Set(this.carried.keys()),
      wanted,
      log: this.o.log,
    });
    for (const name of removed) this.carried.delete(name.slice(0, 64));
  }

  /** Asks one peer for its manifest; returns an offer worth pulling, or nothing. Refusals throw. */
  private async poll(p: Peer, state: MirrorState): Promise<Candidate | undefined> {
    const res = await request(`${p.url}/v1/manifest`, {
      maxBytes: MAX_MANIFEST_BYTES,
      transport: this.o.transport,
      signal: this.abort.signal,
      headers: p.etag && p.envelopeBytes ? { 'if-none-match': p.etag } : {},
      ...(this.o.limits && { limits: this.o.limits }),
    });
    p.link = 'up';
    if (res.status === 404) {
      Object.assign(p, { offer: 'none', sequence: null, etag: undefined, envelopeBytes: undefined });
      this.healthy(p);
      return undefined;
    }
    if (res.status === 200) {
      p.envelopeBytes = res.body;
      const etag = res.headers.etag;
      p.etag = typeof etag === 'string' ? etag : undefined;
      p.roots = await this.rootsOf(p, state);
    } else if (res.status !== 304 || !p.envelopeBytes) {
      throw new CodedError('HTTP_STATUS', `${p.url}/v1/manifest: HTTP ${res.status}`);
    }
    const offer: Offer = { envelopeBytes: p.envelopeBytes, roots: p.roots, blobs: [] };
    // The head of the offer through the reader and the freshness rule, as a courier's file meets them.
    let contents;
    try {
      contents = await readBundle(offerSource(offer), {
        trusted: this.o.store.trustedRoot(state),
        site: state.site,
        now: this.o.store.now(),
        freshness: freshnessOf(state),
        acceptedExpired: 'refuse',
      });
    } catch (e) {
      if (!(isCodedError(e) && e.code === 'SEQUENCE_ROLLBACK')) throw e;
      // Root chain, signatures and site all held; the sequence is only lower than ours. A peer that
      // has not caught up, not a hostile one: no back-off, its blobs may still be pulled.
      return this.behind(p, offer.envelopeBytes);
    }
    p.sequence = contents.manifest.sequence;
    this.healthy(p);
    const missing = await this.missing(contents.manifest);
    if (contents.verdict!.kind === 'accept') {
      p.offer = 'newer';
      return { peer: p, manifest: contents.manifest, offer };
    }
    p.offer = 'same';
    // Known already: worth pulling only while blobs it names are still missing here (a delta, a volume).
    return missing.length > 0 ? { peer: p, manifest: contents.manifest, offer } : undefined;
  }

  /** Records a peer whose valid manifest is older than ours; it offers nothing to adopt. */
  private behind(p: Peer, envelopeBytes: Buffer): undefined {
    const env = parseEnvelope(envelopeBytes, 'peer manifest');
    // Decoded only to show its sequence: the reader verified these bytes before it compared sequences.
    p.sequence = decodeManifest(decodeBase64Strict(env.payload, 'peer manifest payload')).sequence;
    p.offer = 'behind';
    this.healthy(p);
    if (p.lastError?.code === 'SEQUENCE_ROLLBACK') p.lastError = null;
    return undefined;
  }

  /** The root envelopes the peer serves that are newer than this mirror's, as bundle entries. */
  private async rootsOf(p: Peer, state: MirrorState): Promise<Offer['roots']> {
    const res = await request(`${p.url}/v1/root`, {
      maxBytes: MAX_ROOT_CHAIN_BYTES,
      transport: this.o.transport,
      signal: this.abort.signal,
      ...(this.o.limits && { limits: this.o.limits }),
    });
    if (res.status !== 200) throw new CodedError('HTTP_STATUS', `${p.url}/v1/root: HTTP ${res.status}`);
    const list = parseJsonStrict(res.body);
    if (!Array.isArray(list)) throw new CodedError('ROOT_INVALID', 'root chain is not a list');
    const ours = this.o.store.trustedRoot(state).payload.version;
    const out: Offer['roots'] = [];
    for (const item of list) {
      const bytes = Buffer.from(JSON.stringify(item));
      const version = peekRootPayload(parseEnvelope(bytes, 'peer root')).version;
      if (version > ours) out.push({ version, bytes });
    }
    return out.sort((a, b) => a.version - b.version);
  }

  private async missing(m: Manifest): Promise<{ digest: string; size: number }[]> {
    const out = [];
    for (const [digest, size] of manifestBlobs(m))
      if (!(await this.o.store.hasBlob(digest))) out.push({ digest, size });
    return out;
  }

  private async inventory(p: Peer): Promise<void> {
    try {
      const res = await request(`${p.url}/v1/inventory`, {
        maxBytes: MAX_INVENTORY_BYTES,
        transport: this.o.transport,
        signal: this.abort.signal,
        ...(this.o.limits && { limits: this.o.limits }),
      });
      const v = res.status === 200 ? parseJsonStrict(res.body, { maxBytes: MAX_INVENTORY_BYTES }) : null;
      const blobs = (v as { blobs?: unknown } | null)?.blobs;
      p.holds = new Set(Array.isArray(blobs) ? blobs.filter((d): d is string => isSha256Hex(d)) : []);
    } catch (e) {
      this.fault(p, e);
    }
  }

  private async pullAndAdopt(c: Candidate, peers: Peer[]): Promise<ImportResult | undefined> {
    await mkdir(this.dir, { recursive: true });
    const want = await this.missing(c.manifest);
    const sources = peers.filter(this.usable);
    await Promise.all(sources.map((p) => this.inventory(p)));
    const log = this.o.log.child({ offeredBy: c.peer.url, sequence: c.manifest.sequence });
    if (want.length > 0)
      log.info('peer.pull', { blobs: want.length, bytes: want.reduce((n, b) => n + b.size, 0) });
    const pulled = await pullBlobs({
      blobs: want,
      peers: sources,
      dir: this.dir,
      parallel: this.o.parallel ?? 4,
      transport: this.o.transport,
      signal: this.abort.signal,
      log,
      usable: this.usable,
      ...(this.o.limits && { limits: this.o.limits }),
      onFault: (p, out) => {
        if (!this.abort.signal.aborted) this.fault(p as Peer, new CodedError(out.code, out.message));
      },
      onReceived: (p, n) => this.o.onReceived?.(p.url, n),
      carried: this.carried,
      ...(this.o.rangeMinBytes !== undefined && { rangeMinBytes: this.o.rangeMinBytes }),
      ...(this.o.rangeBytes !== undefined && { rangeBytes: this.o.rangeBytes }),
    });
    for (const p of sources) p.transfer = null;
    if (pulled.unavailable.length > 0 && want.length > 0) {
      log.warn('peer.incomplete', { unavailable: pulled.unavailable.length });
      // Partial downloads stay in peer-pulls/ for the next round to resume; nothing is adopted yet.
      if (pulled.fetched.size === 0) return undefined;
    }
    const blobs = want
      .filter((b) => pulled.fetched.has(b.digest))
      .map((b) => ({ ...b, path: pulled.fetched.get(b.digest)! }));
    // The blobs are not streamed again: they were hashed as they arrived, and the import takes those
    // the verified manifest names at their signed size.
    const offer = { ...c.offer, blobs: [] };
    // Named after the peer that delivered the most blobs (the manifest is the same signed bytes from any).
    const counts = new Map<Peer, number>();
    for (const p of pulled.from.values()) counts.set(p as Peer, (counts.get(p as Peer) ?? 0) + 1);
    const by = [...counts].sort((x, y) => y[1] - x[1])[0]?.[0] ?? c.peer;
    try {
      const r = await importFrom(this.o.store, {
        label: `peer ${by.url}`,
        open: () => offerSource(offer),
        verified: new Map(blobs.map((b) => [b.digest, b.path])),
        quarantine: false,
      });
      if (r.ok) {
        by.failures = 0;
        log.info('peer.adopted', {
          status: r.status,
          blobsAdded: r.blobsAdded.length,
          missing: r.missing.length,
        });
        this.o.onAdopted?.(r, c.peer.url);
      } else this.fault(by, new CodedError(r.code, r.message));
      return r;
    } finally {
      for (const path of pulled.fetched.values()) await rm(path, { force: true });
    }
  }

  /**
   * A poll answered: the link is up, which clears a record of link failures. A record of bad answers
   * stays: only a delivered blob or an adopted offer clears it, so a peer that answers polls but serves
   * bad bytes keeps its growing back-off and ranks last.
   */
  private healthy(p: Peer): void {
    p.link = 'up';
    if (p.lastError && LINK_FAULTS.test(p.lastError.code)) p.failures = 0;
  }

  /** Puts a peer on back-off and records why. Returns nothing, so a poll's catch yields no offer. */
  private fault(p: Peer, e: unknown): undefined {
    if (this.abort.signal.aborted) return undefined;
    const code = isCodedError(e) ? e.code : 'ERROR';
    const message = e instanceof Error ? e.message : String(e);
    const network = LINK_FAULTS.test(code);
    if (network) p.link = 'down';
    else p.offer = 'refused';
    p.failures++;
    const delay = backoffMs(p.failures - 1, {
      baseMs: this.o.backoffBaseMs ?? 1000,
      maxMs: this.o.backoffMaxMs ?? 60_000,
      jitter: 'equal',
    });
    p.retryAt = Date.now() + delay;
    p.lastError = { code, message, at: new Date().toISOString() };
    this.o.log.warn('peer.backoff', {
      peer: p.url,
      code,
      error: message,
      failures: p.failures,
      delayMs: delay,
    });
    return undefined;
  }
}
