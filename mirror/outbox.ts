/**
 * The mirror's telemetry outbox: everything it accepted and must get home —
 * agents' heartbeats, the enrolments it made, batches other mirrors handed it —
 * in one journal (core/journal.ts) under `<data>/telemetry/outbox/`, each
 * record with the mirror's own sequence number. A record is acknowledged to
 * its sender (202) only once its line is fsynced; commits are grouped.
 *
 * Records stay until an upstream (or a courier's acknowledgement) takes them:
 * `acked` is the highest seq taken, and whole journal segments at or below it
 * are deleted. `<data>/telemetry/outbox.json` is a checkpoint (atomic write)
 * of what is derived from the journal — the highest heartbeat counter per
 * agent, `acked`, the exports made — with the journal seq it covers; on open
 * the records after that seq are replayed, so the checkpoint need not be
 * written for every request.
 */
import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Envelope } from '../core/dsse.js';
import { writeFileAtomic } from '../platform/fsx.js';
import type { Heartbeat } from '../core/heartbeat.js';
import { isAgentId } from '../core/heartbeat.js';
import { Journal, type Entry } from '../platform/journal.js';
import type {
  CarriedBatch,
  EnrolmentInfo,
  OutboxRecord,
  RevocationInfo,
  RolloutEventInfo,
} from '../core/telemetry.js';

type NoSeq<T> = T extends unknown ? Omit<T, 'seq'> : never;
export type OutboxInput = NoSeq<OutboxRecord>;
export type OutboxEntry = Entry<OutboxInput>;

/** What the outbox holds, for status views and gauges. */
export interface OutboxFigures {
  /** Records waiting to go home, seq acked+1..head. */
  depth: number;
  acked: number;
  head: number;
  /** Bytes the outbox holds on disk. */
  bytes: number;
  /** When the oldest waiting record was accepted (absent when none waits). */
  oldestAt?: string;
}

export interface ExportMark {
  number: number;
  hash: string;
  from: number;
  to: number;
  at: string;
}

interface Checkpoint {
  v: 1;
  journalSeq: number;
  counters: Record<string, number>;
  acked: number;
  exports: ExportMark[];
}

export type CommitOutcome = 'accepted' | 'REPLAY';

const KEEP_EXPORTS = 64;
const CHECKPOINT_EVERY_MS = 5_000;

export interface OutboxOptions {
  /** 'each' turns group commit off (for comparison in benchmarks). */
  fsync?: 'group' | 'each';
  now?: () => number;
}

export class MirrorOutbox {
  private counters: Record<string, number> = {};
  /** Highest counter per agent among appends not yet durable. */
  private readonly inflight = new Map<string, number>();
  /** Highest journal seq whose effect on `counters` is applied. */
  private applied = 0;
  private ackedSeq = 0;
  private exportMarks: ExportMark[] = [];
  private dirty = false;
  private timer: NodeJS.Timeout | undefined;
  private listeners = new Set<() => void>();
  private checkpointing: Promise<void> | undefined;
  /** When the oldest record still waiting was accepted (ms), undefined when none waits. */
  private oldestMs: number | undefined;

  private constructor(
    readonly dataDir: string,
    readonly journal: Journal<OutboxInput>,
    private readonly now: () => number,
  ) {}

  static paths(dataDir: string) {
    return {
      journal: join(dataDir, 'telemetry', 'outbox'),
      checkpoint: join(dataDir, 'telemetry', 'outbox.json'),
      lock: join(dataDir, 'telemetry', 'outbox.lock'),
    };
  }

  static async open(dataDir: string, o: OutboxOptions = {}): Promise<MirrorOutbox> {
    const p = MirrorOutbox.paths(dataDir);
    const journal = await Journal.open<OutboxInput>(p.journal, { fsync: o.fsync ?? 'group' });
    const box = new MirrorOutbox(dataDir, journal, o.now ?? Date.now);
    await box.load();
    return box;
  }

