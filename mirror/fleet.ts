/**
 * What the mirror knows about every agent enrolled here, kept in memory and
 * brought up to date by each heartbeat the mirror verifies (never by reading
 * files per request): version, last contact, last update outcome, drift,
 * time disconnected, the latest doctor report's failing and warning checks.
 * Asked with the active manifest and the clock, it says who is behind
 * (running below the version the manifest wants for it, by the same rule the
 * agent uses: core/agent-version.ts), who is silent, which alerts stand, and
 * how the current rollout's waves are doing.
 *
 * Alerts are not stored: each is a condition over the fleet as it is now, so
 * it resolves itself the moment the condition clears (a later update commits,
 * the silent agent speaks again, the rollout resumes, a later doctor report
 * is clean).
 *
 * Persistence is mirror/fleet-store.ts; the pages and routes only read here.
 */
import { isBehind } from '../core/agent-version.js';
import type { DoctorSummary, Heartbeat, JsonObject } from '../core/heartbeat.js';
import type { Manifest } from '../core/manifest.js';
import type { RolloutCounts } from '../core/telemetry.js';

/** One update report as the agent sent it (agent/update/report.ts). */
export interface UpdateOutcome {
  outcome: string;
  version: string;
  reason: string;
  phase?: string;
  code?: string;
  at: string;
}

/**
 * The agent's latest self-diagnosis, reduced to what the fleet view shows: when it ran, how many
 * checks failed or warned, and their ids (as many as the summary carried; the counts are exact).
 * The evidence stays in `<data>/doctor/` for `ferry mirror doctor AGENT`.
 */
export interface DoctorSeen {
  at: string;
  failCount: number;
  warnCount: number;
  fail: string[];
  warn: string[];
}

/** What heartbeats told the mirror about one agent. */
export interface Observed {
  counter: number;
  version: string;
  /** When the mirror accepted its latest heartbeat (the mirror's clock, ISO). */
  lastContact: string;
  sentAt: string;
  manifestSequence: number | null;
  lastUpdate: UpdateOutcome | null;
  driftCount: number;
  /** The first few drift entries of the latest cycle (all of them are counted). */
  drift: JsonObject[];
  disconnectedSec: number;
  /** Absent until the agent's first doctor summary arrives. */
  doctor?: DoctorSeen;
}

/** Who the agent is, from its enrolment record (mirror/agents.ts). */
export interface Enrolled {
  id: string;
  hostname: string;
  platform: string;
  groups: string[];
  enrolledAt: string;
  revokedAt?: string;
}

/** The current rollout as the site's rollout gate sees it. */
export interface RolloutSummary {
  rolloutId: string;
  version: string;
  strategy: string;
  state: 'running' | 'halted' | 'aborted' | 'completed' | 'waiting_approval';
  /** Index of the current wave. */
  wave: number;
  waves: { percent: number; counts: RolloutCounts }[];
  haltReason?: string;
}

/** Where the fleet view learns about the current rollout (the site's rollout gate). */
export interface RolloutSource {
  rolloutSummary(): RolloutSummary | null;
}

/** `doctor`: agents whose latest doctor report has a failing check. */
export type FleetFilter = 'all' | 'behind' | 'failing' | 'silent' | 'doctor';
export const FLEET_FILTERS: readonly FleetFilter[] = ['all', 'behind', 'failing', 'silent', 'doctor'];

export type AlertKind = 'update_failed' | 'rollout_halted' | 'agent_silent' | 'doctor_failing';
export const ALERT_KINDS: readonly AlertKind[] = [
  'update_failed',
  'rollout_halted',
  'agent_silent',
  'doctor_failing',
];

export interface FleetAlert {
  kind: AlertKind;
  /** How many agents it concerns (0 for a rollout-wide alert). */
  count: number;
  /** The first agents it concerns, each with its own reason. */
  agents: { id: string; hostname: string; reason: string }[];
  message: string;
}

/** One agent as pages and the API show it. */
export interface FleetAgentView extends Enrolled, Partial<Observed>, AgentFlags {}

export interface FleetSummary {
  agents: number;
  revoked: number;
  behind: number;
  failing: number;
  silent: number;
  /** Agents whose latest doctor report has a failing check. */
  doctorFailing: number;
  /** Agents by the version they run ("unknown" before their first heartbeat). */
  byVersion: Record<string, number>;
}

/** Update outcomes that leave an agent short of what it was asked to run. */
export const FAILED_OUTCOMES: ReadonlySet<string> = new Set(['failed', 'rolled-back', 'refused']);
/** Agents named in one alert; the count says how many there are in all. */
const ALERT_AGENTS = 20;
/** Drift entries kept per agent. */
export const DRIFT_KEPT = 10;

function updateOf(r: JsonObject): UpdateOutcome | null {
  const u = r.update;
  if (typeof u !== 'object' || u === null || Array.isArray(u)) return null;
  const str = (k: string) => (typeof u[k] === 'string' ? u[k] : undefined);
  const outcome = str('outcome');
  const version = str('version');
  if (outcome === undefined || version === undefined) return null;
  const phase = str('phase');
  const code = str('code');
  return {
    outcome,
    version,
    reason: str('reason') ?? '',
    ...(phase !== undefined && { phase }),
    ...(code !== undefined && { code }),
    at: str('at') ?? '',
  };
}

