/**
 * The server's data directory: identity, registered mirrors, the journal (the
 * durable truth) and `state.json`, a lowdb checkpoint of the state derived
 * from the journal up to `journalSeq`. Opening loads the checkpoint and
 * replays newer records; a missing or unreadable checkpoint is rebuilt from
 * the journal's first record.
 *
 * One process owns a data directory at a time (`lock`, see mirror/lock.ts):
 * the journal cuts a torn tail when it opens, which must never race a writer.
 * Deliveries are ingested one at a time: each decides against the state left
 * by the previous one, so its journal group must be durable before the next
 * decides (a failed append reloads the state from disk).
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Low } from 'lowdb';
import { JSONFile } from 'lowdb/node';
import type { PrivateKey } from '../platform/keyfile.js';
import { Journal } from '../platform/journal.js';
import { silentLogger, type Logger } from '../platform/log.js';
import { acquireLock, serialize } from '../platform/lock.js';
import { ServerError } from './errors.js';
import { ensureIdentity } from './identity.js';
import { Ingest } from './ingest.js';
import { MirrorRegistry } from './mirrors.js';
import {
  apply,
  emptyState,
  fleetView,
  type AgentView,
  type JournalRecord,
  type ServerState,
} from './fleet-state.js';

export interface OpenOptions {
  log?: Logger;
  now?: () => Date;
  /** Checkpoint at most this often while ingesting (always on close). */
  checkpointMs?: number;
}

/** A journal entry as the record that was appended (the state keeps records, not entries). */
function withoutSeq(e: JournalRecord & { seq: number }): JournalRecord {
  const r: JournalRecord & { seq?: number } = { ...e };
  delete r.seq;
  return r;
}

const REPLAY_BATCH = { maxRecords: 5000, maxBytes: 16 * 1024 * 1024 };

export class ServerStore {
  private checkpointTimer: NodeJS.Timeout | undefined;
  private closed = false;

  private constructor(
    readonly dir: string,
    readonly key: PrivateKey,
    readonly mirrors: MirrorRegistry,
    private journal: Journal<JournalRecord>,
    private db: Low<ServerState>,
    private release: () => Promise<void>,
    readonly log: Logger,
    readonly now: () => Date,
    private readonly checkpointMs: number,
  ) {}

  /**
   * Batches refused before they authenticated as a registered mirror's, by code, since this process
   * started: counted here (and in /metrics), never journaled.
   */
  readonly unauthenticated = new Map<string, number>();

  get state(): ServerState {
    return this.db.data;
  }

  get journalHead(): number {
    return this.journal.head;
  }

  static async open(dir: string, o: OpenOptions = {}): Promise<ServerStore> {
    const log = o.log ?? silentLogger;
    const { mkdir } = await import('node:fs/promises');
    await mkdir(dir, { recursive: true });
    const release = await acquireLock(join(dir, 'lock'), { timeoutMs: 0 });
    try {
      const key = await ensureIdentity(dir);
      const mirrors = await MirrorRegistry.open(dir);
      const journal = await Journal.open<JournalRecord>(join(dir, 'journal'));
      const db = new Low<ServerState>(new JSONFile<ServerState>(join(dir, 'state.json')), emptyState());
      const store = new ServerStore(
        dir,
        key,
        mirrors,
        journal,
        db,
        release,
        log,
        o.now ?? (() => new Date()),
        o.checkpointMs ?? 1000,
      );
      await store.load();
      return store;
    } catch (e) {
      await release();
      throw e;
    }
  }

  /** Checkpoint, then every journal record after it. */
  private async load(): Promise<void> {
    try {
      await this.db.read();
      if (this.db.data.version !== 1 || !Number.isSafeInteger(this.db.data.journalSeq))
        throw new Error('unknown checkpoint');
      if (this.db.data.journalSeq > this.journal.head) throw new Error('checkpoint is ahead of the journal');
    } catch (e) {
      this.log.warn('server.checkpoint_rebuild', { reason: (e as Error).message });
      this.db.data = emptyState();
    }
    const from = this.db.data.journalSeq;
    this.written = from;
    for (let seq = from + 1; seq <= this.journal.head;) {
      const batch = await this.journal.read(seq, REPLAY_BATCH);
      if (batch.length === 0) break;
      for (const e of batch) apply(this.db.data, withoutSeq(e));
      seq = batch.at(-1)!.seq + 1;
      this.db.data.journalSeq = batch.at(-1)!.seq;
    }
    if (this.db.data.journalSeq !== from) await this.checkpoint();
    this.log.info('server.loaded', {
      journalSeq: this.db.data.journalSeq,
      replayed: this.db.data.journalSeq - from,
    });
  }

