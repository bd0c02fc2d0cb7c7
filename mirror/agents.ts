/**
 * Agents enrolled at this mirror, in the data dir (`agents/<agentId>.json`,
 * atomic writes), and the telemetry they send, which goes into the mirror's
 * outbox (mirror/outbox.ts): a heartbeat is acknowledged (202) only once its
 * record is fsynced there, grouped with whatever else arrived meanwhile.
 * Every enrolment is put in the outbox too, so the server learns each agent's
 * key from a record signed by the mirror that admitted it; so is every
 * revocation, so the server learns which agents the site shut out.
 *
 * Who may enrol is decided by the enrolment route (http/agents.ts) with the
 * tokens kept here (tokens.ts); this store records what was admitted.
 */
import { mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Envelope } from '../core/dsse.js';
import { agentIdOf, isAgentId, type EnrollPayload, type Heartbeat } from '../core/heartbeat.js';
import { keyIdOf } from '../core/ed25519.js';
import { CodedError } from '../core/errors.js';
import { decodeHex } from '../core/encoding.js';
import { fsyncDir, writeFileAtomic } from '../platform/fsx.js';
import { MirrorOutbox, type CommitOutcome } from './outbox.js';
import { RelaySeen } from './relayed.js';
import { TokenStore } from './tokens.js';

export type { CommitOutcome } from './outbox.js';

export interface AgentRecord {
  id: string;
  publicKey: string; // hex
  keyid: string;
  hostname: string;
  platform: string;
  groups: string[];
  enrolledAt: string;
  /** Id of the enrolment token that admitted it (never the token itself); absent under open enrolment. */
  tokenId?: string;
  /**
   * The agent's signed enrolment request, kept so the server can check it too. Not kept when it
   * carries a token: the token's secret must not leave the mirror.
   */
  request?: Envelope;
  /** Set by `ferry mirror agent revoke`: heartbeats are refused from then on. */
  revokedAt?: string;
  revokeReason?: string;
}

/** What admitted an enrolment: the groups it gets, and the token that granted them. */
export interface EnrolGrant {
  groups: string[];
  tokenId?: string;
}

export interface AcceptedHeartbeat {
  heartbeat: Heartbeat;
  envelope: Envelope;
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
    typeof o.enrolledAt === 'string' &&
    (o.revokedAt === undefined || typeof o.revokedAt === 'string')
  );
}

export class AgentNotFoundError extends CodedError<'UNKNOWN_AGENT'> {}

export class AgentsStore {
  readonly paths: { agents: string };
  /** The enrolment tokens of this data dir. */
  readonly tokens: TokenStore;
  /** The ranges of other mirrors' batches already relayed (replays are not stored twice). */
  readonly relayed: RelaySeen;
  /** This mirror's site, which enrolment tokens must name (set by agentsFor from the store). */
  site: () => Promise<string> = () => Promise.reject(new Error('this agents store does not know its site'));
  /** Enrolment without a token (`serve --open-enrolment`); off unless the operator says so. */
  openEnrolment = false;
  private readonly records = new Map<string, AgentRecord>();
  private readonly keys = new Map<string, Uint8Array>();
  private opened: Promise<MirrorOutbox> | undefined;
  /** Awaited before a commit resolves (the rollout gate records its evidence first). */
  private readonly committedListeners: ((items: AcceptedHeartbeat[]) => Promise<void>)[] = [];
  private readonly recordListeners = new Set<(r: AgentRecord) => void>();
  private readonly heartbeatListeners = new Set<(items: AcceptedHeartbeat[]) => void>();
  private committing = 0;
  private settled = 0;

  constructor(
    readonly dir: string,
    private readonly now: () => number = Date.now,
    /** 'each' turns group commit off (benchmarks compare the two); default from FERRY_TELEMETRY_FSYNC. */
    private readonly fsync: 'group' | 'each' = process.env.FERRY_TELEMETRY_FSYNC === 'each'
      ? 'each'
      : 'group',
  ) {
    this.paths = { agents: join(dir, 'agents') };
    this.tokens = new TokenStore(dir, now);
    this.relayed = new RelaySeen(dir);
  }

