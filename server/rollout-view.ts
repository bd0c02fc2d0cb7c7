/**
 * One site's rollouts as the server sees them (pure): the plan each bundle sent the site (strategy,
 * waves with percent and soak, maxFailureRate, window), what the site's mirrors reported deciding
 * (rolloutsOf), and the fleet the server hears from, placed in waves exactly as the site's mirror
 * places them (core/rollout/wave.ts: the wave of an agent follows from the rollout id and its id).
 * Every wave of a known plan is listed, also the ones no event mentions yet.
 */
import type { Rollout } from '../core/manifest.js';
import { bucketOf, waveForBucket } from '../core/rollout/wave.js';
import type { RolloutCounts } from '../core/telemetry.js';
import type { BundleRecord, CatalogData } from './catalog.js';
import { isSilent, rolloutsOf, type RolloutView } from './fleet-query.js';
import type { AgentState, ServerState } from './fleet-state.js';

export interface SentPlan {
  bundle: string;
  release: string;
  sequence: number;
  builtAt: string;
  builtBy: string;
  plan: Rollout;
}

export interface WaveRow {
  wave: number;
  /** Cumulative percent and soak from the plan; null when no plan is known for this rollout. */
  percent: number | null;
  soakMinutes: number | null;
  /** What the site's mirror last reported for this wave (null: no event about it yet). */
  reported: RolloutCounts | null;
  opened: boolean;
  /** The agents the server knows at the site that fall in this wave, by what they last reported. */
  fleet: RolloutCounts;
}

export interface SiteRollout {
  rolloutId: string | null;
  version: string;
  /** halted, completed, …; `sent` while the site has reported nothing about it. */
  status: string;
  sent: SentPlan | null;
  waves: WaveRow[];
  halts: RolloutView['halts'];
  events: RolloutView['events'];
}

const zero = (): RolloutCounts => ({
  agents: 0,
  pending: 0,
  updating: 0,
  committed: 0,
  failed: 0,
  rolledBack: 0,
  silent: 0,
});

const FAILED = new Set(['failed', 'interrupted', 'refused']);

/** Where an agent stands on `version`, from its latest signed heartbeat. */
export function fleetStatus(a: AgentState, version: string, now: number): keyof RolloutCounts {
  const l = a.latest;
  if (l?.version === version) return 'committed';
  for (const r of l?.results ?? []) {
    const u = (r as { update?: unknown }).update;
    if (typeof u !== 'object' || u === null) continue;
    const { outcome, version: v } = u as Record<string, unknown>;
    if (v !== version || typeof outcome !== 'string') continue;
    if (FAILED.has(outcome)) return 'failed';
    if (outcome === 'rolled-back') return 'rolledBack';
    if (outcome === 'healthy') return 'updating';
  }
  return isSilent(a, now) ? 'silent' : 'pending';
}

/** Buckets computed so far, by rollout id then agent id: a page that updates live asks again and again. */
const buckets = new Map<string, Map<string, number>>();
let memoSize = 0;

function bucket(rolloutId: string, agentId: string): number {
  let m = buckets.get(rolloutId);
  if (!m) buckets.set(rolloutId, (m = new Map<string, number>()));
  let b = m.get(agentId);
  if (b === undefined) {
    if (memoSize > 500_000) {
      buckets.clear();
      memoSize = 0;
      buckets.set(rolloutId, m);
    }
    b = bucketOf(rolloutId, agentId);
    m.set(agentId, b);
    memoSize++;
  }
  return b;
}

/** Per-wave counts of the site's agents for a rollout (revoked agents left out). */
export function fleetWaves(
  agents: readonly AgentState[],
  rolloutId: string,
  plan: Rollout,
  now: number,
): RolloutCounts[] {
  const out = plan.waves.map(zero);
  for (const a of agents) {
    if (a.revoked) continue;
    const w = out[waveForBucket(bucket(rolloutId, a.id), plan.waves)]!;
    w.agents++;
    w[fleetStatus(a, plan.agent, now)]++;
  }
  return out;
}

function sentOf(b: BundleRecord): SentPlan | null {
  if (!b.plan) return null;
  return {
    bundle: b.id,
    release: b.release,
    sequence: b.sequence,
    builtAt: b.builtAt,
    builtBy: b.builtBy,
    plan: b.plan,
  };
}

/**
 * The site's rollouts, newest first: each one its mirrors reported, joined with the bundle that sent
 * its plan (by rollout id, or by manifest sequence for bundles recorded before ids were kept), and the
 * newest plan sent that the site has not reported on yet.
 */
export function siteRollouts(s: ServerState, catalog: CatalogData, site: string, now: number): SiteRollout[] {
  const bundles = catalog.bundles.filter((b) => b.site === site && b.plan);
  const agents = Object.values(s.agents).filter((a) => a.site === site);
  const reported = rolloutsOf(s, site);
  const used = new Set<BundleRecord>();
  const out: SiteRollout[] = [];
  const rowsOf = (id: string | null, plan: Rollout | null, r: RolloutView | null): WaveRow[] => {
    const fleet = id && plan ? fleetWaves(agents, id, plan, now) : [];
    const n = Math.max(plan?.waves.length ?? 0, r?.waves.length ?? 0);
    return Array.from({ length: n }, (_, i) => {
      const w = plan?.waves[i];
      const rw = r?.waves[i];
      return {
        wave: i,
        percent: w?.percent ?? null,
        soakMinutes: w ? (w.soakMinutes ?? 0) : null,
        reported: rw?.counts ?? null,
        opened: rw?.opened ?? false,
        fleet: fleet[i] ?? zero(),
      };
    });
  };
  for (const r of reported) {
    const b =
      [...bundles].reverse().find((x) => x.rolloutId === r.rolloutId) ??
      [...bundles].reverse().find((x) => !x.rolloutId && x.sequence === r.manifestSequence);
    if (b) used.add(b);
    const sent = b ? sentOf(b) : null;
    out.push({
      rolloutId: r.rolloutId,
      version: r.version,
      status: r.status,
      sent,
      waves: rowsOf(r.rolloutId, sent?.plan ?? null, r),
      halts: r.halts,
      events: r.events,
    });
  }
  const newest = bundles.at(-1);
  if (
    newest &&
    !used.has(newest) &&
    !(newest.rolloutId && reported.some((r) => r.rolloutId === newest.rolloutId))
  ) {
    const sent = sentOf(newest)!;
    out.unshift({
      rolloutId: newest.rolloutId ?? null,
      version: sent.plan.agent,
      status: 'sent',
      sent,
      waves: rowsOf(newest.rolloutId ?? null, sent.plan, null),
      halts: [],
      events: [],
    });
  }
  return out;
}