  /** Runs `fn` with a fresh Ingest, alone; appends its records as one group; returns once durable. */
  ingest<T>(source: string, fn: (ing: Ingest) => Promise<T>): Promise<T> {
    return serialize(`server:${this.dir}`, async () => {
      if (this.closed) throw new Error('server store is closed');
      await this.mirrors.reload();
      const ing = new Ingest(this.db.data, this.mirrors, source, this.now().toISOString());
      let result: T;
      try {
        result = await fn(ing);
        await ing.finish();
        for (const [code, n] of ing.unauthenticated)
          this.unauthenticated.set(code, (this.unauthenticated.get(code) ?? 0) + n);
        if (ing.records.length) {
          const seqs = await this.journal.append(ing.records);
          this.db.data.journalSeq = seqs.at(-1)!;
        }
      } catch (e) {
        // The state may hold records that never became durable: rebuild it from what is.
        if (ing.records.length) await this.reload();
        throw e;
      }
      if (ing.records.length) this.scheduleCheckpoint();
      return result;
    });
  }

  private async reload(): Promise<void> {
    this.db.data = emptyState();
    await this.journal.close().catch(() => undefined);
    this.journal = await Journal.open<JournalRecord>(join(this.dir, 'journal'));
    await this.load();
  }

  private scheduleCheckpoint(): void {
    if (this.checkpointTimer) return;
    this.checkpointTimer = setTimeout(() => {
      this.checkpointTimer = undefined;
      // Between deliveries only: mid-delivery the state holds records that are not durable yet.
      void serialize(`server:${this.dir}`, () => (this.closed ? Promise.resolve() : this.checkpoint())).catch(
        (e: unknown) => this.log.warn('server.checkpoint_failed', { error: e as Error }),
      );
    }, this.checkpointMs);
    this.checkpointTimer.unref();
  }

  /** Writes state.json (no fsync needed: the journal is the truth). */
  async checkpoint(): Promise<void> {
    await this.db.write();
    this.written = this.db.data.journalSeq;
  }

  /** journalSeq of the checkpoint on disk (-1: none written or read yet). */
  private written = -1;

  fleet(): AgentView[] {
    return fleetView(this.db.data);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    // Deliveries already queued finish first.
    await serialize(`server:${this.dir}`, async () => {
      this.closed = true;
      if (this.checkpointTimer) clearTimeout(this.checkpointTimer);
      this.checkpointTimer = undefined;
      await this.journal.close();
      // Only when something changed: a refused or empty run leaves the data dir as it was.
      if (this.db.data.journalSeq !== this.written) await this.checkpoint();
    });
    await this.release();
  }
}

/**
 * The state of a data directory without opening it for writing (no lock):
 * the checkpoint plus every complete journal line after it, read directly,
 * so it is safe while a server owns the directory.
 */
export async function readStateOffline(dir: string): Promise<ServerState> {
  let state: ServerState;
  try {
    state = JSON.parse(await readFile(join(dir, 'state.json'), 'utf8')) as ServerState;
    if (state.version !== 1) throw new Error('unknown checkpoint');
  } catch {
    state = emptyState();
  }
  const jdir = join(dir, 'journal');
  const present = await readdir(jdir).catch(() => undefined);
  if (!present) throw new ServerError('STORE_INVALID', `${dir} is not a server data directory (no journal)`);
  const names = present.filter((n) => /^\d{16}\.jsonl$/.test(n)).sort();
  let next = state.journalSeq + 1;
  for (const name of names) {
    const text = await readFile(join(jdir, name), 'utf8');
    const end = text.lastIndexOf('\n');
    for (const line of text.slice(0, end + 1).split('\n')) {
      if (!line) continue;
      const e = JSON.parse(line) as JournalRecord & { seq: number };
      const seq = e.seq;
      if (seq < next) continue;
      apply(state, withoutSeq(e));
      state.journalSeq = seq;
      next = seq + 1;
    }
  }
  return state;
}
