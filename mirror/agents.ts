/**
 * Agents enrolled at this mirror and the telemetry they send, in the data dir:
 *
 *   agents/<agentId>.json        enrolment record (atomic writes)
 *   agents/counters.json         highest heartbeat counter accepted per agent
 *   telemetry/<yyyy-mm-dd>.jsonl append-only log, one accepted heartbeat a line
 *
 * A heartbeat is acknowledged (202) only after its line is fsynced. Commits are
 * grouped: whatever arrives while one fsync runs goes into the next, so
 * concurrent requests share one fsync of the log and one write of the
 * counters. The log is written before the counters, so a crash between the two
 * can accept the same heartbeat twice (never lose one); readers dedupe on
 * (agentId, counter).
 */
import { open, mkdir, readFile, stat, truncate, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Envelope } from '../core/dsse.js';
import { agentIdOf, isAgentId, type EnrollPayload, type Heartbeat } from '../core/heartbeat.js';
import { keyIdOf } from '../core/ed25519.js';
import { decodeHex } from '../core/encoding.js';
import { fsyncDir, writeFileAtomic } from '../core/fsx.js';

export interface AgentRecord {
  id: string;
  publicKey: string; // hex
  keyid: string;
  hostname: string;
  platform: string;
  groups: string[];
  enrolledAt: string;
  /** The enrolment token presented, recorded as given (not checked yet). */
  token?: string;
}

export interface AcceptedHeartbeat {
  heartbeat: Heartbeat;
  envelope: Envelope;
}

export type CommitOutcome = 'accepted' | 'REPLAY';

interface Job {
  items: AcceptedHeartbeat[];
  resolve: (r: CommitOutcome[]) => void;
  reject: (e: unknown) => void;
}

function isRecord(v: unknown): v is AgentRecord {
  if (typeof v !== 'object' || v === null) return false;
  const o = v as Record<string, unknown>;
  return (
    isAgentId(o.id) &&
    typeof o.publicKey === 'string' &&
    typeof o.keyid === 'string' &&
    typeof o.hostname === 'string' &&
    typeof o.platform === 'string' &&
    Array.isArray(o.groups) &&
    typeof o.enrolledAt === 'string'
  );
}

export class AgentsStore {
  readonly paths: { agents: string; counters: string; telemetry: string };
  private readonly records = new Map<string, AgentRecord>();
  private counters: Record<string, number> = {};
  private opened: Promise<void> | undefined;
  private queue: Job[] = [];
  private draining = false;
  private log: { day: string; fh: FileHandle } | undefined;

  constructor(
    readonly dir: string,
    private readonly now: () => number = Date.now,
  ) {
    this.paths = {
      agents: join(dir, 'agents'),
      counters: join(dir, 'agents', 'counters.json'),
      telemetry: join(dir, 'telemetry'),
    };
  }

  /** Creates the directories and loads the counters; every method awaits it. */
  open(): Promise<void> {
    return (this.opened ??= (async () => {
      for (const d of [this.paths.agents, this.paths.telemetry]) {
        const made = await mkdir(d, { recursive: true });
        if (made !== undefined) await fsyncDir(this.dir);
      }
      const text = await readFile(this.paths.counters, 'utf8').catch((e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT') return '{}';
        throw e;
      });
      const v = JSON.parse(text) as unknown;
      if (typeof v === 'object' && v !== null && !Array.isArray(v))
        for (const [k, n] of Object.entries(v))
          if (isAgentId(k) && Number.isSafeInteger(n)) this.counters[k] = n as number;
    })());
  }

  async get(agentId: string): Promise<AgentRecord | undefined> {
    await this.open();
    if (!isAgentId(agentId)) return undefined;
    const cached = this.records.get(agentId);
    if (cached) return cached;
    const text = await readFile(join(this.paths.agents, `${agentId}.json`), 'utf8').catch(
      (e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT') return undefined;
        throw e;
      },
    );
    if (text === undefined) return undefined;
    const v = JSON.parse(text) as unknown;
    if (!isRecord(v) || v.id !== agentId) throw new Error(`agents/${agentId}.json is not an agent record`);
    this.records.set(agentId, v);
    return v;
  }

  /** Public key of an enrolled agent, or undefined. */
  async publicKeyOf(agentId: string): Promise<Uint8Array | undefined> {
    const r = await this.get(agentId);
    return r ? decodeHex(r.publicKey, 32, `agents/${agentId}.json publicKey`) : undefined;
  }

