/**
 * Ingest rules: one Ingest takes one delivery (an HTTP request's batches, or
 * one export file) and turns it into journal records, folding each into the
 * state as it goes so that later records of the same delivery see earlier
 * ones. No I/O: the caller appends `records` to the journal as one group and
 * answers only once that is durable (and rebuilds the state from disk if the
 * append fails).
 *
 * Three steps, so that a 100,000-heartbeat backlog verifies in parallel:
 * 1. walk the records in order: duplicates, enrolments, parking, site checks;
 *    heartbeats of known agents become candidates;
 * 2. verify candidates' signatures in chunks, off the main thread;
 * 3. decide each candidate in order (payload matches, not a replay) and store.
 *
 * Only what a registered mirror signed earns a journaled rejection. A batch that
 * does not authenticate as one (malformed, unregistered, bad signature) could
 * come from anyone: it is refused and counted (`unauthenticated`, by code), never
 * stored, so a flood of garbage costs the server no disk.
 */
import { setImmediate as yieldLoop } from 'node:timers/promises';
import { isCodedError } from '../core/errors.js';
import { agentIdOf, verifyEnrollRequest, verifyHeartbeatAsync, type Heartbeat } from '../core/heartbeat.js';
import {
  assertCarriedBatch,
  assertEnrolmentInfo,
  claimBatch,
  TelemetryError,
  verifyClaimedBatch,
  type OwnRecord,
} from '../core/telemetry.js';
import { ServerError, type RejectionCode } from './errors.js';
import { hasRange } from './intervals.js';
import {
  agentOf,
  apply,
  hasCounter,
  isCovered,
  mirrorOf,
  parkedOf,
  type JournalRecord,
  type HeartbeatSlot,
  type ParkedRecord,
  type RejectionRecord,
  type ServerState,
} from './fleet-state.js';

export interface MirrorInfo {
  id: string;
  site: string;
  publicKey: Uint8Array;
}

export interface Registry {
  get(mirrorId: string): MirrorInfo | undefined;
}

/** What one batch (or an export's own records) did. */
export interface Tally {
  stored: number;
  enrolments: number;
  duplicates: number;
  parked: number;
  rolloutEvents: number;
  rejected: {
    mirror?: string;
    seq?: number;
    agentId?: string;
    counter?: number;
    code: RejectionCode;
    message: string;
  }[];
}

export type BatchOutcome =
  | { ok: true; mirror: string; from: number; to: number; duplicate: boolean; tally: Tally }
  | { ok: false; mirror?: string; code: RejectionCode; message: string; tally: Tally };

interface Candidate {
  tally: Tally;
  site: string;
  slot: HeartbeatSlot;
  key: Uint8Array;
}

const newTally = (): Tally => ({
  stored: 0,
  enrolments: 0,
  duplicates: 0,
  parked: 0,
  rolloutEvents: 0,
  rejected: [],
});

/** Verifications in flight at once: enough to keep libuv's pool busy, bounded memory. */
const VERIFY_CHUNK = 512;
/** Records walked between yields to the event loop. */
const YIELD_EVERY = 2000;

export function rejectionOf(e: unknown): { code: RejectionCode; message: string } {
  if (e instanceof TelemetryError || e instanceof ServerError)
    return { code: e.code as RejectionCode, message: e.message };
  if (isCodedError(e)) {
    if (e.code === 'SIGNATURE_THRESHOLD') return { code: 'BAD_SIGNATURE', message: e.message };
    return { code: 'TELEMETRY_INVALID', message: e.message };
  }
  throw e;
}

export class Ingest {
  readonly records: JournalRecord[] = [];
  private readonly candidates: Candidate[] = [];
  /** Parked slots already queued for verification in this delivery. */
  private readonly unparked = new Set<string>();
  private walked = 0;
  /** Refusals of batches that did not authenticate as a registered mirror's, by code: counted, not journaled. */
  readonly unauthenticated = new Map<string, number>();

  constructor(
    readonly state: ServerState,
    readonly registry: Registry,
    readonly source: string,
    readonly now: string,
  ) {}

  /** Adds a record the caller decided (an export's chain entry). */
  note(r: JournalRecord): void {
    this.emit(r);
  }

  private emit(r: JournalRecord, hb?: Heartbeat): void {
    apply(this.state, r, hb);
    this.records.push(r);
  }

  private reject(tally: Tally | undefined, r: Omit<RejectionRecord, 'kind' | 'at' | 'source'>): void {
    this.emit({ kind: 'rejection', at: this.now, source: this.source, ...r });
    tally?.rejected.push({
      code: r.code,
      message: r.message,
      ...(r.mirror !== undefined && { mirror: r.mirror }),
      ...(r.mirrorSeq !== undefined && { seq: r.mirrorSeq }),
      ...(r.agentId !== undefined && { agentId: r.agentId }),
      ...(r.counter !== undefined && { counter: r.counter }),
    });
  }