  /** Creates the directories and opens the outbox; every method awaits it. */
  open(): Promise<MirrorOutbox> {
    return (this.opened ??= (async () => {
      const made = await mkdir(this.paths.agents, { recursive: true });
      if (made !== undefined) await fsyncDir(this.dir);
      const outbox = await MirrorOutbox.open(this.dir, { fsync: this.fsync, now: this.now });
      this.settled = outbox.head;
      return outbox;
    })());
  }

  /** The outbox telemetry goes into. */
  outbox(): Promise<MirrorOutbox> {
    return this.open();
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
    if ('token' in v) {
      // Records from before tokens were checked kept the token as given: it is not kept any more.
      delete (v as { token?: unknown }).token;
      await this.write(v);
      return v;
    }
    this.records.set(agentId, v);
    return v;
  }

  /** Public key of an enrolled agent, or undefined. */
  async publicKeyOf(agentId: string): Promise<Uint8Array | undefined> {
    const known = this.keys.get(agentId);
    if (known) return known;
    const r = await this.get(agentId);
    if (!r) return undefined;
    const key = decodeHex(r.publicKey, 32, `agents/${agentId}.json publicKey`);
    this.keys.set(agentId, key); // an agent's id is derived from its key: it never changes
    return key;
  }

  /**
   * Records an enrolment whose signature was checked under `p.publicKey`, with the groups `grant`
   * gives (the request's own claim only when no grant is passed: open enrolment). Idempotent: the
   * same key always gets the same id and keeps its first enrolledAt. A new or changed record goes
   * into the outbox (durably) before it is written here, so the server never misses an agent this
   * mirror knows.
   */
  async enroll(p: EnrollPayload, request?: Envelope, grant?: EnrolGrant): Promise<AgentRecord> {
    const outbox = await this.open();
    const publicKey = Buffer.from(p.publicKey, 'hex');
    const id = agentIdOf(publicKey);
    const existing = await this.get(id);
    const record: AgentRecord = {
      id,
      publicKey: p.publicKey,
      keyid: keyIdOf(publicKey),
      hostname: p.hostname,
      platform: p.platform,
      groups: [...(grant ? grant.groups : p.groups)],
      enrolledAt: existing?.enrolledAt ?? new Date(this.now()).toISOString(),
      ...(grant?.tokenId !== undefined && { tokenId: grant.tokenId }),
    };
    const same = (a: AgentRecord) => JSON.stringify({ ...a, request: undefined }) === JSON.stringify(record);
    if (!existing || !same(existing)) {
      // A request that carries a token is not kept: its secret stays here.
      if (request && p.token === undefined) record.request = request;
      await outbox.appendEnrolment({
        agentId: id,
        publicKey: record.publicKey,
        hostname: record.hostname,
        platform: record.platform,
        groups: record.groups,
        enrolledAt: record.enrolledAt,
        ...(record.request && { request: record.request }),
      });
      await this.write(record);
      return record;
    }
    return existing;
  }

  private async write(record: AgentRecord): Promise<void> {
    await writeFileAtomic(
      join(this.paths.agents, `${record.id}.json`),
      JSON.stringify(record, null, 2) + '\n',
    );
    this.records.set(record.id, record);
    for (const fn of this.recordListeners) fn(record);
  }

  /** Calls `fn` with every agent record written (enrolled, changed or revoked). */
  onRecord(fn: (r: AgentRecord) => void): () => void {
    this.recordListeners.add(fn);
    return () => this.recordListeners.delete(fn);
  }

  /** Calls `fn` with the heartbeats of each commit that were accepted, once they are durable. */
  onHeartbeats(fn: (items: AcceptedHeartbeat[]) => void): () => void {
    this.heartbeatListeners.add(fn);
    return () => this.heartbeatListeners.delete(fn);
  }

  /**
   * An outbox seq up to which every accepted heartbeat has been passed to the `onHeartbeats`
   * listeners: the outbox head at the last moment no commit was under way.
   */
  settledSeq(): number {
    return this.settled;
  }

  /** Whether the operator revoked this agent here. */
  async isRevoked(agentId: string): Promise<boolean> {
    return (await this.get(agentId))?.revokedAt !== undefined;
  }

