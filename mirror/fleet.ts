/**
 * What the mirror knows about every agent enrolled here, kept in memory and
 * brought up to date by each heartbeat the mirror verifies (never by reading
 * files per request): version, last contact, last update outcome, drift,
 * time disconnected. Asked with the active manifest and the clock, it says who
 * is behind (running below the version the manifest wants for it, by the same
 * rule the agent uses: core/agent-version.ts), who is silent, which alerts
 * stand, and how the current rollout's waves are doing.
 *
 * Alerts are not stored: each is a condition over the fleet as it is now, so
 * it resolves itself the moment the condition clears (a later update commits,
 * the silent agent speaks again, the rollout resumes).
 *
 * Persistence is mirror/fleet-store.ts; the pages and routes only read here.
 */
import { isBehind } from '../core/agent-version.js';
import type { Heartbeat, JsonObject } from '../core/heartbeat.js';
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

export type FleetFilter = 'all' | 'behind' | 'failing' | 'silent';
export const FLEET_FILTERS: readonly FleetFilter[] = ['all', 'behind', 'failing', 'silent'];

export type AlertKind = 'update_failed' | 'rollout_halted' | 'agent_silent';
export const ALERT_KINDS: readonly AlertKind[] = ['update_failed', 'rollout_halted', 'agent_silent'];

export interface FleetAlert {
  kind: AlertKind;
  /** How many agents it concerns (0 for a rollout-wide alert). */
  count: number;
  /** The first agents it concerns, each with its own reason. */
  agents: { id: string; hostname: string; reason: string }[];
  message: string;
}

/** One agent as pages and the API show it. */
export interface FleetAgentView extends Enrolled, Partial<Observed> {
  revoked: boolean;
  behind: boolean;
  wanted: string | null;
  failing: boolean;
  silent: boolean;
}

export interface FleetSummary {
  agents: number;
  revoked: number;
  behind: number;
  failing: number;
  silent: number;
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

/**
 * Folds one verified heartbeat into what was known of its agent. A heartbeat that only reports
 * update outcomes carries no drift of its own: the drift last seen stands.
 */
export function observe(prev: Observed | undefined, h: Heartbeat, receivedAt: string): Observed {
  const updates = h.results.map(updateOf);
  const lastUpdate = updates.reduce<UpdateOutcome | null>((a, u) => u ?? a, prev?.lastUpdate ?? null);
  const onlyUpdates = h.results.length > 0 && updates.every((u) => u !== null);
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
  };
}

export interface FleetContext {
  manifest: Manifest | null;
  now: number;
  /** An agent is silent once the mirror has not heard from it for this long. */
  silentAfterMs: number;
}

/** The fleet in memory: enrolment records and what heartbeats said, by agent id. */
export class Fleet {
  readonly enrolled = new Map<string, Enrolled>();
  readonly observed = new Map<string, Observed>();
  /** Bumped on every change, so derived views can be cached. */
  generation = 0;
  private sorted: string[] | null = null;

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

  view(id: string, c: FleetContext): FleetAgentView | undefined {
    const e = this.enrolled.get(id);
    if (!e) return undefined;
    const o = this.observed.get(id);
    const revoked = e.revokedAt !== undefined;
    const wanted =
      o && c.manifest && !revoked
        ? isBehind(c.manifest, { agentId: id, groups: e.groups, platform: e.platform }, o.version)
        : null;
    const contact = Date.parse(o?.lastContact ?? e.enrolledAt);
    return {
      ...e,
      ...o,
      revoked,
      behind: wanted !== null,
      wanted: wanted?.wanted ?? null,
      failing: !revoked && o?.lastUpdate != null && FAILED_OUTCOMES.has(o.lastUpdate.outcome),
      silent: !revoked && c.now - contact > c.silentAfterMs,
    };
  }

  /** Every agent's view, in id order (one pass; the caller caches it per generation and clock). */
  views(c: FleetContext): FleetAgentView[] {
    const out: FleetAgentView[] = [];
    for (const id of this.ids()) {
      const v = this.view(id, c);
      if (v) out.push(v);
    }
    return out;
  }
}

export function summarise(views: readonly FleetAgentView[]): FleetSummary {
  const s: FleetSummary = { agents: 0, revoked: 0, behind: 0, failing: 0, silent: 0, byVersion: {} };
  for (const v of views) {
    if (v.revoked) {
      s.revoked++;
      continue;
    }
    s.agents++;
    if (v.behind) s.behind++;
    if (v.failing) s.failing++;
    if (v.silent) s.silent++;
    const version = v.version ?? 'unknown';
    s.byVersion[version] = (s.byVersion[version] ?? 0) + 1;
  }
  return s;
}

export function matches(v: FleetAgentView, f: FleetFilter): boolean {
  if (f === 'all') return true;
  return v[f];
}

/** The alerts that stand now: each names its agents (the first few) and why. */
export function alertsOf(
  views: readonly FleetAgentView[],
  rollout: RolloutSummary | null,
  silentAfterMs: number,
): FleetAlert[] {
  const out: FleetAlert[] = [];
  const failing = views.filter((v) => v.failing);
  if (failing.length)
    out.push({
      kind: 'update_failed',
      count: failing.length,
      agents: failing.slice(0, ALERT_AGENTS).map((v) => ({
        id: v.id,
        hostname: v.hostname,
        reason: `${v.lastUpdate!.outcome} ${v.lastUpdate!.version}: ${v.lastUpdate!.reason}`,
      })),
      message: `${failing.length} agent(s) failed to update`,
    });
  if (rollout?.state === 'halted')
    out.push({
      kind: 'rollout_halted',
      count: 0,
      agents: [],
      message: `rollout ${rollout.rolloutId} of ${rollout.version} halted at wave ${rollout.wave + 1}: ${
        rollout.haltReason ?? 'no reason given'
      }`,
    });
  const silent = views.filter((v) => v.silent);
  if (silent.length)
    out.push({
      kind: 'agent_silent',
      count: silent.length,
      agents: silent.slice(0, ALERT_AGENTS).map((v) => ({
        id: v.id,
        hostname: v.hostname,
        reason: v.lastContact
          ? `last heard from at ${v.lastContact}`
          : `never heard from since enrolment at ${v.enrolledAt}`,
      })),
      message: `${silent.length} agent(s) silent for more than ${Math.round(silentAfterMs / 1000)} s`,
    });
  return out;
}
