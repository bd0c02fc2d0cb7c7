/**
 * desiredState over real files: a policy that does not validate is skipped
 * whole, an entry naming what the manifest lacks is skipped alone, each with a
 * code; a policy whose bytes cannot be had is a problem when applying but
 * fails the sync (neededBlobs), so a manifest never becomes active without it.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Artifact, Manifest } from '../core/manifest.js';
import { desiredState, neededBlobs } from './desired.js';

let dir: string;
const files = new Map<string, string>(); // sha256 → path

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ferry-desired-'));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

async function artifact(name: string, kind: Artifact['kind'], content: string): Promise<Artifact> {
  const sha256 = createHash('sha256').update(content).digest('hex');
  const path = join(dir, sha256);
  await writeFile(path, content);
  files.set(sha256, path);
  return { name, kind, version: '1', sha256, size: Buffer.byteLength(content) };
}

const manifest = (artifacts: Artifact[]): Manifest => ({
  type: 'ferry.manifest/v1',
  publisher: 'acme-ops',
  sequence: 1,
  created: '2026-01-01T00:00:00Z',
  expires: '2099-01-01T00:00:00Z',
  sites: ['*'],
  artifacts,
});

const fromDisk = (a: Artifact) => {
  const p = files.get(a.sha256);
  return p ? Promise.resolve(p) : Promise.reject(new Error(`no bytes for ${a.name}`));
};

const doc = (v: Record<string, unknown>) => JSON.stringify({ type: 'ferry.policy/v1', ...v });

describe('desiredState', () => {
  it('skips a bad document whole and a dangling entry alone, with codes; the rest applies', async () => {
    const tick = await artifact('tick', 'script', 'echo tick\n');
    const conf = await artifact('conf', 'file', 'x = 1\n');
    const fast = await artifact(
      'fast',
      'policy',
      doc({ scripts: [{ script: 'tick', groups: ['*'], schedule: 'every 5s' }] }),
    );
    const mixed = await artifact(
      'mixed',
      'policy',
      doc({
        scripts: [
          { script: 'tick', groups: ['*'], schedule: 'once' },
          { script: 'gone', groups: ['*'], schedule: 'once' },
        ],
        files: [
          { path: '/etc/a', artifact: 'conf', mode: '0644', enforce: true },
          { path: '/etc/b', artifact: 'tick-agent', mode: '0644', enforce: true },
        ],
      }),
    );
    const d = await desiredState(manifest([tick, conf, fast, mixed]), ['web'], fromDisk);
    expect(d.scripts.map((s) => [s.entry.script, s.entry.schedule])).toEqual([['tick', 'once']]);
    expect(d.files.map((f) => f.entry.path)).toEqual(['/etc/a']);
    expect(d.problems.map((p) => [p.policy, p.sha256, p.code])).toEqual([
      ['fast', fast.sha256, 'POLICY_INVALID'],
      ['mixed', mixed.sha256, 'POLICY_INVALID'],
      ['mixed', mixed.sha256, 'POLICY_INVALID'],
    ]);
    const [m0, m1, m2] = d.problems.map((p) => p.message);
    expect(m0).toMatch(/^policy fast: scripts\[0\]\.schedule /);
    expect(m1).toMatch(/^policy mixed: scripts\[1\]\.script names gone/);
    expect(m2).toMatch(/^policy mixed: files\[1\]\.artifact names tick-agent/);
  });

  it('a policy whose bytes are missing: POLICY_UNAVAILABLE when applying, a failed sync when fetching', async () => {
    const tick = await artifact('tick2', 'script', 'echo tick2\n');
    const missing: Artifact = { ...(await artifact('p', 'policy', doc({}))), sha256: 'f'.repeat(64) };
    const m = manifest([tick, missing]);
    const d = await desiredState(m, [], fromDisk);
    expect(d.problems).toEqual([expect.objectContaining({ policy: 'p', code: 'POLICY_UNAVAILABLE' })]);
    await expect(neededBlobs(m, [], fromDisk)).rejects.toThrow(/no bytes for p/);
  });
});
