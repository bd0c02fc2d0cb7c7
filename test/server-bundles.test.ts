/**
 * Releases, sites and site bundles from the server's CLI, checked with the same tools a courier, an
 * auditor and a site use: a bundle the server signs verifies against the site's root and imports into
 * a mirror; an unsigned one goes to the signing station (`ferry bundle sign`) and comes back through
 * `ferry server bundle import`. Every refusal names its code and changes nothing in the data directory.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeBase64Strict } from '../core/encoding.js';
import { ferry, snapshotDir, tempDir, type RunResult } from './helpers/fixtures.js';
import { useWorld } from './helpers/world.js';
import { buildBundle } from './helpers/fixtures.js';

const w = useWorld();
let dir: string;
let cleanup: () => Promise<void>;
let data: string;
let spec: string;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('ferry-server-bundles-'));
  data = join(dir, 'server');
  await mkdir(join(dir, 'rel'), { recursive: true });
  await writeFile(join(dir, 'rel/ferry-agent'), Buffer.alloc(50_000, 3));
  await writeFile(join(dir, 'rel/rotate.sh'), '#!/bin/sh\necho rotated\n');
  spec = join(dir, 'rel/release.json');
  await writeFile(
    spec,
    JSON.stringify({
      name: 'fleet',
      version: '1.1.0',
      artifacts: [
        { name: 'ferry-agent', kind: 'agent', version: '1.1.0', platform: 'linux-x64', path: 'ferry-agent' },
        { name: 'rotate-logs', kind: 'script', version: '2', path: 'rotate.sh' },
      ],
    }),
  );
});
afterAll(() => cleanup());

const refused = async (args: string[], code: RegExp): Promise<RunResult> => {
  const before = await snapshotDir(data);
  const r = await ferry(args);
  expect(r.code, r.stdout + r.stderr).toBe(1);
  expect(r.stderr).toMatch(code);
  expect(await snapshotDir(data)).toEqual(before);
  return r;
};

function manifestOf(bytes: Buffer): Record<string, unknown> {
  const size = parseInt(
    bytes
      .subarray(124, 136)
      .toString('latin1')
      .replace(/[\0 ]+$/, ''),
    8,
  );
  const env = JSON.parse(bytes.subarray(512, 512 + size).toString('utf8')) as {
    payload: string;
    signatures: unknown[];
  };
  return {
    ...(JSON.parse(decodeBase64Strict(env.payload, 'payload').toString('utf8')) as object),
    signatures: env.signatures.length,
  };
}

interface CatalogView {
  sites: Record<string, { sequence: number }>;
  releases: Record<string, { artifacts: { sha256: string }[] }>;
}
const catalog = async (): Promise<CatalogView> =>
  JSON.parse(
    await readFile(join(data, 'catalog.json'), 'utf8').catch(() => '{"sites":{},"releases":{}}'),
  ) as CatalogView;

/**
 * The site and the release the bundles are built from, registered by whichever test needs them first,
 * so that each test also runs alone (`-t`) or in another order; the site's current sequence.
 */
async function registered(): Promise<number> {
  let c = await catalog();
  if (!Object.hasOwn(c.sites, 'plant-7')) {
    const r = await ferry([
      'server',
      'site',
      'add',
      '--data',
      data,
      '--name',
      'plant-7',
      '--publisher',
      'acme-ops',
      '--sequence',
      '4',
    ]);
    expect(r.code, r.stderr).toBe(0);
  }
  if (!Object.hasOwn(c.releases, 'fleet@1.1.0')) {
    const r = await ferry(['server', 'release', 'add', '--data', data, '--spec', spec, '--json']);
    expect(r.code, r.stderr).toBe(0);
  }
  c = await catalog();
  return c.sites['plant-7']!.sequence;
}

