/**
 * The server's derived state and the journal records it is derived from
 * (pure: no I/O). The journal is the truth; `apply` folds one record into the
 * state, the same way at ingest time and when replaying after a restart.
 */
import type { Envelope } from '../core/dsse.js';
import { decodeBase64Strict } from '../core/encoding.js';
import type { DoctorSummary, Heartbeat, JsonObject } from '../core/heartbeat.js';
import type { EnrolmentInfo, RevocationInfo, RolloutEventInfo } from '../core/telemetry.js';
import type { RejectionCode } from './errors.js';
import { add, addRange, has, holes, size, type Interval } from './intervals.js';

/** One agent's heartbeat as a mirror delivered it: stored, or parked until its enrolment arrives. */
export interface HeartbeatSlot {
  at: string;
  mirror: string;
  mirrorSeq: number;
  agentId: string;
  counter: number;
  envelope: Envelope;
}

export type JournalRecord =
  | ({ kind: 'heartbeat' } & HeartbeatSlot)
  | ({ kind: 'parked' } & HeartbeatSlot)
  | { kind: 'enrolment'; at: string; mirror: string; mirrorSeq: number; site: string; agent: EnrolmentInfo }
  | { kind: 'revocation'; at: string; mirror: string; mirrorSeq: number; revocation: RevocationInfo }
  | {
      kind: 'rollout';
      at: string;
      mirror: string;
      mirrorSeq: number;
      site: string;
      rollout: RolloutEventInfo;
    }
  | { kind: 'coverage'; mirror: string; from: number; to: number }
  | { kind: 'export'; at: string; mirror: string; number: number; hash: string; from: number; to: number }
  | {
      kind: 'rejection';
      at: string;
      source: string;
      code: RejectionCode;
      message: string;
      mirror?: string;
      mirrorSeq?: number;
      agentId?: string;
      counter?: number;
    };

export type ParkedRecord = Extract<JournalRecord, { kind: 'parked' }>;
export type RejectionRecord = Extract<JournalRecord, { kind: 'rejection' }>;

export interface AgentLatest {
  counter: number;
  sentAt: string;
  version: string;
  manifestSequence: number | null;
  disconnectedSec: number;
  results: JsonObject[];
  drift: JsonObject[];
  resources: { rssBytes: number; load1: number };
  receivedAt: string;
  via: string;
  /** The agent's latest self-diagnosis, when its heartbeat carried one. */
  doctor?: DoctorSummary;
}

export interface AgentState {
  id: string;
  site: string;
  publicKey: string;
  hostname: string;
  platform: string;
  groups: string[];
  enrolledBy: string;
  enrolledAt: string;
  counters: Interval[];
  heartbeats: number;
  latest: AgentLatest | null;
  /** Set when a mirror of its site revoked it (`ferry mirror agent revoke`). */
  revoked?: { at: string; by: string; reason: string };
}

export interface MirrorProgress {
  coverage: Interval[];
  /** Last export imported (0: none) and its header hash; every imported number with its hash. */
  lastExport: number;
  lastExportHash: string | null;
  lastExportAt: string | null;
  exports: Record<string, string>;
}

export interface ServerState {
  version: 1;
  /** Highest journal seq folded into this state. */
  journalSeq: number;
  agents: Record<string, AgentState>;
  mirrors: Record<string, MirrorProgress>;
  /** Heartbeats of agents whose enrolment has not arrived yet, by agent id. */
  parked: Record<string, ParkedRecord[]>;
  /** The most recent rejections (all of them stay in the journal). */
  rejections: RejectionRecord[];
  rejectionCounts: Record<string, number>;
  /**
   * Revocations of agents whose enrolment has not arrived yet, by agent id (absent in checkpoints
   * written before revocations existed): applied when it does.
   */
  pendingRevocations?: Record<string, { at: string; by: string; reason: string }>;
  totals: { heartbeats: number; enrolments: number; rejections: number; parked: number };
  /**
   * What each site's mirrors decided about staged rollouts, newest last, at most
   * RECENT_ROLLOUT_EVENTS per site (all of them stay in the journal). Absent in older checkpoints.
   */
  rollouts?: Record<string, RolloutRecord[]>;
}

export type RolloutRecord = Extract<JournalRecord, { kind: 'rollout' }>;
export const RECENT_ROLLOUT_EVENTS = 500;