  /**
   * Records an enrolment whose signature was checked under `p.publicKey`.
   * Idempotent: the same key always gets the same id and keeps its first
   * enrolledAt; host, platform, groups and token are updated to the latest.
   */
  async enroll(p: EnrollPayload): Promise<AgentRecord> {
    await this.open();
    const publicKey = Buffer.from(p.publicKey, 'hex');
    const id = agentIdOf(publicKey);
    const existing = await this.get(id);
    const record: AgentRecord = {
      id,
      publicKey: p.publicKey,
      keyid: keyIdOf(publicKey),
      hostname: p.hostname,
      platform: p.platform,
      groups: [...p.groups],
      enrolledAt: existing?.enrolledAt ?? new Date(this.now()).toISOString(),
      ...(p.token !== undefined && { token: p.token }),
    };
    if (!existing || JSON.stringify(existing) !== JSON.stringify(record)) {
      await writeFileAtomic(join(this.paths.agents, `${id}.json`), JSON.stringify(record, null, 2) + '\n');
      this.records.set(id, record);
    }
    return record;
  }

  /** Highest counter accepted from an agent (-1 when none). */
  async lastCounter(agentId: string): Promise<number> {
    await this.open();
    return this.counters[agentId] ?? -1;
  }

  /**
   * Appends verified heartbeats to the log; resolves once durable, with one
   * outcome per item: 'accepted', or 'REPLAY' when its counter is not above the
   * highest already accepted from that agent (including earlier items of the batch).
   */
  commit(items: AcceptedHeartbeat[]): Promise<CommitOutcome[]> {
    return new Promise((resolve, reject) => {
      this.queue.push({ items, resolve, reject });
      if (!this.draining) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.draining = true;
    try {
      while (this.queue.length) {
        const jobs = this.queue.splice(0);
        try {
          const outcomes = await this.commitBatch(jobs.map((j) => j.items));
          jobs.forEach((j, i) => j.resolve(outcomes[i]!));
        } catch (e) {
          jobs.forEach((j) => j.reject(e));
        }
      }
    } finally {
      this.draining = false;
    }
  }

  private async commitBatch(batches: AcceptedHeartbeat[][]): Promise<CommitOutcome[][]> {
    await this.open();
    const next = { ...this.counters };
    const receivedAt = new Date(this.now()).toISOString();
    const lines: string[] = [];
    const outcomes = batches.map((items) =>
      items.map(({ heartbeat, envelope }): CommitOutcome => {
        if (heartbeat.counter <= (next[heartbeat.agentId] ?? -1)) return 'REPLAY';
        next[heartbeat.agentId] = heartbeat.counter;
        lines.push(
          JSON.stringify({ receivedAt, agentId: heartbeat.agentId, counter: heartbeat.counter, envelope }) +
            '\n',
        );
        return 'accepted';
      }),
    );
    if (lines.length) {
      const fh = await this.logFor(receivedAt.slice(0, 10));
      try {
        await fh.write(lines.join(''));
        await fh.sync();
      } catch (e) {
        // A partial write must not prefix the next line: reopen, which cuts the torn tail.
        await fh.close().catch(() => undefined);
        this.log = undefined;
        throw e;
      }
      await writeFileAtomic(this.paths.counters, JSON.stringify(next) + '\n');
      this.counters = next;
    }
    return outcomes;
  }

  /** The day's log, opened for append; a torn last line (a crash mid-write, never acknowledged) is cut off. */
  private async logFor(day: string): Promise<FileHandle> {
    if (this.log?.day === day) return this.log.fh;
    await this.log?.fh.close();
    this.log = undefined;
    const path = join(this.paths.telemetry, `${day}.jsonl`);
    const size = await stat(path).then(
      (s) => s.size,
      () => -1,
    );
    if (size > 0 && !(await endsWithNewline(path, size))) {
      const buf = await readFile(path); // rare: only after a crash mid-append
      await truncate(path, buf.lastIndexOf(0x0a) + 1);
    }
    const fh = await open(path, 'a', 0o644);
    if (size < 0) await fsyncDir(this.paths.telemetry);
    this.log = { day, fh };
    return fh;
  }

  async close(): Promise<void> {
    await this.log?.fh.close();
    this.log = undefined;
  }
}

async function endsWithNewline(path: string, size: number): Promise<boolean> {
  const fh = await open(path, 'r');
  try {
    const { buffer } = await fh.read(Buffer.alloc(1), 0, 1, size - 1);
    return buffer[0] === 0x0a;
  } finally {
    await fh.close();
  }
}

const byStore = new WeakMap<object, AgentsStore>();

/** One AgentsStore per mirror store object, so replay checks see every request. */
export function agentsFor(store: { dir: string; now: () => number }): AgentsStore {
  let a = byStore.get(store);
  if (!a) byStore.set(store, (a = new AgentsStore(store.dir, store.now)));
  return a;
}