  /**
   * Revokes an enrolled agent: the revocation goes into the outbox (durably, on its way to the
   * server) before the agent's record says so. Revoking it again changes nothing.
   */
  async revoke(agentId: string, reason = ''): Promise<{ record: AgentRecord; alreadyRevoked: boolean }> {
    const outbox = await this.open();
    const existing = await this.get(agentId);
    if (!existing)
      throw new AgentNotFoundError(
        'UNKNOWN_AGENT',
        `no agent ${isAgentId(agentId) ? agentId : '(malformed id)'} is enrolled here`,
      );
    if (existing.revokedAt !== undefined) return { record: existing, alreadyRevoked: true };
    const revokedAt = new Date(this.now()).toISOString();
    await outbox.appendRevocation({ agentId, revokedAt, reason });
    const record = { ...existing, revokedAt, revokeReason: reason };
    await this.write(record);
    return { record, alreadyRevoked: false };
  }

  /**
   * An enrolment or revocation a peer mirror of the site recorded (mirror/site-sync.ts), kept here so
   * the agent is served (or refused) as that mirror would. Not put in the outbox: the mirror that
   * decided it sends it home. An agent already known here keeps its record; a revocation is final.
   * Returns whether anything changed.
   */
  async adoptFromSite(
    r:
      | Omit<AgentRecord, 'keyid' | 'tokenId' | 'request'>
      | { id: string; revokedAt: string; revokeReason: string },
  ): Promise<boolean> {
    await this.open();
    const existing = await this.get(r.id);
    if ('publicKey' in r) {
      if (existing) return false;
      const publicKey = decodeHex(r.publicKey, 32, 'publicKey');
      if (agentIdOf(publicKey) !== r.id) throw new CodedError('BAD_ENROLMENT', 'agent id is not its key');
      await this.write({ ...r, keyid: keyIdOf(publicKey), groups: [...r.groups] });
      return true;
    }
    if (!existing || existing.revokedAt !== undefined) return false;
    await this.write({ ...existing, revokedAt: r.revokedAt, revokeReason: r.revokeReason });
    return true;
  }

  /** Every enrolled agent, by id. */
  async list(): Promise<AgentRecord[]> {
    await this.open();
    const files = (await readdir(this.paths.agents)).filter((f) => /^[0-9a-f]{32}\.json$/.test(f)).sort();
    const out: AgentRecord[] = [];
    for (const f of files) {
      const r = await this.get(f.slice(0, 32));
      if (r) out.push(r);
    }
    return out;
  }

  /** Highest counter accepted from an agent (-1 when none). */
  async lastCounter(agentId: string): Promise<number> {
    return (await this.open()).lastCounter(agentId);
  }

  /**
   * Appends verified heartbeats to the outbox; resolves once durable, with one
   * outcome per item: 'accepted', or 'REPLAY' when its counter is not above the
   * highest already accepted from that agent (including earlier items of the batch).
   */
  async commit(items: AcceptedHeartbeat[]): Promise<CommitOutcome[]> {
    const outbox = await this.open();
    this.committing++;
    try {
      const outcomes = await outbox.appendHeartbeats(items);
      const accepted = items.filter((_, i) => outcomes[i] === 'accepted');
      if (accepted.length) {
        for (const fn of this.heartbeatListeners) fn(accepted);
        for (const fn of this.committedListeners) await fn(accepted);
      }
      return outcomes;
    } finally {
      if (--this.committing === 0) this.settled = outbox.head;
    }
  }

  /** Called with the heartbeats of each commit that were accepted, before the commit resolves. */
  onCommitted(fn: (items: AcceptedHeartbeat[]) => Promise<void>): void {
    this.committedListeners.push(fn);
  }

  async close(): Promise<void> {
    if (this.opened) await (await this.opened).close();
  }
}

const byStore = new WeakMap<object, AgentsStore>();

/** One AgentsStore per mirror store object, so replay checks and token uses see every request. */
export function agentsFor(store: {
  dir: string;
  now: () => number;
  readState?: () => Promise<{ site: string }>;
}): AgentsStore {
  let a = byStore.get(store);
  if (!a) {
    byStore.set(store, (a = new AgentsStore(store.dir, store.now)));
    const read = store.readState?.bind(store);
    if (read) a.site = async () => (await read()).site;
  }
  return a;
}