describe('releases, sites and site bundles', () => {
  it('registers a site and a release (each artifact stored once, by digest); a release never changes', async () => {
    expect(await registered()).toBeGreaterThanOrEqual(4);
    const rel = (await catalog()).releases['fleet@1.1.0']!;
    expect(rel.artifacts).toHaveLength(2);
    for (const a of rel.artifacts) expect(await readFile(join(data, 'blobs/sha256', a.sha256))).toBeTruthy();
    await refused(['server', 'release', 'add', '--data', data, '--spec', spec], /RELEASE_EXISTS/);
  });

  it('refuses bad release specs and bad site names before storing anything', async () => {
    await registered();
    const bad = async (name: string, body: unknown, code = /BAD_INPUT/) => {
      const p = join(dir, 'rel', name);
      await writeFile(p, typeof body === 'string' ? body : JSON.stringify(body));
      await refused(['server', 'release', 'add', '--data', data, '--spec', p], code);
    };
    const art = { name: 'x', kind: 'script', version: '1', path: 'rotate.sh' };
    await bad('dup.json', '{"name":"a","name":"b","version":"1","artifacts":[]}');
    await bad('unknown.json', { name: 'a', version: '1', artifacts: [art], extra: 1 });
    await bad('kind.json', { name: 'a', version: '1', artifacts: [{ ...art, kind: 'rootkit' }] });
    await bad('agentver.json', {
      name: 'a',
      version: '1',
      artifacts: [{ ...art, kind: 'agent', version: 'latest' }],
    });
    await bad('path.json', { name: 'a', version: '1', artifacts: [{ ...art, path: 'no-such-file' }] });
    await bad('name.json', { name: '../etc', version: '1', artifacts: [art] });
    // the same name and version with other bytes
    await writeFile(join(dir, 'rel/other.sh'), '#!/bin/sh\necho other\n');
    await bad('rebytes.json', {
      name: 'b',
      version: '1',
      artifacts: [{ name: 'rotate-logs', kind: 'script', version: '2', path: 'other.sh' }],
    });
    // policies the agents would refuse (core/policy.ts), or that name what the release does not carry
    const policy = async (file: string, doc: unknown) =>
      writeFile(join(dir, 'rel', file), typeof doc === 'string' ? doc : JSON.stringify(doc));
    await policy('p-json.json', '{"type":"ferry.policy/v1","scripts":[],"scripts":[]}');
    await policy('p-schedule.json', {
      type: 'ferry.policy/v1',
      scripts: [{ script: 'rotate-logs', groups: ['*'], schedule: 'every 1s' }],
    });
    await policy('p-path.json', {
      type: 'ferry.policy/v1',
      files: [{ path: '../etc/shadow', artifact: 'rotate-logs', mode: '0644' }],
    });
    await policy('p-refs.json', {
      type: 'ferry.policy/v1',
      scripts: [{ script: 'harden-ssh', groups: ['*'], schedule: 'once' }],
    });
    await policy('p-ok.json', {
      type: 'ferry.policy/v1',
      scripts: [{ script: 'rotate-logs', groups: ['*'], schedule: 'every 15m' }],
    });
    const newScript = { name: 'fresh', kind: 'script', version: '1', path: 'other.sh' };
    for (const [i, file] of ['p-json.json', 'p-schedule.json', 'p-path.json', 'p-refs.json'].entries())
      // the good script listed first is not stored either: every entry is checked before any byte is
      await bad(
        `policy-${i}.json`,
        {
          name: 'pol',
          version: '1',
          artifacts: [
            newScript,
            { name: 'rotate-logs', kind: 'script', version: '2', path: 'rotate.sh' },
            { name: 'baseline', kind: 'policy', version: '1', path: file },
          ],
        },
        /POLICY_INVALID/,
      );
    await bad(
      'policy-alone.json',
      {
        name: 'pol',
        version: '1',
        artifacts: [{ name: 'baseline', kind: 'policy', version: '1', path: 'p-ok.json' }],
      },
      /POLICY_INVALID/,
    );
    // the same policy with the script it names: registered
    await writeFile(
      join(dir, 'rel/pol-ok.json'),
      JSON.stringify({
        name: 'pol',
        version: '2',
        artifacts: [
          { name: 'rotate-logs', kind: 'script', version: '2', path: 'rotate.sh' },
          { name: 'baseline', kind: 'policy', version: '1', path: 'p-ok.json' },
        ],
      }),
    );
    const ok = await ferry([
      'server',
      'release',
      'add',
      '--data',
      data,
      '--spec',
      join(dir, 'rel/pol-ok.json'),
    ]);
    expect(ok.code, ok.stderr).toBe(0);
    await refused(['server', 'site', 'add', '--data', data, '--name', 'a b'], /BAD_INPUT/);
    await refused(
      ['server', 'site', 'add', '--data', data, '--name', 'ship-3', '--sequence', 'x1'],
      /BAD_INPUT/,
    );
  });

  it("writes the site's next bundle, signed: the auditor's verify passes and a mirror imports it", async () => {
    const seq = (await registered()) + 1;
    const out = join(dir, `plant-7-${seq}.ferry`);
    const r = await ferry([
      'server',
      'bundle',
      '--data',
      data,
      '--site',
      'plant-7',
      '--release',
      'fleet@1.1.0',
      '--key',
      join(w.keyDir, 'release.key'),
      '--out',
      out,
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`sequence ${seq}.*staggered.*signed`));
    const m = manifestOf(await readFile(out));
    expect(m).toMatchObject({
      sequence: seq,
      publisher: 'acme-ops',
      sites: ['plant-7'],
      signatures: 1,
      rollout: {
        agent: '1.1.0',
        strategy: 'staggered',
        waves: [{ percent: 5 }, { percent: 25 }, { percent: 100 }],
        maxFailureRate: 0.1,
      },
    });
    const v = await ferry(['bundle', 'verify', out, '--trust', w.rootPath, '--site', 'plant-7']);
    expect(v.code, v.stdout + v.stderr).toBe(0);
    const imp = await ferry([
      'mirror',
      'import',
      out,
      '--data',
      join(dir, 'mirror'),
      '--trust',
      w.rootPath,
      '--site',
      'plant-7',
    ]);
    expect(imp.code, imp.stdout + imp.stderr).toBe(0);
  });

  it('refuses an unknown site or release, a bad strategy and a missing signing key, changing nothing', async () => {
    await registered();
    const base = ['server', 'bundle', '--data', data, '--key', join(w.keyDir, 'release.key')];
    await refused([...base, '--site', 'atlantis', '--release', 'fleet@1.1.0'], /UNKNOWN_SITE/);
    await refused([...base, '--site', 'plant-7', '--release', 'fleet@9'], /UNKNOWN_RELEASE/);
    await refused(
      [...base, '--site', 'plant-7', '--release', 'fleet@1.1.0', '--strategy', 'yolo'],
      /BAD_INPUT/,
    );
    await refused(
      [...base, '--site', 'plant-7', '--release', 'fleet@1.1.0', '--expires', 'soon'],
      /USAGE|BAD_INPUT|EXPIRES/,
    );
    await refused(
      ['server', 'bundle', '--data', data, '--site', 'plant-7', '--release', 'fleet@1.1.0'],
      /NO_SIGNING_KEY/,
    );
  });

  it('leaves a bundle unsigned for the signing station, and records it once signed there', async () => {
    const seq = (await registered()) + 1;
    const out = join(dir, `plant-7-${seq}.ferry`);
    const r = await ferry([
      'server',
      'bundle',
      '--data',
      data,
      '--site',
      'plant-7',
      '--release',
      'fleet@1.1.0',
      '--strategy',
      'immediate',
      '--unsigned',
      '--out',
      out,
      '--json',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({
      bundle: { sequence: seq, status: 'unsigned', signatures: 0 },
    });
    expect((await ferry(['bundle', 'verify', out, '--trust', w.rootPath])).code).toBe(1);
    // not signed yet: nothing to record
    await refused(['server', 'bundle', 'import', out, '--data', data], /BUNDLE_MISMATCH/);
    // a bundle this server did not build
    const foreign = join(dir, 'foreign.ferry');
    await buildBundle(w, foreign, { spec: { sequence: seq } });
    await refused(['server', 'bundle', 'import', foreign, '--data', data], /BUNDLE_MISMATCH/);
    // at the station
    const s = await ferry(['bundle', 'sign', out, '--key', join(w.keyDir, 'release.key')]);
    expect(s.code, s.stderr).toBe(0);
    expect((await ferry(['bundle', 'verify', out, '--trust', w.rootPath, '--site', 'plant-7'])).code).toBe(0);
    const imp = await ferry(['server', 'bundle', 'import', out, '--data', data, '--json']);
    expect(imp.code, imp.stderr).toBe(0);
    expect(JSON.parse(imp.stdout)).toMatchObject({
      bundle: { id: `plant-7-${seq}`, status: 'imported', signatures: 1 },
    });
    const audit = await ferry(['server', 'audit', 'verify', '--data', data, '--json']);
    expect(audit.code).toBe(0);
    const actions = (await readFile(join(data, 'audit/log.jsonl'), 'utf8')).match(/"action":"[a-z.-]+"/g);
    expect(actions).toEqual(
      expect.arrayContaining([
        '"action":"release.registered"',
        '"action":"bundle.built"',
        '"action":"bundle.imported"',
      ]),
    );
  });
});