/** The fleet view's part of a doctor summary. */
export function doctorSeen(d: DoctorSummary): DoctorSeen {
  const ids = (status: 'fail' | 'warn') => d.problems.filter((p) => p.status === status).map((p) => p.id);
  return { at: d.at, failCount: d.fail, warnCount: d.warn, fail: ids('fail'), warn: ids('warn') };
}

/** The newer of the report known and the one a heartbeat carries (most heartbeats carry none). */
function latestDoctor(prev: DoctorSeen | undefined, d: DoctorSummary | undefined): DoctorSeen | undefined {
  if (!d) return prev;
  if (prev && Date.parse(d.at) <= Date.parse(prev.at)) return prev;
  return doctorSeen(d);
}

/**
 * Folds one verified heartbeat into what was known of its agent. A heartbeat that only reports
 * update outcomes carries no drift of its own: the drift last seen stands.
 */
export function observe(prev: Observed | undefined, h: Heartbeat, receivedAt: string): Observed {
  const updates = h.results.map(updateOf);
  const lastUpdate = updates.reduce<UpdateOutcome | null>((a, u) => u ?? a, prev?.lastUpdate ?? null);
  const onlyUpdates = h.results.length > 0 && updates.every((u) => u !== null);
  const doctor = latestDoctor(prev?.doctor, h.doctor);
  return {
    counter: h.counter,
    version: h.version,
    lastContact: receivedAt,
    sentAt: h.sentAt,
    manifestSequence: h.manifestSequence,
    lastUpdate,
    driftCount: onlyUpdates && prev ? prev.driftCount : h.drift.length,
    drift: onlyUpdates && prev ? prev.drift : h.drift.slice(0, DRIFT_KEPT),
    disconnectedSec: h.disconnectedSec,
    ...(doctor && { doctor }),
  };
}

export interface FleetContext {
  manifest: Manifest | null;
  now: number;
  /** An agent is silent once the mirror has not heard from it for this long. */
  silentAfterMs: number;
}

/** What filters and counts need of one agent: computed for every agent, kept small. */
export interface AgentFlags {
  id: string;
  revoked: boolean;
  behind: boolean;
  wanted: string | null;
  failing: boolean;
  silent: boolean;
  /** Its latest doctor report has a failing check. */
  doctorFailing: boolean;
}

type BehindMemo = Map<string, { wanted: string } | null>;

/** What was last worked out for one agent: still good while its record and the manifest are the same. */
interface Derived {
  enrolled: Enrolled;
  observed: Observed | undefined;
  manifest: Manifest | null;
  /** lastContact (or enrolment) in ms. */
  contactMs: number;
  flags: AgentFlags;
}

/** The fleet in memory: enrolment records and what heartbeats said, by agent id. */
export class Fleet {
  readonly enrolled = new Map<string, Enrolled>();
  readonly observed = new Map<string, Observed>();
  /** Bumped on every change, so derived views can be cached. */
  generation = 0;
  private sorted: string[] | null = null;
  private readonly derived = new Map<string, Derived>();

  setEnrolled(e: Enrolled): void {
    if (!this.enrolled.has(e.id)) this.sorted = null;
    this.enrolled.set(e.id, e);
    this.generation++;
  }

  /** Takes a verified heartbeat; one not above the last counter seen from its agent changes nothing. */
  heartbeat(h: Heartbeat, receivedAt: string): boolean {
    const prev = this.observed.get(h.agentId);
    if (prev && h.counter <= prev.counter) return false;
    this.observed.set(h.agentId, observe(prev, h, receivedAt));
    this.generation++;
    return true;
  }

  /** Agent ids in a stable order (by id). */
  ids(): readonly string[] {
    return (this.sorted ??= [...this.enrolled.keys()].sort());
  }

  /**
   * One agent's flags. What depends only on its record and the manifest is kept per agent until
   * either changes; `memo` shares the manifest's answer among agents alike (same platform, groups
   * and version, no pin of their own), so a fleet of thousands costs a handful of decisions. Only
   * silence is worked out afresh, from the clock.
   */
  private flagsOf(e: Enrolled, c: FleetContext, memo: BehindMemo): AgentFlags {
    const o = this.observed.get(e.id);
    const d = this.derived.get(e.id);
    if (d && d.enrolled === e && d.observed === o && d.manifest === c.manifest) {
      d.flags.silent = !d.flags.revoked && c.now - d.contactMs > c.silentAfterMs;
      return d.flags;
    }
    const revoked = e.revokedAt !== undefined;
    let wanted: { wanted: string } | null = null;
    if (o && c.manifest && !revoked) {
      const own = c.manifest.pins?.[`agent:${e.id}`] !== undefined;
      const key = `${e.platform}\n${e.groups.join('\n')}\n\n${o.version}`;
      const known = own ? undefined : memo.get(key);
      if (known !== undefined) wanted = known;
      else {
        wanted = isBehind(c.manifest, { agentId: e.id, groups: e.groups, platform: e.platform }, o.version);
        if (!own) memo.set(key, wanted);
      }
    }
    const contactMs = Date.parse(o ? o.lastContact : e.enrolledAt);
    const flags: AgentFlags = {
      id: e.id,
      revoked,
      behind: wanted !== null,
      wanted: wanted === null ? null : wanted.wanted,
      failing: !revoked && o?.lastUpdate != null && FAILED_OUTCOMES.has(o.lastUpdate.outcome),
      silent: !revoked && c.now - contactMs > c.silentAfterMs,
      doctorFailing: !revoked && (o?.doctor?.failCount ?? 0) > 0,
    };
    this.derived.set(e.id, { enrolled: e, observed: o, manifest: c.manifest, contactMs, flags });
    return flags;
  }

