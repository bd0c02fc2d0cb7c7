/**
 * The spec as docs/spec-format.md describes it, through the built CLI:
 * artifact paths are relative to the spec file (not to where ferry runs), a
 * duration or an ISO time sets `expires`, and a misspelt field is refused
 * rather than ignored, with nothing written.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ferry, snapshotDir } from './helpers/fixtures.js';
import { useWorld } from './helpers/world.js';

const w = useWorld();

async function specDir(name: string, artifact: Record<string, unknown>, expires = '12h') {
  const dir = join(w.dir, name);
  await mkdir(join(dir, 'ops', 'scripts'), { recursive: true });
  await writeFile(join(dir, 'ops', 'scripts', 'rotate.sh'), '#!/bin/sh\necho rotate\n');
  const spec = {
    publisher: 'acme-ops',
    sequence: 3,
    expires,
    sites: ['plant-7'],
    artifacts: [{ name: 'rotate', kind: 'script', version: '1', path: 'scripts/rotate.sh', ...artifact }],
  };
  await writeFile(join(dir, 'ops', 'spec.json'), JSON.stringify(spec));
  return dir;
}

const key = () => join(w.keyDir, 'release.key');

describe('bundle create --spec', () => {
  it('resolves artifact paths against the spec file, wherever ferry runs; 12h sets expires', async () => {
    const dir = await specDir('relative', {});
    const out = join(dir, 'b.ferry');
    const t0 = Date.now();
    const r = await ferry(
      ['bundle', 'create', '--spec', 'ops/spec.json', '--key', key(), '--out', out, '--json'],
      {
        cwd: dir, // scripts/rotate.sh exists only under ops/, next to the spec
      },
    );
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const j = JSON.parse(r.stdout) as { expires: string; artifacts: { name: string; interpreter: string }[] };
    expect(j.artifacts).toEqual([expect.objectContaining({ name: 'rotate', interpreter: 'sh' })]);
    const ms = Date.parse(j.expires) - t0;
    expect(ms).toBeGreaterThan(12 * 3_600_000 - 60_000);
    expect(ms).toBeLessThan(12 * 3_600_000 + 60_000);
  });

  it('refuses a misspelt artifact field (SPEC_INVALID) and writes nothing', async () => {
    const dir = await specDir('typo', { interpeter: 'bash' });
    const before = await snapshotDir(dir);
    const r = await ferry(
      ['bundle', 'create', '--spec', 'ops/spec.json', '--key', key(), '--out', 'b.ferry'],
      {
        cwd: dir,
      },
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toBe('ferry: SPEC_INVALID: spec: artifacts[0] has unknown field "interpeter"\n');
    expect(await snapshotDir(dir)).toEqual(before);
  });
});
