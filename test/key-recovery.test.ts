/**
 * Recovery after a bundle-key compromise, every step a real `ferry` process:
 * keys, roots and bundles made with the CLI, `ferry mirror import` into a data
 * dir served by `ferry mirror serve`, and `ferry agent poll --now` against it.
 *
 * The story: key K signs a bundle at sequence 2^53-1, the highest there is, so
 * no honest bundle could ever follow it, and dated 400 days ahead, so by the
 * signed time it vouches for the trust root itself has expired. The root owner rotates the root to a
 * bundle role without K and ships it inside the next honest bundle (sequence 1,
 * signed by L). The mark K set stops binding, and the time it vouched for with
 * it; what K alone signed stops being served, and the honest bundle is
 * accepted, served and applied.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createBundle } from '../bundler/create.js';
import { resolveSpec } from '../bundler/spec.js';
import { loadPrivateKey } from '../platform/keyfile.js';
import { ferry, storeView, type RunResult } from './helpers/fixtures.js';
import { startMirrorProc, type MirrorProc } from './helpers/mirror-proc.js';
import { useWorld } from './helpers/world.js';

const w = useWorld();
const MAX = Number.MAX_SAFE_INTEGER; // 2^53-1
const DAY = 86_400_000;

const ok = (r: RunResult, what: string): RunResult => {
  if (r.code !== 0) throw new Error(`${what} failed (${r.code}): ${r.stdout}${r.stderr}`);
  return r;
};
const json = <T>(r: RunResult) => JSON.parse(r.stdout) as T;

interface Dirs {
  dir: string;
  keys: string;
  data: string;
  agent: string;
}

async function setup(name: string): Promise<Dirs> {
  const dir = join(w.dir, name);
  const d = { dir, keys: join(dir, 'keys'), data: join(dir, 'mirror'), agent: join(dir, 'agent') };
  await mkdir(d.keys, { recursive: true });
  for (const k of ['root', 'K', 'L'])
    ok(await ferry(['keys', 'generate', '--out', d.keys, '--name', k]), `keys generate ${k}`);
  return d;
}

let n = 0;
/** `ferry bundle create` of a spec at `sequence` holding `files` (name → content); returns the volume paths. */
async function bundle(
  d: Dirs,
  sequence: number,
  key: string,
  files: Record<string, string | Buffer>,
  extra: string[] = [],
): Promise<string[]> {
  const at = join(d.dir, `spec-${++n}`);
  await mkdir(at, { recursive: true });
  const artifacts = [];
  for (const [name, content] of Object.entries(files)) {
    await writeFile(join(at, name), content);
    artifacts.push({ name, kind: 'file', version: '1', path: name });
  }
  const spec = { publisher: 'acme-ops', sequence, expires: '30d', sites: ['plant-7'], artifacts };
  await writeFile(join(at, 'spec.json'), JSON.stringify(spec));
  const out = join(d.dir, `b${n}-s${sequence}.ferry`);
  const r = ok(
    await ferry([
      'bundle',
      'create',
      '--spec',
      join(at, 'spec.json'),
      '--key',
      join(d.keys, `${key}.key`),
      '--out',
      out,
      '--json',
      ...extra,
    ]),
    `bundle create s${sequence}`,
  );
  return json<{ volumes: { path: string }[] }>(r).volumes.map((v) => v.path);
}

/** A bundle made as if `ahead` ms from now (its signed `created`), through the library: the CLI stamps the real time. */
async function futureBundle(d: Dirs, sequence: number, key: string, ahead: number): Promise<string> {
  const at = join(d.dir, `spec-${++n}`);
  await mkdir(at, { recursive: true });
  await writeFile(join(at, 'payload'), 'compromised\n');
  const spec = await resolveSpec(
    {
      publisher: 'acme-ops',
      sequence,
      expires: '30d',
      sites: ['plant-7'],
      artifacts: [{ name: 'payload', kind: 'file', version: '1', path: 'payload' }],
    },
    at,
    Date.now() + ahead,
  );
  const out = join(d.dir, `b${n}-s${sequence}-future.ferry`);
  const r = await createBundle(spec, out, { signers: [await loadPrivateKey(join(d.keys, `${key}.key`))] });
  return r.volumes[0]!.path;
}

interface ImportOut {
  ok: boolean;
  results: {
    ok: boolean;
    code?: string;
    message?: string;
    sequence?: number;
    status?: string;
    revoked?: { sequence: number }[];
    adoptedRoots?: number[];
  }[];
}
const mirrorImport = async (d: Dirs, file: string, root?: string) =>
  json<ImportOut>(
    await ferry([
      'mirror',
      'import',
      file,
      '--data',
      d.data,
      ...(root ? ['--trust', root, '--site', 'plant-7'] : []),
      '--json',
    ]),
  ).results[0]!;

interface PollOut {
  ok: boolean;
  code?: string;
  sync: { kind: string; sequence?: number };
  sequence: number | null;
}
const poll = async (d: Dirs, m: MirrorProc, root: string) => {
  const r = await ferry([
    'agent',
    'poll',
    '--now',
    '--state',
    d.agent,
    '--mirror',
    m.url,
    '--trust',
    root,
    '--site',
    'plant-7',
    '--json',
  ]);
  return { exit: r.code, ...json<PollOut>(r) };
};

/**
 * What the serving mirror answers once it has seen the last change: another process's import shows
 * within the view's recheck interval (mirror/snapshot.ts, 250 ms), so a changed answer is awaited.
 */