  /** Input A: a batch as it travelled. `notFrom`: the exporting mirror, which cannot relay its own batch. */
  async carried(v: unknown, notFrom?: string): Promise<BatchOutcome> {
    const tally = newTally();
    let origin: string | undefined;
    let authenticated = false;
    let checked: { mirror: MirrorInfo; from: number; to: number; records: OwnRecord[] };
    try {
      assertCarriedBatch(v);
      const claimed = claimBatch(v.envelope);
      origin = claimed.mirror;
      const mirror = this.registry.get(origin);
      if (!mirror) throw new ServerError('UNKNOWN_MIRROR', `batch: mirror ${origin} is not registered`);
      if (v.via[0] !== origin)
        throw new TelemetryError('TELEMETRY_INVALID', 'batch: via[0] must be its origin mirror');
      if (origin === notFrom)
        throw new TelemetryError('LOOP', 'batch: an export cannot relay its own mirror');
      const p = verifyClaimedBatch(v.envelope, claimed, mirror.publicKey);
      authenticated = true;
      if (p.site !== mirror.site)
        throw new ServerError(
          'WRONG_SITE',
          `batch: site ${p.site} but mirror ${origin} is registered for ${mirror.site}`,
        );
      checked = { mirror, from: p.from, to: p.to, records: p.records };
    } catch (e) {
      const { code, message } = rejectionOf(e);
      if (authenticated)
        this.reject(tally, { code, message, ...(origin !== undefined && { mirror: origin }) });
      else {
        this.unauthenticated.set(code, (this.unauthenticated.get(code) ?? 0) + 1);
        tally.rejected.push({ code, message, ...(origin !== undefined && { mirror: origin }) });
      }
      return { ok: false, code, message, tally, ...(origin !== undefined && { mirror: origin }) };
    }
    const { mirror, from, to, records } = checked;
    const duplicate = hasRange(mirrorOf(this.state, mirror.id)?.coverage ?? [], from, to);
    if (duplicate) tally.duplicates += records.length;
    else {
      for (const r of records) await this.own(mirror, r, tally);
      this.cover(mirror, from, to);
    }
    return { ok: true, mirror: mirror.id, from, to, duplicate, tally };
  }

  /** Marks [from,to] of a mirror's sequence as received (after its records were walked). */
  cover(mirror: MirrorInfo, from: number, to: number): void {
    if (from <= to) this.emit({ kind: 'coverage', mirror: mirror.id, from, to });
  }

  /** Step 1 for one own record of `mirror` (already validated and authenticated as the mirror's). */
  async own(mirror: MirrorInfo, r: OwnRecord, tally: Tally): Promise<void> {
    if (++this.walked % YIELD_EVERY === 0) await yieldLoop();
    if (isCovered(this.state, mirror.id, r.seq)) {
      tally.duplicates++;
      return;
    }
    if (r.kind === 'enrolment') this.enrolment(mirror, r, tally);
    else if (r.kind === 'revocation') this.revocation(mirror, r, tally);
    else if (r.kind === 'rollout') {
      // What the site's mirror decided, kept as it reported it (shown per site).
      this.emit({
        kind: 'rollout',
        at: this.now,
        mirror: mirror.id,
        mirrorSeq: r.seq,
        site: mirror.site,
        rollout: r.rollout,
      });
      tally.rolloutEvents++;
    } else this.heartbeat(mirror, r, tally);
  }

  private enrolment(mirror: MirrorInfo, r: Extract<OwnRecord, { kind: 'enrolment' }>, tally: Tally): void {
    const where = { mirror: mirror.id, mirrorSeq: r.seq };
    try {
      assertEnrolmentInfo(r.agent);
      if (agentIdOf(Buffer.from(r.agent.publicKey, 'hex')) !== r.agent.agentId)
        throw new Error('agentId is not derived from publicKey');
      if (r.agent.request !== undefined) {
        let req;
        try {
          req = verifyEnrollRequest(r.agent.request);
        } catch (e) {
          throw new Error(`enrolment request does not verify (${(e as Error).message})`, { cause: e });
        }
        if (req.publicKey !== r.agent.publicKey) throw new Error('enrolment request is for another key');
      }
    } catch (e) {
      this.reject(tally, {
        ...where,
        code: 'BAD_ENROLMENT',
        message: (e as Error).message,
        agentId: r.agent.agentId,
      });
      return;
    }
    this.emit({ kind: 'enrolment', at: this.now, ...where, site: mirror.site, agent: r.agent });
    tally.enrolments++;
    // Heartbeats that arrived before this enrolment can be checked now.
    for (const p of parkedOf(this.state, r.agent.agentId) ?? []) {
      const k = `${p.mirror}:${p.mirrorSeq}`;
      if (this.unparked.has(k)) continue;
      this.unparked.add(k);
      this.candidate(p, tally);
    }
  }

