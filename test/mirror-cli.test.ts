import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildBundle, ferry, makeWorld, snapshotDir, type World } from './helpers/fixtures.js';

let w: World;
beforeAll(async () => {
  w = await makeWorld();
});
afterAll(() => w.cleanup());

const json = (s: string) => JSON.parse(s) as Record<string, unknown>;

describe('ferry mirror import / status (built binary)', () => {
  it('sets up a data directory, imports, refuses with a code and changes nothing but quarantine', async () => {
    const data = join(w.dir, 'mirror');
    const good = join(w.dir, 'good.ferry');
    const other = join(w.dir, 'other-site.ferry');
    await buildBundle(w, good);
    await buildBundle(w, other, { spec: { sequence: 2, sites: ['ship-3'] } });

    const notSetUp = await ferry(['mirror', 'import', good, '--data', data]);
    expect(notSetUp.code).toBe(1);
    expect(notSetUp.stderr).toMatch(/STORE_INVALID/);

    const first = await ferry([
      'mirror',
      'import',
      good,
      '--data',
      data,
      '--trust',
      w.rootPath,
      '--site',
      'plant-7',
      '--json',
    ]);
    expect(first.code, first.stderr).toBe(0);
    expect(json(first.stdout)).toMatchObject({
      ok: true,
      results: [{ ok: true, status: 'active', sequence: 1, changed: true }],
    });

    const again = await ferry(['mirror', 'import', good, '--data', data, '--json']);
    expect(json(again.stdout)).toMatchObject({ ok: true, results: [{ ok: true, changed: false }] });

    const before = await snapshotDir(join(data, 'blobs'));
    const refused = await ferry(['mirror', 'import', other, '--data', data, '--json']);
    expect(refused.code).toBe(1);
    expect(json(refused.stdout)).toMatchObject({
      ok: false,
      results: [{ ok: false, code: 'SITE_MISMATCH' }],
    });
    expect(await snapshotDir(join(data, 'blobs'))).toEqual(before);

    const status = await ferry(['mirror', 'status', '--data', data, '--json']);
    expect(status.code).toBe(0);
    const s = json(status.stdout);
    expect(s).toMatchObject({
      site: 'plant-7',
      rootVersion: 1,
      active: { publisher: 'acme-ops', sequence: 1 },
    });
    expect(s.quarantine).toEqual([expect.objectContaining({ code: 'SITE_MISMATCH', file: other })]);

    const mismatch = await ferry([
      'mirror',
      'import',
      good,
      '--data',
      data,
      '--trust',
      w.rootPath,
      '--site',
      'ship-3',
    ]);
    expect(mismatch.code).toBe(1);
    expect(mismatch.stderr).toMatch(/STORE_MISMATCH/);
  });
});
