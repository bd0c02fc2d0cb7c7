/**
 * Which agent version a signed manifest wants for one agent, before any of the
 * agent's own checks (floors, bad versions, the rollout gate): the pin for
 * `agent:<id>`, else the pin its groups share, else `rollout.agent`, else the
 * highest agent version in the manifest for its platform. Pure; the agent's
 * update decision (agent/update/version-choice.ts) and the mirror's fleet view
 * (mirror/fleet.ts) both start from it, so they never disagree on the target.
 */
import type { Artifact, Manifest } from './manifest.js';
import { compareSemver, isSemver } from './semver.js';

export type CandidateSource = 'agent-pin' | 'group-pin' | 'rollout' | 'highest';

export interface AgentTarget {
  agentId: string | null;
  groups: readonly string[];
  /** e.g. linux-x64 */
  platform: string;
}

export type AgentCandidate =
  | { version: string; source: CandidateSource }
  /** The agent's groups are pinned to different versions: nothing may be chosen. */
  | { conflict: string }
  | undefined;

/** The agent artifacts of `manifest` for `platform`. */
export function agentArtifactsFor(manifest: Manifest, platform: string): Artifact[] {
  return manifest.artifacts.filter((a) => a.kind === 'agent' && a.platform === platform);
}

/** The version the manifest names for this agent, and where that choice comes from. */
export function agentCandidate(manifest: Manifest, t: AgentTarget): AgentCandidate {
  const pins = manifest.pins ?? {};
  const own = t.agentId === null ? undefined : pins[`agent:${t.agentId}`];
  if (own !== undefined) return { version: own, source: 'agent-pin' };
  const groupPins = new Map<string, string>();
  for (const g of t.groups) {
    const v = pins[`group:${g}`];
    if (v !== undefined) groupPins.set(g, v);
  }
  const distinct = new Set(groupPins.values());
  if (distinct.size > 1)
    return {
      conflict: `group pins disagree: ${[...groupPins].map(([g, v]) => `group:${g}=${v}`).join(', ')}`,
    };
  const [groupPin] = distinct;
  if (groupPin !== undefined) return { version: groupPin, source: 'group-pin' };
  if (manifest.rollout) return { version: manifest.rollout.agent, source: 'rollout' };
  let highest: string | undefined;
  for (const a of agentArtifactsFor(manifest, t.platform))
    if (isSemver(a.version) && (highest === undefined || compareSemver(a.version, highest) > 0))
      highest = a.version;
  return highest === undefined ? undefined : { version: highest, source: 'highest' };
}

/**
 * Whether an agent running `running` is behind what the manifest wants for it: a wanted version
 * that the manifest carries for its platform and that is above the running one. Versions that are
 * not SemVer 2.0.0 are never compared (the agent refuses them), so they are never "behind".
 */
export function isBehind(manifest: Manifest, t: AgentTarget, running: string): { wanted: string } | null {
  const c = agentCandidate(manifest, t);
  if (c === undefined || 'conflict' in c) return null;
  if (!isSemver(c.version) || !isSemver(running)) return null;
  if (!agentArtifactsFor(manifest, t.platform).some((a) => a.version === c.version)) return null;
  return compareSemver(running, c.version) < 0 ? { wanted: c.version } : null;
}