async function served(
  m: MirrorProc,
  want?: { status: number; sequence?: number; code?: string },
): Promise<{ status: number; sequence?: number; code?: string }> {
  for (let i = 0; ; i++) {
    const got = await servedNow(m);
    if (!want || JSON.stringify(got) === JSON.stringify(want) || i >= 40) return got;
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function servedNow(m: MirrorProc): Promise<{ status: number; sequence?: number; code?: string }> {
  const res = await fetch(`${m.url}/v1/manifest`);
  const body = (await res.json()) as { payload?: string; code?: string };
  if (res.status !== 200) return { status: res.status, ...(body.code && { code: body.code }) };
  const payload = JSON.parse(Buffer.from(body.payload!, 'base64').toString('utf8')) as { sequence: number };
  return { status: 200, sequence: payload.sequence };
}

describe('recovery after a bundle-key compromise', () => {
  it('a root without K unbinds the 2^53-1 mark K set: the honest bundle at sequence 1 is accepted, served and applied', async () => {
    const d = await setup('recovery');
    const root1 = join(d.dir, 'root1.json');
    const root2 = join(d.dir, 'root2.json');
    ok(
      await ferry([
        'trust',
        'init',
        '--root-key',
        join(d.keys, 'root.key'),
        '--bundle-key',
        join(d.keys, 'K.pub'),
        '--expires',
        '365d',
        '--out',
        root1,
      ]),
      'trust init',
    );

    // K, stolen, signs the highest sequence there is, created 400 days from now (past root v1's expiry);
    // mirror and agent take it as the real thing would be taken
    const evil = await futureBundle(d, MAX, 'K', 400 * DAY);
    expect(await mirrorImport(d, evil, root1)).toMatchObject({ ok: true, sequence: MAX, status: 'active' });
    const mirror = await startMirrorProc({ data: d.data, openEnrolment: true });
    expect(await served(mirror, { status: 200, sequence: MAX })).toEqual({ status: 200, sequence: MAX });
    expect(await poll(d, mirror, root1)).toMatchObject({ exit: 0, sync: { kind: 'updated' }, sequence: MAX });

    // without a new root, the site is stranded: by the signed time K vouched for, root v1 has expired
    // (and sequence 1 would be a rollback anyway); the refusal changes nothing
    const [stuck] = await bundle(d, 1, 'K', { payload: 'honest but stuck\n' });
    const before = await storeView(d.data);
    expect(await mirrorImport(d, stuck!)).toMatchObject({ ok: false, code: 'ROOT_EXPIRED' });
    expect(await storeView(d.data)).toEqual(before);
    expect(await poll(d, mirror, root1)).toMatchObject({ exit: 1, code: 'ROOT_EXPIRED', sequence: MAX });

    // the root owner rotates K out (L in) and ships root v2 in the honest bundle, in two volumes
    ok(
      await ferry([
        'trust',
        'rotate',
        '--from',
        root1,
        '--sign-key',
        join(d.keys, 'root.key'),
        '--bundle-key',
        join(d.keys, 'L.pub'),
        '--out',
        root2,
      ]),
      'trust rotate',
    );
    const honest = await bundle(
      d,
      1,
      'L',
      { one: Buffer.alloc(40_000, 'one'), two: Buffer.alloc(40_000, 'two') },
      ['--root', root2, '--volume-size', '60K'],
    );
    expect(honest).toHaveLength(2);

    // first volume: root v2 adopted, K's manifest retired and no longer served, the honest one waits for blobs
    expect(await mirrorImport(d, honest[0]!)).toMatchObject({
      ok: true,
      sequence: 1,
      status: 'pending',
      adoptedRoots: [2],
      revoked: [{ sequence: MAX }],
    });
    expect(await served(mirror, { status: 404, code: 'NO_ACTIVE_MANIFEST' })).toEqual({
      status: 404,
      code: 'NO_ACTIVE_MANIFEST',
    });
    // the agent adopts v2 and stops applying what K alone signed
    expect(await poll(d, mirror, root1)).toMatchObject({ exit: 0, sequence: null });
    const agentState = JSON.parse(await readFile(join(d.agent, 'state.json'), 'utf8')) as {
      active: unknown;
      roots: string[];
    };
    expect(agentState.active).toBeNull();
    expect(agentState.roots).toHaveLength(2);

    // second volume: the honest manifest at sequence 1 is active, served and applied
    expect(await mirrorImport(d, honest[1]!)).toMatchObject({ ok: true, sequence: 1, status: 'active' });
    expect(await served(mirror, { status: 200, sequence: 1 })).toEqual({ status: 200, sequence: 1 });
    expect(await poll(d, mirror, root1)).toMatchObject({ exit: 0, sync: { kind: 'updated' }, sequence: 1 });

    // K, still in the attacker's hands, signs nothing the site takes any more
    const [again] = await bundle(d, MAX, 'K', { payload: 'compromised again\n' });
    const held = await storeView(d.data);
    expect(await mirrorImport(d, again!)).toMatchObject({ ok: false, code: 'SIGNATURE_THRESHOLD' });
    expect(await storeView(d.data)).toEqual(held);
    await new Promise((r) => setTimeout(r, 400)); // past the view's recheck: a change would show
    expect(await served(mirror)).toEqual({ status: 200, sequence: 1 });
    expect(await poll(d, mirror, root1)).toMatchObject({ exit: 0, sync: { kind: 'unchanged' }, sequence: 1 });

    // and the new mark binds as any other: a lower sequence than the honest one is still a rollback
    const [two] = await bundle(d, 2, 'L', { payload: 'release 2\n' });
    expect(await mirrorImport(d, two!)).toMatchObject({ ok: true, sequence: 2, status: 'active' });
    const [back] = await bundle(d, 1, 'L', { payload: 'another one\n' });
    expect(await mirrorImport(d, back!)).toMatchObject({ ok: false, code: 'SEQUENCE_ROLLBACK' });
    await mirror.stop();
  });
});