export const RECENT_REJECTIONS = 1000;

export function emptyState(): ServerState {
  return {
    version: 1,
    journalSeq: 0,
    agents: {},
    mirrors: {},
    parked: {},
    rejections: [],
    rejectionCounts: {},
    totals: { heartbeats: 0, enrolments: 0, rejections: 0, parked: 0 },
  };
}

export function mirrorProgress(s: ServerState, mirror: string): MirrorProgress {
  const known = mirrorOf(s, mirror);
  if (known) return known;
  return (s.mirrors[mirror] = {
    coverage: [],
    lastExport: 0,
    lastExportHash: null,
    lastExportAt: null,
    exports: {},
  });
}

/**
 * Look-ups by ids that may come from outside (a URL, a record): own properties only, so a name like
 * `__proto__` or `constructor` never reaches an object's prototype. The state is plain JSON (it is
 * checkpointed with lowdb), so its maps are objects; every read by id goes through these.
 */
export function own<T>(o: Record<string, T>, key: string): T | undefined {
  return Object.hasOwn(o, key) ? o[key] : undefined;
}
export const agentOf = (s: ServerState, id: string): AgentState | undefined => own(s.agents, id);
export const mirrorOf = (s: ServerState, id: string): MirrorProgress | undefined => own(s.mirrors, id);
export const parkedOf = (s: ServerState, id: string): ParkedRecord[] | undefined => own(s.parked, id);

export const isCovered = (s: ServerState, mirror: string, seq: number): boolean =>
  has(mirrorOf(s, mirror)?.coverage ?? [], seq);

export const hasCounter = (s: ServerState, agentId: string, counter: number): boolean =>
  has(agentOf(s, agentId)?.counters ?? [], counter);

/** The payload of a heartbeat that was verified before it was journaled. */
export function heartbeatPayload(env: Envelope): Heartbeat {
  return JSON.parse(decodeBase64Strict(env.payload, 'heartbeat payload').toString('utf8')) as Heartbeat;
}

function unpark(s: ServerState, agentId: string | undefined, mirror?: string, mirrorSeq?: number): void {
  if (agentId === undefined || mirror === undefined) return;
  const list = parkedOf(s, agentId);
  if (!list) return;
  const i = list.findIndex((p) => p.mirror === mirror && p.mirrorSeq === mirrorSeq);
  if (i < 0) return;
  list.splice(i, 1);
  s.totals.parked--;
  if (list.length === 0) delete s.parked[agentId];
}

