/**
 * A staged rollout's plan as the gate runs it, read from the signed manifest,
 * and its identity (docs/rollout.md).
 *
 * The identity is the sha256 of the plan's canonical text: publisher, target
 * version, the digests of the agent binaries of that version, strategy, waves
 * and failure threshold. Every mirror of a site holding the same manifest
 * computes the same id; re-signing the same plan in a newer manifest (a new
 * sequence, a changed window or pins) continues the rollout, while any change
 * to what is rolled out or how it is staged starts a new one.
 */
import { createHash } from 'node:crypto';
import type { Manifest, Rollout } from '../manifest.js';

export const STRATEGIES = ['immediate', 'staggered', 'manual'] as const;
export type Strategy = (typeof STRATEGIES)[number];

export interface Window {
  days: string[];
  start: string;
  end: string;
  tz: string;
}

export interface PlanWave {
  percent: number;
  soakMinutes: number;
}

export interface Plan {
  /** 64 lowercase hex (rolloutIdOf). */
  id: string;
  manifestSequence: number;
  version: string;
  strategy: Strategy;
  waves: PlanWave[];
  maxFailureRate: number;
  window: Window | null;
  /** The manifest's pins, `agent:<id>` / `group:<g>` → version. */
  pins: Record<string, string>;
}

/** Unset in the manifest: halt on the first failure. */
export const DEFAULT_MAX_FAILURE_RATE = 0;

export function strategyOf(r: Rollout): Strategy {
  const s = r.strategy ?? 'staggered';
  return (STRATEGIES as readonly string[]).includes(s) ? (s as Strategy) : 'staggered';
}

export function rolloutIdOf(m: Manifest): string | undefined {
  const r = m.rollout;
  if (!r) return undefined;
  const binaries = m.artifacts
    .filter((a) => a.kind === 'agent' && a.version === r.agent)
    .map((a) => `${a.platform ?? ''}:${a.sha256}`)
    .sort();
  const canonical = JSON.stringify([
    'ferry.rollout/v1',
    m.publisher,
    r.agent,
    binaries,
    strategyOf(r),
    r.waves.map((w) => [w.percent, w.soakMinutes ?? 0]),
    r.maxFailureRate ?? DEFAULT_MAX_FAILURE_RATE,
  ]);
  return createHash('sha256').update(canonical).digest('hex');
}

/** The plan the manifest carries, or null when it carries none. */
export function planOf(m: Manifest): Plan | null {
  const r = m.rollout;
  if (!r) return null;
  return {
    id: rolloutIdOf(m)!,
    manifestSequence: m.sequence,
    version: r.agent,
    strategy: strategyOf(r),
    waves: r.waves.map((w) => ({ percent: w.percent, soakMinutes: w.soakMinutes ?? 0 })),
    maxFailureRate: r.maxFailureRate ?? DEFAULT_MAX_FAILURE_RATE,
    window: r.window ? { ...r.window, days: [...r.window.days] } : null,
    pins: { ...(m.pins ?? {}) },
  };
}

/** The pinned version that holds this agent, if any (an agent's own pin first). */
export function pinOf(
  pins: Record<string, string>,
  agentId: string,
  groups: readonly string[],
): string | undefined {
  const own = pins[`agent:${agentId}`];
  if (own !== undefined) return own;
  for (const g of groups) {
    const v = pins[`group:${g}`];
    if (v !== undefined) return v;
  }
  return undefined;
}
