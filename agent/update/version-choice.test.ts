import { describe, expect, it } from 'vitest';
import type { Artifact, Manifest } from '../../core/manifest.js';
import { badVersionKey, targetVersion, type PolicyInput } from './version-choice.js';

const T0 = Date.parse('2026-11-22T10:00:00Z');
const DIGEST = 'd1'.repeat(32);

function agent(version: string, platform = 'linux-x64', sha = version): Artifact {
  return {
    name: `ferry-agent-${platform}-${version}-${sha}`,
    kind: 'agent',
    version,
    platform,
    sha256: sha.padEnd(64, '0'),
    size: 1000,
  };
}

function manifest(over: Partial<Manifest> = {}): Manifest {
  return {
    type: 'ferry.manifest/v1',
    publisher: 'acme-ops',
    sequence: 5,
    created: new Date(T0).toISOString(),
    expires: new Date(T0 + 86_400_000).toISOString(),
    sites: ['plant-7'],
    artifacts: [
      agent('1.0.0'),
      agent('1.2.0'),
      agent('1.10.0'),
      agent('1.9.0'),
      agent('2.0.0', 'linux-arm64'),
    ],
    ...over,
  };
}

function input(over: Partial<PolicyInput> = {}): PolicyInput {
  return {
    manifest: manifest(),
    payloadDigest: DIGEST,
    platform: 'linux-x64',
    agentId: 'a-17',
    groups: ['edge'],
    running: '1.0.0',
    highestCommitted: '1.0.0',
    badVersions: [],
    ...over,
  };
}

const rollout = (v: string): Manifest['rollout'] => ({ agent: v, waves: [{ percent: 100 }] });