  /** A mirror revokes only agents of its own site; one the server has not met yet is noted all the same. */
  private revocation(mirror: MirrorInfo, r: Extract<OwnRecord, { kind: 'revocation' }>, tally: Tally): void {
    const agent = agentOf(this.state, r.revocation.agentId);
    if (agent && agent.site !== mirror.site) {
      this.reject(tally, {
        mirror: mirror.id,
        mirrorSeq: r.seq,
        agentId: r.revocation.agentId,
        code: 'WRONG_SITE',
        message: `mirror of site ${mirror.site} cannot revoke agent ${agent.id} of site ${agent.site}`,
      });
      return;
    }
    this.emit({
      kind: 'revocation',
      at: this.now,
      mirror: mirror.id,
      mirrorSeq: r.seq,
      revocation: r.revocation,
    });
  }

  private heartbeat(mirror: MirrorInfo, r: Extract<OwnRecord, { kind: 'heartbeat' }>, tally: Tally): void {
    const slot: HeartbeatSlot = {
      at: this.now,
      mirror: mirror.id,
      mirrorSeq: r.seq,
      agentId: r.agentId,
      counter: r.counter,
      envelope: r.envelope,
    };
    if (!agentOf(this.state, r.agentId)) {
      // Its enrolment may still be on its way over another path: keep it until then.
      this.emit({ kind: 'parked', ...slot } satisfies ParkedRecord);
      tally.parked++;
      return;
    }
    this.candidate(slot, tally);
  }

  private candidate(slot: HeartbeatSlot, tally: Tally): void {
    const agent = agentOf(this.state, slot.agentId)!;
    const site = this.registry.get(slot.mirror)?.site ?? '';
    if (agent.site !== site) {
      this.reject(tally, {
        mirror: slot.mirror,
        mirrorSeq: slot.mirrorSeq,
        agentId: slot.agentId,
        counter: slot.counter,
        code: 'WRONG_SITE',
        message: `agent ${slot.agentId} belongs to site ${agent.site}, not ${site}`,
      });
      return;
    }
    this.candidates.push({ tally, site, slot, key: Buffer.from(agent.publicKey, 'hex') });
  }

  /** Steps 2 and 3: verifies every candidate and stores or rejects it, in arrival order. */
  async finish(): Promise<void> {
    for (let i = 0; i < this.candidates.length; i += VERIFY_CHUNK) {
      const chunk = this.candidates.slice(i, i + VERIFY_CHUNK);
      const checked = await Promise.all(
        chunk.map((c) =>
          verifyHeartbeatAsync(c.slot.envelope, c.key).then(
            (hb) => ({ hb }),
            (e: unknown) => ({ error: e }),
          ),
        ),
      );
      chunk.forEach((c, j) => this.decide(c, checked[j]!));
    }
    this.candidates.length = 0;
  }

  private decide(c: Candidate, v: { hb: Heartbeat } | { error: unknown }): void {
    const { slot, tally } = c;
    const where = {
      mirror: slot.mirror,
      mirrorSeq: slot.mirrorSeq,
      agentId: slot.agentId,
      counter: slot.counter,
    };
    if ('error' in v) {
      const bad = isCodedError(v.error) && v.error.code === 'SIGNATURE_THRESHOLD';
      const message = v.error instanceof Error ? v.error.message : String(v.error);
      this.reject(tally, { ...where, code: bad ? 'BAD_SIGNATURE' : 'BAD_HEARTBEAT', message });
      return;
    }
    if (v.hb.agentId !== slot.agentId || v.hb.counter !== slot.counter) {
      this.reject(tally, {
        ...where,
        code: 'BAD_HEARTBEAT',
        message: `signed heartbeat is ${v.hb.agentId} #${v.hb.counter}, record says ${slot.agentId} #${slot.counter}`,
      });
      return;
    }
    if (hasCounter(this.state, slot.agentId, slot.counter)) {
      this.reject(tally, {
        ...where,
        code: 'REPLAY',
        message: `heartbeat #${slot.counter} of ${slot.agentId} was already stored`,
      });
      return;
    }
    this.emit({ kind: 'heartbeat', at: slot.at, ...where, envelope: slot.envelope }, v.hb);
    tally.stored++;
  }
}

export { newTally };