  private async load(): Promise<void> {
    const p = MirrorOutbox.paths(this.dataDir);
    const text = await readFile(p.checkpoint, 'utf8').catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return undefined;
      throw e;
    });
    if (text !== undefined) {
      const c = JSON.parse(text) as Checkpoint;
      if (c.v !== 1 || !Number.isSafeInteger(c.journalSeq) || !Number.isSafeInteger(c.acked))
        throw new Error(`${p.checkpoint} is not an outbox checkpoint`);
      for (const [k, n] of Object.entries(c.counters ?? {}))
        if (isAgentId(k) && Number.isSafeInteger(n)) this.counters[k] = n;
      this.applied = c.journalSeq;
      this.ackedSeq = c.acked;
      this.exportMarks = Array.isArray(c.exports) ? c.exports : [];
    } else {
      await this.migrate();
    }
    // Replay what the checkpoint does not cover.
    for (let from = this.applied + 1; from <= this.journal.head;) {
      const batch = await this.journal.read(from, { maxRecords: 5000, maxBytes: 16 * 1024 * 1024 });
      if (!batch.length) break;
      for (const e of batch) this.apply(e, e.seq);
      from = batch.at(-1)!.seq + 1;
    }
    this.applied = Math.max(this.applied, this.journal.head);
    await this.refreshOldest();
  }

  /** Looks up the oldest waiting record (the one after the acknowledged mark); unchanged if acked moves meanwhile. */
  private async refreshOldest(): Promise<void> {
    const acked = this.ackedSeq;
    const first = this.depth > 0 ? await this.journal.peek(acked + 1) : undefined;
    if (this.ackedSeq !== acked) return; // a later ack refreshes instead
    this.oldestMs = first ? Date.parse(first.at) : undefined;
  }

  /**
   * A data dir from before the outbox: heartbeats in `telemetry/<day>.jsonl`
   * and counters in `agents/counters.json`. They move into the journal once
   * (durably, before the old files go), after an enrolment record for every
   * agent already enrolled so the server learns their keys first.
   */
  private async migrate(): Promise<void> {
    const dir = join(this.dataDir, 'telemetry');
    const days = (await readdir(dir).catch(() => [] as string[]))
      .filter((f) => /^\d{4}-\d{2}-\d{2}\.jsonl$/.test(f))
      .sort();
    const agentsDir = join(this.dataDir, 'agents');
    const agentFiles = (await readdir(agentsDir).catch(() => [] as string[])).filter((f) =>
      /^[0-9a-f]{32}\.json$/.test(f),
    );
    if (!days.length && !agentFiles.length) return;
    const records: OutboxInput[] = [];
    const at = new Date(this.now()).toISOString();
    for (const f of agentFiles.sort()) {
      const r = JSON.parse(await readFile(join(agentsDir, f), 'utf8')) as Record<string, unknown>;
      records.push({
        kind: 'enrolment',
        at,
        agent: {
          agentId: r.id as string,
          publicKey: r.publicKey as string,
          hostname: r.hostname as string,
          platform: r.platform as string,
          groups: r.groups as string[],
          enrolledAt: r.enrolledAt as string,
        },
      });
    }
    for (const f of days) {
      for (const line of (await readFile(join(dir, f), 'utf8')).split('\n')) {
        if (!line) continue;
        let v: { receivedAt: string; agentId: string; counter: number; envelope: Envelope };
        try {
          v = JSON.parse(line) as typeof v;
        } catch {
          continue; // a torn last line was never acknowledged
        }
        records.push({
          kind: 'heartbeat',
          at: v.receivedAt,
          agentId: v.agentId,
          counter: v.counter,
          envelope: v.envelope,
        });
      }
    }
    await this.journal.append(records);
    for (const e of await this.readAllFrom(1)) this.apply(e, e.seq);
    this.applied = this.journal.head;
    await this.writeCheckpoint();
    for (const f of days) await rm(join(dir, f), { force: true });
    await rm(join(agentsDir, 'counters.json'), { force: true });
  }

  private async readAllFrom(from: number): Promise<OutboxEntry[]> {
    const out: OutboxEntry[] = [];
    for (;;) {
      const b = await this.journal.read(from, { maxRecords: 5000, maxBytes: 16 * 1024 * 1024 });
      if (!b.length) return out;
      out.push(...b);
      from = b.at(-1)!.seq + 1;
    }
  }

  /** Folds one journal record (at `seq`) into the derived state: replayed at open, and after each append. */
  private apply(e: OutboxInput, seq: number): void {
    if (e.kind === 'heartbeat' && e.counter > (this.counters[e.agentId] ?? -1))
      this.counters[e.agentId] = e.counter;
    if (seq > this.applied) this.applied = seq;
  }

  /** Highest seq written. */
  get head(): number {
    return this.journal.head;
  }

  /** Highest seq an upstream or a courier's ack has taken. */
  get acked(): number {
    return this.ackedSeq;
  }

  /** Records waiting to go home. */
  get depth(): number {
    return Math.max(0, this.journal.head - this.ackedSeq);
  }

  /** Bytes the outbox journal holds on disk (acknowledged records go with their whole segment). */
  get bytes(): number {
    return this.journal.bytes;
  }

  /** When the oldest record still waiting was accepted (ms since the epoch); undefined when none waits. */
  get oldestWaitingAt(): number | undefined {
    return this.depth > 0 ? this.oldestMs : undefined;
  }

  figures(): OutboxFigures {
    const oldest = this.oldestWaitingAt;
    return {
      depth: this.depth,
      acked: this.acked,
      head: this.head,
      bytes: this.bytes,
      ...(oldest !== undefined && { oldestAt: new Date(oldest).toISOString() }),
    };
  }

  get exports(): readonly ExportMark[] {
    return this.exportMarks;
  }

  /** Highest counter accepted from an agent, durable or on its way (-1 when none). */
  lastCounter(agentId: string): number {
    return Math.max(this.counters[agentId] ?? -1, this.inflight.get(agentId) ?? -1);
  }

  /** Calls `fn` after every acknowledgement that moved the mark. */
  onAck(fn: () => void): () => void {
    this.ackListeners.add(fn);
    return () => this.ackListeners.delete(fn);
  }

  private ackListeners = new Set<() => void>();

  /** Calls `fn` after every durable append (the forwarder's wake-up). */
  onAppend(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private async appendRecords(records: OutboxInput[]): Promise<number[]> {
    const seqs = await this.journal.append(records);
    this.oldestMs ??= Date.parse(records[0]!.at);
    this.dirty = true;
    this.scheduleCheckpoint();
    for (const fn of this.listeners) fn();
    return seqs;
  }

  /**
   * Appends verified heartbeats; resolves once durable, one outcome per item:
   * 'accepted', or 'REPLAY' when its counter is not above the highest already
   * accepted from that agent (including earlier items of this call).
   */
  async appendHeartbeats(items: { heartbeat: Heartbeat; envelope: Envelope }[]): Promise<CommitOutcome[]> {
    const at = new Date(this.now()).toISOString();
    const records: OutboxInput[] = [];
    const mine = new Map<string, number>();
    const outcomes = items.map(({ heartbeat: h, envelope }): CommitOutcome => {
      if (h.counter <= this.lastCounter(h.agentId)) return 'REPLAY';
      this.inflight.set(h.agentId, h.counter);
      mine.set(h.agentId, h.counter);
      records.push({ kind: 'heartbeat', at, agentId: h.agentId, counter: h.counter, envelope });
      return 'accepted';
    });
    if (!records.length) return outcomes;
    const release = () => {
      for (const [id, n] of mine) if (this.inflight.get(id) === n) this.inflight.delete(id);
    };
    let seqs: number[];
    try {
      seqs = await this.appendRecords(records);
    } catch (e) {
      release();
      throw e;
    }
    records.forEach((r, i) => this.apply(r, seqs[i]!));
    release();
    return outcomes;
  }

  /** Records an agent this mirror admitted, so the server can check its heartbeats. */
  async appendEnrolment(agent: EnrolmentInfo): Promise<void> {
    await this.appendRecords([{ kind: 'enrolment', at: new Date(this.now()).toISOString(), agent }]);
  }

  /** Records that the operator revoked an agent here, so the server learns it too. */
  async appendRevocation(revocation: RevocationInfo): Promise<void> {
    await this.appendRecords([{ kind: 'revocation', at: new Date(this.now()).toISOString(), revocation }]);
  }

  /** Records a rollout decision made at this site (docs/rollout.md), so the server learns what and why. */
  async appendRolloutEvent(rollout: RolloutEventInfo): Promise<void> {
    await this.appendRecords([{ kind: 'rollout', at: new Date(this.now()).toISOString(), rollout }]);
  }

  /** Takes custody of batches from other mirrors (structure checked by the caller). */
  async appendRelayed(batches: CarriedBatch[]): Promise<number[]> {
    const at = new Date(this.now()).toISOString();
    return this.appendRecords(
      batches.map((b) => ({ kind: 'batch' as const, at, via: b.via, envelope: b.envelope })),
    );
  }

  /** Records from `from` on, in seq order. */
  read(from: number, limits?: { maxRecords?: number; maxBytes?: number }): Promise<OutboxEntry[]> {
    return this.journal.read(from, limits);
  }

  /** Everything up to `upTo` arrived somewhere that keeps it: remember, then delete what is no longer needed. */
  async ack(upTo: number): Promise<void> {
    upTo = Math.min(upTo, this.journal.head);
    if (upTo <= this.ackedSeq) return;
    this.ackedSeq = upTo;
    await this.checkpoint();
    await this.refreshOldest();
    for (const fn of this.ackListeners) fn();
    if (this.holds === 0) await this.journal.trim(this.trimmable());
  }

  private holds = 0;
  private readonly floors = new Set<() => number>();

  /**
   * Keeps the records above `floor()` from being trimmed even once acknowledged: for a reader that
   * replays them at its next start (the fleet view, from its last snapshot on).
   */
  keepFrom(floor: () => number): () => void {
    this.floors.add(floor);
    return () => this.floors.delete(floor);
  }

  /** Up to where acknowledged records may go. */
  private trimmable(): number {
    let upTo = Math.min(this.ackedSeq, this.applied);
    for (const f of this.floors) upTo = Math.min(upTo, f());
    return upTo;
  }

  /** Runs `fn` with trimming put off (a reader walking the journal, like an export, sees every record). */
  async holdingTrim<T>(fn: () => Promise<T>): Promise<T> {
    this.holds++;
    try {
      return await fn();
    } finally {
      if (--this.holds === 0) await this.journal.trim(this.trimmable());
    }
  }

  async recordExport(mark: ExportMark): Promise<void> {
    this.exportMarks = [...this.exportMarks, mark].slice(-KEEP_EXPORTS);
    await this.checkpoint();
  }

  private scheduleCheckpoint(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.dirty) void this.checkpoint().catch(() => undefined);
    }, CHECKPOINT_EVERY_MS);
    this.timer.unref();
  }

  /** Writes the checkpoint now (one at a time; a request made during a write gets its own write). */
  async checkpoint(): Promise<void> {
    while (this.checkpointing) await this.checkpointing;
    this.checkpointing = this.writeCheckpoint().finally(() => (this.checkpointing = undefined));
    return this.checkpointing;
  }

  private async writeCheckpoint(): Promise<void> {
    this.dirty = false;
    const c: Checkpoint = {
      v: 1,
      journalSeq: this.applied,
      counters: this.counters,
      acked: this.ackedSeq,
      exports: this.exportMarks,
    };
    await writeFileAtomic(MirrorOutbox.paths(this.dataDir).checkpoint, JSON.stringify(c) + '\n');
  }

  async close(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.journal.close();
    await this.checkpoint();
  }
}