  /**
   * Every agent's flags, in id order (the caller caches them per generation, manifest and clock).
   * The flag objects are reused from one call to the next: read them before calling again.
   */
  flags(c: FleetContext): AgentFlags[] {
    const memo: BehindMemo = new Map();
    const out: AgentFlags[] = [];
    for (const id of this.ids()) {
      const e = this.enrolled.get(id);
      if (e) out.push(this.flagsOf(e, c, memo));
    }
    return out;
  }

  /** The whole view of one agent, for the rows shown. */
  view(f: AgentFlags): FleetAgentView {
    const e = this.enrolled.get(f.id)!;
    const o = this.observed.get(f.id);
    return { ...e, ...o, ...f };
  }
}

export function summarise(fleet: Fleet, flags: readonly AgentFlags[]): FleetSummary {
  const s: FleetSummary = {
    agents: 0,
    revoked: 0,
    behind: 0,
    failing: 0,
    silent: 0,
    doctorFailing: 0,
    byVersion: {},
  };
  for (const f of flags) {
    if (f.revoked) {
      s.revoked++;
      continue;
    }
    s.agents++;
    if (f.behind) s.behind++;
    if (f.failing) s.failing++;
    if (f.silent) s.silent++;
    if (f.doctorFailing) s.doctorFailing++;
    const version = fleet.observed.get(f.id)?.version ?? 'unknown';
    s.byVersion[version] = (s.byVersion[version] ?? 0) + 1;
  }
  return s;
}

export function matches(f: AgentFlags, filter: FleetFilter): boolean {
  if (filter === 'all') return true;
  if (filter === 'doctor') return f.doctorFailing;
  return f[filter];
}

/** The rollout's alert, while it is halted. */
export function rolloutAlerts(rollout: RolloutSummary | null): FleetAlert[] {
  if (rollout?.state !== 'halted') return [];
  const why = rollout.haltReason ?? 'no reason given';
  return [
    {
      kind: 'rollout_halted',
      count: 0,
      agents: [],
      message: `rollout ${rollout.rolloutId} of ${rollout.version} halted at wave ${rollout.wave + 1}: ${why}`,
    },
  ];
}

/** The agents' alerts that stand now: each names its agents (the first few) and why. */
export function agentAlerts(fleet: Fleet, flags: readonly AgentFlags[], silentAfterMs: number): FleetAlert[] {
  const out: FleetAlert[] = [];
  const failing = flags.filter((f) => f.failing);
  const name = (f: AgentFlags) => fleet.enrolled.get(f.id)?.hostname ?? '';
  if (failing.length)
    out.push({
      kind: 'update_failed',
      count: failing.length,
      agents: failing.slice(0, ALERT_AGENTS).map((f) => {
        const u = fleet.observed.get(f.id)!.lastUpdate!;
        return { id: f.id, hostname: name(f), reason: `${u.outcome} ${u.version}: ${u.reason}` };
      }),
      message: `${failing.length} agent(s) failed to update`,
    });
  const silent = flags.filter((f) => f.silent);
  if (silent.length)
    out.push({
      kind: 'agent_silent',
      count: silent.length,
      agents: silent.slice(0, ALERT_AGENTS).map((f) => {
        const last = fleet.observed.get(f.id)?.lastContact;
        const enrolledAt = fleet.enrolled.get(f.id)?.enrolledAt ?? '';
        const reason = last
          ? `last heard from at ${last}`
          : `never heard from since enrolment at ${enrolledAt}`;
        return { id: f.id, hostname: name(f), reason };
      }),
      message: `${silent.length} agent(s) silent for more than ${Math.round(silentAfterMs / 1000)} s`,
    });
  const sick = flags.filter((f) => f.doctorFailing);
  if (sick.length)
    out.push({
      kind: 'doctor_failing',
      count: sick.length,
      agents: sick.slice(0, ALERT_AGENTS).map((f) => {
        const d = fleet.observed.get(f.id)!.doctor!;
        const more = d.failCount - d.fail.length;
        const which = d.fail.length
          ? `${d.fail.join(', ')}${more > 0 ? ` and ${more} more` : ''}`
          : `${d.failCount} check(s)`;
        return { id: f.id, hostname: name(f), reason: `failing: ${which} (checked ${d.at})` };
      }),
      message: `${sick.length} agent(s) report failing doctor checks`,
    });
  return out;
}
