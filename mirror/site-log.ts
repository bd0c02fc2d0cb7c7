/**
 * This mirror's copy of the site log (core/site-log.ts; docs/mirror.md "Site
 * log"): its own entries and those its peers signed, in an append-only journal
 * under `<data>/site-log/` (platform/journal.ts: durable before an append
 * resolves). The journal's seq is the cursor peers pull with
 * (`GET /v1/site-log?after=N`); an entry's id is its identity, so one heard
 * twice is kept once.
 *
 * Bounded: past `maxEntries`, the log is compacted — entries of rollouts other
 * than the newest few are dropped, as are enrolments of revoked agents — into a
 * new journal that continues the old one's seq (so a peer's cursor stays
 * valid), swapped in by renames. Entries from peers past the bound, even
 * after compaction, are refused with SITE_LOG_FULL.
 */
import { mkdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Envelope } from '../core/dsse.js';
import { CodedError } from '../core/errors.js';
import {
  openSiteEntry,
  signSiteEntry,
  SITE_LOG_TYPE,
  type SiteEntry,
  type SiteLogBody,
} from '../core/site-log.js';
import type { RolloutEntry } from '../core/rollout/merge.js';
import { fsyncDir } from '../platform/fsx.js';
import { Journal } from '../platform/journal.js';
import type { MirrorIdentity } from './identity.js';

export interface SiteLogLimits {
  /** Entries held before the log is compacted. */
  maxEntries: number;
  /** Distinct rollouts whose entries survive a compaction (the newest by first sight). */
  keepRollouts: number;
}

export const DEFAULT_SITE_LOG_LIMITS: SiteLogLimits = { maxEntries: 50_000, keepRollouts: 4 };

const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

interface Held extends SiteEntry {
  seq: number;
}

export class SiteLog {
  private readonly byId = new Map<string, Held>();
  /** Agent id → its first enrolment and revocation entries held. */
  private readonly agentEntries = new Map<string, { enrol?: SiteEntry; revoke?: SiteEntry }>();
  private readonly listeners = new Set<(e: SiteEntry) => void>();
  private chain: Promise<unknown> = Promise.resolve();

  private constructor(
    private journal: Journal<{ env: Envelope }>,
    readonly site: string,
    private readonly identity: MirrorIdentity,
    /** Mirror id → public key of every mirror whose entries count here (this one included). */
    readonly mirrors: ReadonlyMap<string, Uint8Array>,
    readonly limits: SiteLogLimits,
  ) {}

  static async open(
    dataDir: string,
    site: string,
    identity: MirrorIdentity,
    peerKeys: ReadonlyMap<string, Uint8Array>,
    limits: Partial<SiteLogLimits> = {},
  ): Promise<SiteLog> {
    const dir = join(dataDir, 'site-log');
    // A compaction cut short: the new journal was complete once the old one was moved aside.
    if (!(await exists(dir)) && (await exists(`${dir}.new`))) await rename(`${dir}.new`, dir);
    await rm(`${dir}.old`, { recursive: true, force: true });
    await rm(`${dir}.new`, { recursive: true, force: true });
    const journal = await Journal.open<{ env: Envelope }>(dir);
    const mirrors = new Map(peerKeys);
    mirrors.set(identity.id, identity.key.publicKey);
    const log = new SiteLog(journal, site, identity, mirrors, { ...DEFAULT_SITE_LOG_LIMITS, ...limits });
    for (let from = journal.tail; from <= journal.head;) {
      const page = await journal.read(from, { maxRecords: 1000 });
      if (page.length === 0) break;
      for (const r of page) {
        // What was written here was checked then; a key the operator has since dropped stops counting.
        try {
          const e = openSiteEntry(r.env, mirrors, site);
          if (!log.byId.has(e.id)) log.index({ ...e, seq: r.seq });
        } catch {
          /* not counted */
        }
      }
      from = page.at(-1)!.seq + 1;
    }
    return log;
  }

  private index(e: Held): void {
    this.byId.set(e.id, e);
    const p = e.payload;
    if (p.kind === 'rollout') return;
    let a = this.agentEntries.get(p.agentId);
    if (!a) this.agentEntries.set(p.agentId, (a = {}));
    a[p.kind] ??= e;
  }

  /** The first enrolment and revocation entries held for an agent. */
  agent(agentId: string): { enrol?: SiteEntry; revoke?: SiteEntry } {
    return this.agentEntries.get(agentId) ?? {};
  }

  /** Agent ids with an entry. */
  agentIds(): string[] {
    return [...this.agentEntries.keys()];
  }

