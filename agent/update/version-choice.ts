/**
 * Which agent version should this host run? Pure function of the accepted
 * manifest and what the agent remembers; the driver acts on the answer.
 *
 * Candidate (core/agent-version.ts): the pin for `agent:<id>`, else the pin shared by the agent's
 * groups, else `rollout.agent`, else the highest agent version in the manifest
 * for this platform. Never below `minAgentVersion`, the highest committed
 * version or the running one, unless a signed pin names the version.
 */
import { agentArtifactsFor, agentCandidate, type CandidateSource } from '../../core/agent-version.js';
import type { Artifact, Manifest } from '../../core/manifest.js';
import { compareSemver, isSemver } from '../../core/semver.js';

export interface PolicyInput {
  manifest: Manifest;
  /** Digest of the signed manifest payload, the scope of `badVersions`. */
  payloadDigest: string;
  /** e.g. linux-x64 */
  platform: string;
  agentId: string | null;
  groups: readonly string[];
  /** Version of the binary now running. */
  running: string;
  highestCommitted: string | null;
  /** Remembered failures, as `badVersionKey(payloadDigest, version)`. */
  badVersions: readonly string[];
  /** Rollout wave gate (a later issue); default true. */
  allowedByRollout?: boolean;
}

export type PolicyRefusalCode =
  'PIN_CONFLICT' | 'DOWNGRADE_REFUSED' | 'ARTIFACT_CONFLICT' | 'VERSION_INVALID';

export type { CandidateSource };

export type UpdateDecision =
  | { kind: 'stay'; reason: string }
  | {
      kind: 'update';
      version: string;
      artifact: Artifact;
      source: CandidateSource;
      authorisedDowngrade: boolean;
    }
  | { kind: 'refuse'; code: PolicyRefusalCode; reason: string };

/** A failure is remembered per signed manifest: a new manifest may offer the version again. */
export const badVersionKey = (payloadDigest: string, version: string) => `${payloadDigest}:${version}`;

export function targetVersion(i: PolicyInput): UpdateDecision {
  const stay = (reason: string): UpdateDecision => ({ kind: 'stay', reason });
  // manifest.ts's isSemver is looser than SemVer 2.0.0 (it takes 1.0.0-01); nothing
  // here may be compared unless it parses strictly.
  const loose = [
    ...i.manifest.artifacts.filter((a) => a.kind === 'agent').map((a) => a.version),
    ...Object.values(i.manifest.pins ?? {}),
    ...[i.manifest.rollout?.agent, i.manifest.minAgentVersion, i.running, i.highestCommitted],
  ].filter((v): v is string => typeof v === 'string' && !isSemver(v));
  if (loose.length > 0)
    return { kind: 'refuse', code: 'VERSION_INVALID', reason: `not SemVer 2.0.0: ${loose.join(', ')}` };
  const agentArtifacts = agentArtifactsFor(i.manifest, i.platform);
  const c = agentCandidate(i.manifest, i);
  if (c === undefined) return stay(`the manifest has no agent for ${i.platform}`);
  if ('conflict' in c) return { kind: 'refuse', code: 'PIN_CONFLICT', reason: c.conflict };
  const { version, source } = c;
  // Equal precedence is not enough (1.0.0+a and 1.0.0+b are different builds).
  const matches = agentArtifacts.filter((a) => a.version === version);
  const artifact = matches[0];
  if (artifact === undefined)
    return stay(`the manifest has no agent ${version} for ${i.platform} (${source})`);
  if (matches.some((a) => a.sha256 !== artifact.sha256)) {
    return {
      kind: 'refuse',
      code: 'ARTIFACT_CONFLICT',
      reason: `the manifest has different agent ${version} binaries for ${i.platform}`,
    };
  }
  if (version === i.running) return stay(`already running ${version}`);

  const floors: [string, string | null | undefined][] = [
    ['minAgentVersion', i.manifest.minAgentVersion],
    ['the highest committed version', i.highestCommitted],
    ['the running version', i.running],
  ];
  const below = floors.filter(([, f]) => f != null && compareSemver(version, f) < 0);
  const pinned = source === 'agent-pin' || source === 'group-pin';
  if (below.length > 0 && !pinned) {
    const why = below.map(([name, f]) => `${name} ${f}`).join(', ');
    return { kind: 'refuse', code: 'DOWNGRADE_REFUSED', reason: `${version} (${source}) is below ${why}` };
  }
  if (i.badVersions.includes(badVersionKey(i.payloadDigest, version))) {
    return stay(`${version} failed on this host before under this manifest; not retrying`);
  }
  if (i.allowedByRollout === false) return stay(`the rollout does not yet include this agent for ${version}`);
  return { kind: 'update', version, artifact, source, authorisedDowngrade: below.length > 0 };
}