describe('agent self-update policy', () => {
  it.each<[string, Partial<PolicyInput>, string, string]>([
    ['highest by semver, not by string', {}, '1.10.0', 'highest'],
    ['highest for the arm64 platform', { platform: 'linux-arm64' }, '2.0.0', 'highest'],
    ['rollout.agent over highest', { manifest: manifest({ rollout: rollout('1.2.0') }) }, '1.2.0', 'rollout'],
    [
      'a group pin over rollout',
      { manifest: manifest({ rollout: rollout('1.2.0'), pins: { 'group:edge': '1.9.0' } }) },
      '1.9.0',
      'group-pin',
    ],
    [
      'the agent pin over group pins, even disagreeing ones',
      {
        groups: ['edge', 'core'],
        manifest: manifest({
          pins: { 'agent:a-17': '1.2.0', 'group:edge': '1.9.0', 'group:core': '1.10.0' },
        }),
      },
      '1.2.0',
      'agent-pin',
    ],
    [
      'group pins that agree',
      {
        groups: ['edge', 'core'],
        manifest: manifest({ pins: { 'group:edge': '1.9.0', 'group:core': '1.9.0' } }),
      },
      '1.9.0',
      'group-pin',
    ],
    [
      'pins for other agents and groups are not ours',
      { manifest: manifest({ pins: { 'agent:a-18': '1.2.0', 'group:core': '1.9.0' } }) },
      '1.10.0',
      'highest',
    ],
    [
      'an agent not yet enrolled still follows its group pin',
      { agentId: null, manifest: manifest({ pins: { 'agent:null': '1.2.0', 'group:edge': '1.9.0' } }) },
      '1.9.0',
      'group-pin',
    ],
    [
      'a version equal to minAgentVersion',
      { manifest: manifest({ minAgentVersion: '1.10.0' }) },
      '1.10.0',
      'highest',
    ],
    [
      'a bad version under another manifest is offered again',
      { badVersions: [badVersionKey('ee'.repeat(32), '1.10.0')] },
      '1.10.0',
      'highest',
    ],
  ])('updates to %s', (_name, over, version, source) => {
    const d = targetVersion(input(over));
    expect(d).toMatchObject({ kind: 'update', version, source, authorisedDowngrade: false });
    if (d.kind === 'update')
      expect(d.artifact).toMatchObject({ kind: 'agent', version, platform: input(over).platform });
  });

  it.each<[string, Partial<PolicyInput>, RegExp]>([
    [
      'already running the candidate',
      { running: '1.10.0', highestCommitted: '1.10.0' },
      /already running 1\.10\.0/,
    ],
    ['no agent for the platform', { platform: 'windows-x64' }, /no agent for windows-x64/],
    [
      'rollout.agent has no binary for this platform',
      { manifest: manifest({ rollout: rollout('2.0.0') }) },
      /no agent 2\.0\.0 for linux-x64 \(rollout\)/,
    ],
    [
      'a pin has no binary for this platform (no fallback past a pin)',
      { manifest: manifest({ pins: { 'agent:a-17': '3.0.0' } }) },
      /no agent 3\.0\.0 for linux-x64 \(agent-pin\)/,
    ],
    [
      'the candidate failed here before',
      { badVersions: [badVersionKey(DIGEST, '1.10.0')] },
      /1\.10\.0 failed on this host before/,
    ],
    ['the rollout gate is closed', { allowedByRollout: false }, /rollout does not yet include/],
    ['no agents in the manifest at all', { manifest: manifest({ artifacts: [] }) }, /no agent for linux-x64/],
  ])('stays when %s', (_name, over, reason) => {
    const d = targetVersion(input(over));
    expect(d.kind).toBe('stay');
    if (d.kind === 'stay') expect(d.reason).toMatch(reason);
  });

  it.each<[string, Partial<PolicyInput>, string, RegExp]>([
    [
      'group pins that disagree',
      {
        groups: ['edge', 'core'],
        manifest: manifest({ pins: { 'group:edge': '1.9.0', 'group:core': '1.2.0' } }),
      },
      'PIN_CONFLICT',
      /group:edge=1\.9\.0, group:core=1\.2\.0/,
    ],
    [
      'rollout.agent below the highest committed version',
      { manifest: manifest({ rollout: rollout('1.2.0') }), running: '1.9.0', highestCommitted: '1.9.0' },
      'DOWNGRADE_REFUSED',
      /1\.2\.0 \(rollout\) is below the highest committed version 1\.9\.0/,
    ],
    [
      'highest in a replayed older manifest below the highest committed version',
      { running: '1.0.0', highestCommitted: '2.0.0' },
      'DOWNGRADE_REFUSED',
      /highest committed version 2\.0\.0/,
    ],
    [
      'a candidate below minAgentVersion',
      { manifest: manifest({ minAgentVersion: '1.11.0' }), running: '0.9.0', highestCommitted: null },
      'DOWNGRADE_REFUSED',
      /minAgentVersion 1\.11\.0/,
    ],
    [
      'a prerelease of the running version',
      { manifest: manifest({ rollout: rollout('1.0.0-rc.1'), artifacts: [agent('1.0.0-rc.1')] }) },
      'DOWNGRADE_REFUSED',
      /below .*the running version 1\.0\.0/,
    ],
    [
      'two different binaries claiming the same version',
      {
        manifest: manifest({
          artifacts: [agent('1.2.0', 'linux-x64', 'aa'), agent('1.2.0', 'linux-x64', 'bb')],
        }),
      },
      'ARTIFACT_CONFLICT',
      /different agent 1\.2\.0 binaries/,
    ],
    [
      'a version manifest.ts lets through but SemVer 2.0.0 does not',
      { manifest: manifest({ artifacts: [agent('1.0.0-01')] }) },
      'VERSION_INVALID',
      /not SemVer 2\.0\.0: 1\.0\.0-01/,
    ],
    ['a corrupt running version', { running: '1.0' }, 'VERSION_INVALID', /1\.0$/],
  ])('refuses %s', (_name, over, code, reason) => {
    const d = targetVersion(input(over));
    expect(d).toMatchObject({ kind: 'refuse', code });
    if (d.kind === 'refuse') expect(d.reason).toMatch(reason);
  });

  it.each<[string, Partial<PolicyInput>]>([
    [
      'an agent pin below the highest committed version',
      {
        manifest: manifest({ pins: { 'agent:a-17': '1.2.0' } }),
        running: '1.10.0',
        highestCommitted: '1.10.0',
      },
    ],
    [
      'a group pin below minAgentVersion',
      {
        manifest: manifest({ minAgentVersion: '1.9.0', pins: { 'group:edge': '1.2.0' } }),
        running: '1.10.0',
      },
    ],
  ])('allows %s as an authorised downgrade', (_name, over) => {
    expect(targetVersion(input(over))).toMatchObject({
      kind: 'update',
      version: '1.2.0',
      authorisedDowngrade: true,
    });
  });

  it('a pinned downgrade that failed before is not retried', () => {
    const d = targetVersion(
      input({
        manifest: manifest({ pins: { 'agent:a-17': '1.2.0' } }),
        running: '1.10.0',
        highestCommitted: '1.10.0',
        badVersions: [badVersionKey(DIGEST, '1.2.0')],
      }),
    );
    expect(d.kind).toBe('stay');
  });

  it('build metadata makes a different build, not the running one', () => {
    const d = targetVersion(
      input({
        manifest: manifest({ artifacts: [agent('1.0.0+b2')] }),
        running: '1.0.0+b1',
        highestCommitted: '1.0.0+b1',
      }),
    );
    expect(d).toMatchObject({ kind: 'update', version: '1.0.0+b2', authorisedDowngrade: false });
  });

  it('does not change its input', () => {
    const i = input({ manifest: manifest({ pins: { 'group:edge': '1.9.0' } }), badVersions: ['x:1'] });
    const before = structuredClone(i);
    targetVersion(i);
    expect(i).toEqual(before);
  });
});