  get head(): number {
    return this.journal.head;
  }

  get size(): number {
    return this.byId.size;
  }

  private serial<T>(f: () => Promise<T>): Promise<T> {
    const p = this.chain.then(f);
    this.chain = p.catch(() => undefined);
    return p;
  }

  /** Calls `fn` with every entry newly held (this mirror's own and its peers'). */
  onEntry(fn: (e: SiteEntry) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private async hold(e: SiteEntry): Promise<boolean> {
    if (this.byId.has(e.id)) return false;
    const [seq] = await this.journal.append([{ env: e.envelope }]);
    this.index({ ...e, seq: seq! });
    for (const fn of this.listeners) fn(e);
    return true;
  }

  /** Signs and keeps a decision of this mirror's (durable when it resolves). */
  record(body: SiteLogBody, at: number): Promise<SiteEntry> {
    return this.serial(async () => {
      const e = signSiteEntry(
        { ...body, type: SITE_LOG_TYPE, site: this.site, mirror: this.identity.id, at },
        this.identity.key,
      );
      await this.hold(e);
      await this.compactIfFull();
      return e;
    });
  }

  /** Checks and keeps an entry a peer served; true when it was new. Refusals throw with a code. */
  async accept(v: unknown): Promise<boolean> {
    const e = openSiteEntry(v, this.mirrors, this.site);
    if (this.byId.has(e.id)) return false;
    return this.serial(async () => {
      if (this.byId.size >= this.limits.maxEntries) await this.compactIfFull();
      if (this.byId.size >= this.limits.maxEntries)
        throw new CodedError('SITE_LOG_FULL', `the site log holds ${this.byId.size} entries`);
      return this.hold(e);
    });
  }

  /** Entries after seq `after`, oldest first, at most `max`; `next` is the cursor to ask with next. */
  after(after: number, max: number): { entries: Envelope[]; next: number } {
    const list = [...this.byId.values()].filter((e) => e.seq > after).sort((a, b) => a.seq - b.seq);
    const page = list.slice(0, max);
    return { entries: page.map((e) => e.envelope), next: page.at(-1)?.seq ?? Math.max(after, 0) };
  }

  all(): SiteEntry[] {
    return [...this.byId.values()].sort((a, b) => a.seq - b.seq);
  }

  rolloutEntries(): RolloutEntry[] {
    const out: RolloutEntry[] = [];
    for (const e of this.byId.values())
      if (e.payload.kind === 'rollout') out.push({ id: e.id, body: e.payload });
    return out;
  }

  /** Rollout ids, newest first sight first. */
  private rollouts(): string[] {
    const first = new Map<string, number>();
    for (const e of this.byId.values())
      if (e.payload.kind === 'rollout' && !first.has(e.payload.rolloutId))
        first.set(e.payload.rolloutId, e.seq);
    return [...first].sort((a, b) => b[1] - a[1]).map(([id]) => id);
  }

  private async compactIfFull(): Promise<void> {
    if (this.byId.size < this.limits.maxEntries) return;
    const keep = new Set(this.rollouts().slice(0, this.limits.keepRollouts));
    const revoked = new Set<string>();
    for (const e of this.byId.values()) if (e.payload.kind === 'revoke') revoked.add(e.payload.agentId);
    const stays = this.all().filter((e) =>
      e.payload.kind === 'rollout'
        ? keep.has(e.payload.rolloutId)
        : e.payload.kind === 'revoke' || !revoked.has(e.payload.agentId),
    );
    // A new journal beside the old, continuing its seq, then swapped in by renames: a crash leaves one
    // whole journal or the other (open() finishes a swap it finds half done).
    const dir = this.journal.dir;
    const fresh = `${dir}.new`;
    const head = this.journal.head;
    await this.journal.close();
    await rm(fresh, { recursive: true, force: true });
    await mkdir(fresh);
    await writeFile(join(fresh, `${String(head + 1).padStart(16, '0')}.jsonl`), '');
    const next = await Journal.open<{ env: Envelope }>(fresh);
    const seqs = await next.append(stays.map((e) => ({ env: e.envelope })));
    await next.close();
    await rename(dir, `${dir}.old`);
    await rename(fresh, dir);
    await fsyncDir(dirname(dir));
    await rm(`${dir}.old`, { recursive: true, force: true });
    this.journal = await Journal.open<{ env: Envelope }>(dir);
    this.byId.clear();
    this.agentEntries.clear();
    stays.forEach((e, i) => this.index({ ...e, seq: seqs[i]! }));
  }

  close(): Promise<void> {
    return this.serial(() => this.journal.close());
  }
}