/** Folds one journal record into the state. `hb`: the payload when the caller already has it. */
export function apply(s: ServerState, r: JournalRecord, hb?: Heartbeat): void {
  switch (r.kind) {
    case 'coverage':
      addRange(mirrorProgress(s, r.mirror).coverage, r.from, r.to);
      return;
    case 'enrolment': {
      const a = r.agent;
      const prev = agentOf(s, a.agentId);
      s.agents[a.agentId] = {
        id: a.agentId,
        site: r.site,
        publicKey: a.publicKey,
        hostname: a.hostname,
        platform: a.platform,
        groups: [...a.groups],
        enrolledBy: r.mirror,
        enrolledAt: a.enrolledAt,
        counters: prev?.counters ?? [],
        heartbeats: prev?.heartbeats ?? 0,
        latest: prev?.latest ?? null,
      };
      // enrolling again does not lift a revocation, nor does arriving after it
      const revoked = prev?.revoked ?? own(s.pendingRevocations ?? {}, a.agentId);
      if (revoked) s.agents[a.agentId]!.revoked = revoked;
      if (s.pendingRevocations && Object.hasOwn(s.pendingRevocations, a.agentId))
        delete s.pendingRevocations[a.agentId];
      s.totals.enrolments++;
      return;
    }
    case 'revocation': {
      const agent = agentOf(s, r.revocation.agentId);
      const revoked = { at: r.revocation.revokedAt, by: r.mirror, reason: r.revocation.reason };
      if (!agent) (s.pendingRevocations ??= {})[r.revocation.agentId] = revoked;
      else if (!agent.revoked) agent.revoked = revoked;
      return;
    }
    case 'rollout': {
      const rollouts = (s.rollouts ??= {});
      const list = Object.hasOwn(rollouts, r.site) ? rollouts[r.site]! : (rollouts[r.site] = []);
      list.push(r);
      if (list.length > RECENT_ROLLOUT_EVENTS) list.splice(0, list.length - RECENT_ROLLOUT_EVENTS);
      return;
    }
    case 'parked':
      if (!parkedOf(s, r.agentId)) s.parked[r.agentId] = [];
      parkedOf(s, r.agentId)!.push(r);
      s.totals.parked++;
      return;
    case 'heartbeat': {
      unpark(s, r.agentId, r.mirror, r.mirrorSeq);
      const agent = agentOf(s, r.agentId);
      if (!agent) throw new Error(`journal: heartbeat of unknown agent ${r.agentId}`);
      add(agent.counters, r.counter);
      agent.heartbeats++;
      s.totals.heartbeats++;
      if (!agent.latest || r.counter >= agent.latest.counter) {
        const p = hb ?? heartbeatPayload(r.envelope);
        // the summary comes in the heartbeat after each run of the agent's checks; it stands until the next
        const doctor = p.doctor ?? agent.latest?.doctor;
        agent.latest = {
          counter: r.counter,
          sentAt: p.sentAt,
          version: p.version,
          manifestSequence: p.manifestSequence,
          disconnectedSec: p.disconnectedSec,
          results: p.results,
          drift: p.drift,
          resources: p.resources,
          receivedAt: r.at,
          via: r.mirror,
          ...(doctor && { doctor }),
        };
      }
      return;
    }
    case 'rejection':
      unpark(s, r.agentId, r.mirror, r.mirrorSeq);
      s.rejections.push(r);
      if (s.rejections.length > RECENT_REJECTIONS)
        s.rejections.splice(0, s.rejections.length - RECENT_REJECTIONS);
      s.rejectionCounts[r.code] = (own(s.rejectionCounts, r.code) ?? 0) + 1;
      s.totals.rejections++;
      return;
    case 'export': {
      const m = mirrorProgress(s, r.mirror);
      m.exports[String(r.number)] = r.hash;
      if (r.number > m.lastExport) {
        m.lastExport = r.number;
        m.lastExportHash = r.hash;
      }
      m.lastExportAt = r.at;
      return;
    }
  }
}

/** What an operator sees of one agent. */
export interface AgentView {
  id: string;
  site: string;
  hostname: string;
  platform: string;
  groups: string[];
  enrolledBy: string;
  enrolledAt: string;
  version: string | null;
  manifestSequence: number | null;
  lastSeen: string | null;
  lastCounter: number | null;
  heartbeats: number;
  counterGaps: { missing: number; first: string[] };
  latest: AgentLatest | null;
  revoked: { at: string; by: string; reason: string } | null;
}

const fmt = ([a, b]: Interval) => (a === b ? `${a}` : `${a}-${b}`);

export function counterGaps(counters: Interval[], first = 5): { missing: number; first: string[] } {
  const h = holes(counters);
  return { missing: size(h), first: h.slice(0, first).map(fmt) };
}

export function agentView(a: AgentState): AgentView {
  return {
    id: a.id,
    site: a.site,
    hostname: a.hostname,
    platform: a.platform,
    groups: a.groups,
    enrolledBy: a.enrolledBy,
    enrolledAt: a.enrolledAt,
    version: a.latest?.version ?? null,
    manifestSequence: a.latest?.manifestSequence ?? null,
    lastSeen: a.latest?.sentAt ?? null,
    lastCounter: a.latest?.counter ?? null,
    heartbeats: a.heartbeats,
    counterGaps: counterGaps(a.counters),
    latest: a.latest,
    revoked: a.revoked ?? null,
  };
}

/** The fleet, sorted by site then hostname then id. */
export function fleetView(s: ServerState): AgentView[] {
  return Object.values(s.agents)
    .map(agentView)
    .sort(
      (x, y) =>
        x.site.localeCompare(y.site) || x.hostname.localeCompare(y.hostname) || x.id.localeCompare(y.id),
    );
}

/** Holes in what arrived of a mirror's sequence, from 1 to the highest received. */
export function coverageGaps(s: ServerState, mirror: string): Interval[] {
  const cov = mirrorOf(s, mirror)?.coverage ?? [];
  return cov.length ? holes(cov, 1) : [];
}
