/**
 * Have/want across the air gap: the courier's telemetry export carries the
 * mirror's signed inventory, and `ferry bundle create --have` writes exactly
 * the delta the site lacks, saying what the courier saves. A damaged
 * inventory, one signed by another key, or one for another site is refused
 * and no bundle is written.
 */
import { access, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ferry, makeKey, SAMPLE_ARTIFACTS, writeSpec, type ArtifactInput } from './helpers/fixtures.js';
import { useWorld } from './helpers/world.js';

const w = useWorld();

const changedOne: ArtifactInput[] = SAMPLE_ARTIFACTS.map((a) =>
  a.name === 'rotate-logs' ? { ...a, version: '4', content: '#!/bin/sh\necho changed\n' } : a,
);

async function siteWithRelease1(name: string) {
  const dir = join(w.dir, name);
  await mkdir(join(dir, 'usb'), { recursive: true });
  const spec1 = await writeSpec(join(dir, 'r1'), { sequence: 1 });
  const full1 = join(dir, 'r1.ferry');
  expect(
    (
      await ferry([
        'bundle',
        'create',
        '--spec',
        spec1,
        '--key',
        join(w.keyDir, 'release.key'),
        '--out',
        full1,
      ])
    ).code,
  ).toBe(0);
  const data = join(dir, 'data');
  const imp = await ferry([
    'mirror',
    'import',
    full1,
    '--data',
    data,
    '--trust',
    w.rootPath,
    '--site',
    'plant-7',
  ]);
  expect(imp.code, imp.stderr).toBe(0);
  const exp = await ferry([
    'mirror',
    'export-telemetry',
    '--data',
    data,
    '--out',
    join(dir, 'usb/t.jsonl'),
    '--json',
  ]);
  expect(exp.code, exp.stderr).toBe(0);
  const inventory = join(dir, 'usb/t.jsonl.inventory.json');
  expect(JSON.parse(exp.stdout)).toMatchObject({ ok: true, inventory, blobs: 3, active: 1 });
  const spec2 = await writeSpec(join(dir, 'r2'), { sequence: 2 }, changedOne);
  return { dir, data, inventory, spec2, mirrorPub: join(data, 'identity', 'mirror.pub') };
}

describe('bundle create --have', () => {
  it('writes only the blob the site lacks, prints the saving, and the site completes the release', async () => {
    const s = await siteWithRelease1('site-ok');
    const out = join(s.dir, 'delta.ferry');
    const r = await ferry([
      ...['bundle', 'create', '--spec', s.spec2, '--key', join(w.keyDir, 'release.key'), '--out', out],
      ...['--have', s.inventory, '--mirror-key', s.mirrorPub, '--json'],
    ]);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout) as {
      omitted: string[];
      saved: { bytes: number; written: number; full: number };
      artifacts: { name: string; sha256: string; size: number }[];
    };
    const changed = j.artifacts.find((a) => a.name === 'rotate-logs')!;
    const kept = j.artifacts.filter((a) => a.name !== 'rotate-logs');
    expect(j.omitted.sort()).toEqual(kept.map((a) => a.sha256).sort());
    expect(j.saved).toEqual({
      bytes: kept.reduce((n, a) => n + a.size, 0),
      written: changed.size,
      full: j.artifacts.reduce((n, a) => n + a.size, 0),
    });
    // The same without --json says it in words.
    const words = await ferry([
      ...[
        'bundle',
        'create',
        '--spec',
        s.spec2,
        '--key',
        join(w.keyDir, 'release.key'),
        '--out',
        join(s.dir, 'delta2.ferry'),
      ],
      ...['--have', s.inventory],
    ]);
    expect(words.stdout).toMatch(new RegExp(`the courier saves .* \\(${j.saved.bytes} bytes\\)`));
    // The delta alone completes the release at the site.
    const imp = await ferry(['mirror', 'import', out, '--data', s.data, '--json']);
    expect(imp.code, imp.stderr).toBe(0);
    expect(JSON.parse(imp.stdout)).toMatchObject({ results: [{ sequence: 2, status: 'active' }] });
  });

  const refusals: [string, (s: Awaited<ReturnType<typeof siteWithRelease1>>) => Promise<string[]>, string][] =
    [
      [
        'an inventory altered on the way (a digest added, signature kept)',
        async (s) => {
          const env = JSON.parse(await readFile(s.inventory, 'utf8')) as { payload: string };
          const p = JSON.parse(Buffer.from(env.payload, 'base64').toString()) as { blobs: string[] };
          p.blobs.push('0'.repeat(64));
          env.payload = Buffer.from(JSON.stringify(p)).toString('base64');
          await writeFile(s.inventory, JSON.stringify(env));
          return ['--have', s.inventory];
        },
        'SIGNATURE',
      ],
      [
        'an inventory signed by another key than the mirror key given',
        async (s) => {
          await makeKey(join(s.dir, 'other'), 'other');
          return ['--have', s.inventory, '--mirror-key', join(s.dir, 'other', 'other.pub')];
        },
        'SIGNATURE_THRESHOLD',
      ],
      [
        'the inventory of another site',
        async (s) => {
          await writeSpec(join(s.dir, 'r2'), { sequence: 2, sites: ['plant-9'] }, changedOne);
          return ['--have', s.inventory];
        },
        'SITE_MISMATCH',
      ],
    ];
  for (const [what, mount, code] of refusals)
    it(`refuses ${what} and writes nothing`, async () => {
      const s = await siteWithRelease1(`site-${code}-${Math.random().toString(36).slice(2, 8)}`);
      const extra = await mount(s);
      const out = join(s.dir, 'refused.ferry');
      const r = await ferry([
        'bundle',
        'create',
        '--spec',
        s.spec2,
        '--key',
        join(w.keyDir, 'release.key'),
        '--out',
        out,
        ...extra,
      ]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(code);
      await expect(access(out)).rejects.toThrow();
    });
});
