/**
 * Questions the pages and the API ask of the fleet (pure: the state the store already holds and the
 * catalog). Filters and pagination run here, one pass over the agents, so a page holds only its rows.
 */
import type { RolloutCounts } from '../core/telemetry.js';
import { compareSemver, isSemver } from '../core/semver.js';
import type { CatalogData } from './catalog.js';
import type { AgentState, RolloutRecord, ServerState } from './fleet-state.js';

export interface AgentFilter {
  site?: string;
  version?: string;
  behind?: boolean;
  failing?: boolean;
  silent?: boolean;
}

/** An agent is silent when its last heartbeat is older than this. */
export const SILENT_AFTER_MS = 60 * 60_000;

/** The agent version a site is being moved to: the plan of its last bundle. */
export function targetOf(catalog: CatalogData, site: string): string | undefined {
  return Object.hasOwn(catalog.sites, site) ? (catalog.sites[site]!.plan?.agent ?? undefined) : undefined;
}

/** Versions compared so far, by "version target": a fleet runs few versions, so each pair is parsed once. */
const behindMemo = new Map<string, boolean>();

export function isBehind(a: AgentState, target: string | undefined): boolean {
  if (!target) return false;
  const v = a.latest?.version;
  if (!v) return true;
  const key = `${v} ${target}`;
  let r = behindMemo.get(key);
  if (r === undefined) {
    r = !isSemver(v) || compareSemver(v, target) < 0;
    if (behindMemo.size > 10_000) behindMemo.clear();
    behindMemo.set(key, r);
  }
  return r;
}

export function isFailing(a: AgentState): boolean {
  return (a.latest?.results ?? []).some((r) => r.ok === false);
}

export function isSilent(a: AgentState, now: number): boolean {
  const t = a.latest ? Date.parse(a.latest.sentAt) : NaN;
  return !(t > now - SILENT_AFTER_MS);
}

export interface AgentPage {
  total: number;
  offset: number;
  rows: AgentState[];
}

/** Agents matching `f`, ordered by site, hostname, id; `limit` of them from `offset`. */
export function queryAgents(
  s: ServerState,
  catalog: CatalogData,
  f: AgentFilter,
  offset: number,
  limit: number,
  now: number,
): AgentPage {
  const targets = new Map<string, string | undefined>();
  const target = (site: string) => {
    if (!targets.has(site)) targets.set(site, targetOf(catalog, site));
    return targets.get(site);
  };
  const match: AgentState[] = [];
  for (const a of Object.values(s.agents)) {
    if (f.site !== undefined && a.site !== f.site) continue;
    if (f.version !== undefined && (a.latest?.version ?? '') !== f.version) continue;
    if (f.behind && !isBehind(a, target(a.site))) continue;
    if (f.failing && !isFailing(a)) continue;
    if (f.silent && !isSilent(a, now)) continue;
    match.push(a);
  }
  match.sort(
    (x, y) =>
      (x.site < y.site ? -1 : x.site > y.site ? 1 : 0) ||
      (x.hostname < y.hostname ? -1 : x.hostname > y.hostname ? 1 : 0) ||
      (x.id < y.id ? -1 : 1),
  );
  return { total: match.length, offset, rows: match.slice(offset, offset + limit) };
}

export interface SiteHealth {
  site: string;
  agents: number;
  behind: number;
  failing: number;
  silent: number;
  revoked: number;
  target: string | null;
  lastHeard: string | null;
}

/** Per-site counts, in one pass over the agents. */
export function siteHealth(s: ServerState, catalog: CatalogData, now: number): SiteHealth[] {
  const by = new Map<string, SiteHealth>();
  const get = (site: string) => {
    let h = by.get(site);
    if (!h) {
      const target = targetOf(catalog, site) ?? null;
      by.set(
        site,
        (h = { site, agents: 0, behind: 0, failing: 0, silent: 0, revoked: 0, target, lastHeard: null }),
      );
    }
    return h;
  };
  for (const name of Object.keys(catalog.sites)) get(name);
  for (const a of Object.values(s.agents)) {
    const h = get(a.site);
    h.agents++;
    if (a.revoked) h.revoked++;
    if (isBehind(a, h.target ?? undefined)) h.behind++;
    if (isFailing(a)) h.failing++;
    if (isSilent(a, now)) h.silent++;
    const r = a.latest?.receivedAt;
    if (r && (!h.lastHeard || r > h.lastHeard)) h.lastHeard = r;
  }
  return [...by.values()].sort((x, y) => (x.site < y.site ? -1 : 1));
}

export interface WaveView {
  wave: number;
  counts: RolloutCounts | null;
  opened: boolean;
}

export interface RolloutView {
  rolloutId: string;
  version: string;
  manifestSequence: number;
  /** The last decision: halted, completed, … */
  status: string;
  waves: WaveView[];
  halts: {
    at: string;
    wave: number;
    reason: string;
    threshold?: number;
    failureRate?: number;
    counts?: RolloutCounts;
    actor: string;
  }[];
  events: RolloutRecord[];
}

/** Each rollout the site's mirrors reported, newest first, with per-wave counts from the latest event. */
export function rolloutsOf(s: ServerState, site: string): RolloutView[] {
  const list = s.rollouts && Object.hasOwn(s.rollouts, site) ? s.rollouts[site]! : [];
  const by = new Map<string, RolloutView>();
  for (const r of list) {
    const e = r.rollout;
    let v = by.get(e.rolloutId);
    if (!v) {
      v = {
        rolloutId: e.rolloutId,
        version: e.version,
        manifestSequence: e.manifestSequence,
        status: e.event,
        waves: [],
        halts: [],
        events: [],
      };
      by.set(e.rolloutId, v);
    }
    v.status = e.event;
    v.events.push(r);
    while (v.waves.length <= e.wave) v.waves.push({ wave: v.waves.length, counts: null, opened: false });
    const w = v.waves[e.wave]!;
    if (e.counts) w.counts = e.counts;
    if (e.event === 'wave_opened' || e.event === 'started' || w.counts) w.opened = true;
    if (e.event === 'halted')
      v.halts.push({
        at: r.at,
        wave: e.wave,
        reason: e.reason,
        actor: e.actor,
        ...(e.threshold !== undefined && { threshold: e.threshold }),
        ...(e.failureRate !== undefined && { failureRate: e.failureRate }),
        ...(e.counts && { counts: e.counts }),
      });
  }
  return [...by.values()].reverse();
}
