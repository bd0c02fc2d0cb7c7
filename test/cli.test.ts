import { execFileSync } from 'node:child_process';
import { chmod, copyFile, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildBundle, ferry, makeWorld, writeSpec, type World } from './helpers/fixtures.js';
import { haveProgram } from './helpers/system.js';

const HAVE_TAR = haveProgram('tar');

let w: World;
let specPath: string;
beforeAll(async () => {
  w = await makeWorld();
  specPath = await writeSpec(join(w.dir, 'src'));
});
afterAll(() => w.cleanup());

const json = (s: string) => JSON.parse(s) as Record<string, unknown>;

describe('ferry CLI: usage', () => {
  it('prints help with exit 0 and refuses bad usage with exit 2', async () => {
    expect((await ferry(['--help'])).code).toBe(0);
    const help = await ferry(['bundle', 'verify', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/--trust root.json/);
    const unknown = await ferry(['bundle', 'verify', 'x.ferry', '--frobnicate']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/USAGE/);
    const missing = await ferry(['bundle', 'verify', 'x.ferry', '--json']);
    expect(missing.code).toBe(2);
    expect(json(missing.stdout)).toMatchObject({ ok: false, code: 'USAGE' });
    expect((await ferry(['nonsense'])).code).toBe(2);
  });
});

describe('ferry keys and trust', () => {
  it('generates a 0600 private key and a public key, and never overwrites one', async () => {
    const dir = join(w.dir, 'k');
    const r = await ferry(['keys', 'generate', '--out', dir, '--name', 'ops', '--json']);
    expect(r.code).toBe(0);
    const out = json(r.stdout);
    expect(out.keyid).toMatch(/^[0-9a-f]{64}$/);
    expect((await stat(join(dir, 'ops.key'))).mode & 0o777).toBe(0o600);
    const before = await readFile(join(dir, 'ops.key'));
    const again = await ferry(['keys', 'generate', '--out', dir, '--name', 'ops']);
    expect(again.code).toBe(1);
    expect(await readFile(join(dir, 'ops.key'))).toEqual(before);
  });

  it('init and rotate a k-of-n root; a rotation without the old keys is refused and writes nothing', async () => {
    const d = join(w.dir, 'trust');
    for (const n of ['a', 'b', 'c', 'rel'])
      expect((await ferry(['keys', 'generate', '--out', d, '--name', n])).code).toBe(0);
    const startedAt = Math.floor(Date.now() / 1000) * 1000;
    const init = await ferry([
      'trust',
      'init',
      '--root-key',
      join(d, 'a.key'),
      '--root-key',
      join(d, 'b.key'),
      '--root-threshold',
      '2',
      '--bundle-key',
      join(d, 'rel.pub'),
      '--bundle-threshold',
      '1',
      '--expires',
      '30d',
      '--out',
      join(d, 'root.json'),
      '--json',
    ]);
    expect(init.code, init.stderr).toBe(0);
    expect(json(init.stdout)).toMatchObject({ version: 1, signatures: 2 });
    // the root carries its signed creation time: evidence of time for agents and mirrors
    const created = Date.parse(String(json(init.stdout).created));
    expect(created).toBeGreaterThanOrEqual(startedAt);
    expect(created).toBeLessThanOrEqual(Date.now());
    const refused = await ferry([
      'trust',
      'rotate',
      '--from',
      join(d, 'root.json'),
      '--sign-key',
      join(d, 'a.key'),
      '--sign-key',
      join(d, 'c.key'),
      '--root-key',
      join(d, 'c.pub'),
      '--root-threshold',
      '1',
      '--out',
      join(d, 'root2.json'),
    ]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/ROOT_SIGNATURE/);
    expect((await readdir(d)).includes('root2.json')).toBe(false);
    const rotated = await ferry([
      'trust',
      'rotate',
      '--from',
      join(d, 'root.json'),
      '--sign-key',
      join(d, 'a.key'),
      '--sign-key',
      join(d, 'b.key'),
      '--sign-key',
      join(d, 'c.key'),
      '--root-key',
      join(d, 'c.pub'),
      '--root-threshold',
      '1',
      '--out',
      join(d, 'root2.json'),
    ]);
    expect(rotated.code, rotated.stderr).toBe(0);
    expect(rotated.stdout).toMatch(/root v2/);
  });
});

describe('ferry bundle', () => {
  it('creates a bundle that GNU tar reads and ferry verifies, with a full JSON report', async () => {
    const out = join(w.dir, 'one.ferry');
    const c = await ferry([
      'bundle',
      'create',
      '--spec',
      specPath,
      '--key',
      join(w.keyDir, 'release.key'),
      '--out',
      out,
    ]);
    expect(c.code, c.stderr).toBe(0);
    if (HAVE_TAR) {
      const names = execFileSync('tar', ['tf', out], { encoding: 'utf8' }).trim().split('\n');
      expect(names[0]).toBe('manifest.dsse.json');
      expect(names.slice(1).every((n) => /^blobs\/sha256\/[0-9a-f]{64}$/.test(n))).toBe(true);
    }
    const v = await ferry(['bundle', 'verify', out, '--trust', w.rootPath, '--site', 'plant-7', '--json']);
    expect(v.code, v.stdout + v.stderr).toBe(0);
    const report = json(v.stdout);
    expect(report).toMatchObject({
      ok: true,
      verified: true,
      threshold: 1,
      sequence: 1,
      publisher: 'acme-ops',
      complete: true,
      missing: [],
    });
    expect(report.signers).toEqual([w.bundleKey.keyid]);
    const arts = report.artifacts as { name: string; sha256: string; inThisFile: boolean }[];
    const script = await readFile(join(w.dir, 'src/art/rotate-logs'));
    const { createHash } = await import('node:crypto');
    expect(arts.find((a) => a.name === 'rotate-logs')?.sha256).toBe(
      createHash('sha256').update(script).digest('hex'),
    );
    const inspect = await ferry(['bundle', 'inspect', out]);
    expect(inspect.code).toBe(0);
    expect(inspect.stdout).toMatch(/NOT verified/);
  });

  it('refuses a tampered copy with the reason, and leaves the original untouched', async () => {
    const out = join(w.dir, 'tamper.ferry');
    await buildBundle(w, out);
    const original = await readFile(out);
    const copy = join(w.dir, 'tampered.ferry');
    await copyFile(out, copy);
    const bytes = await readFile(copy);
    const at = bytes.indexOf(Buffer.alloc(64, 7)) + 1000; // a byte inside the agent binary's blob
    bytes.writeUInt8(bytes.readUInt8(at) ^ 0x01, at);
    await writeFile(copy, bytes);
    const v = await ferry(['bundle', 'verify', copy, '--trust', w.rootPath, '--json']);
    expect(v.code).toBe(1);
    expect(json(v.stdout)).toMatchObject({ ok: false, code: 'BLOB_DIGEST_MISMATCH' });
    const human = await ferry(['bundle', 'verify', copy, '--trust', w.rootPath]);
    expect(human.stderr.trim().split('\n')).toHaveLength(1);
    expect(human.stderr).toMatch(/^ferry: BLOB_DIGEST_MISMATCH: .*altered/);
    expect(await readFile(out)).toEqual(original);
  });

  it('refuses another site and an expired manifest', async () => {
    const out = join(w.dir, 'site.ferry');
    await buildBundle(w, out);
    const s = await ferry(['bundle', 'verify', out, '--trust', w.rootPath, '--site', 'ship-3', '--json']);
    expect(s.code).toBe(1);
    expect(json(s.stdout).code).toBe('SITE_MISMATCH');
    const old = join(w.dir, 'old.ferry');
    await buildBundle(w, old, { now: Date.now() - 10 * 86_400_000, spec: { expires: '1d' } });
    const e = await ferry(['bundle', 'verify', old, '--trust', w.rootPath, '--json']);
    expect(json(e.stdout)).toMatchObject({ ok: false, code: 'MANIFEST_EXPIRED' });
  });

  it('adds a second signature for a 2-of-2 bundle role, changing only the manifest entry', async () => {
    const d = join(w.dir, 'thr');
    const keys = ['root', 'rel1', 'rel2'];
    for (const n of keys) await ferry(['keys', 'generate', '--out', d, '--name', n]);
    const root = join(d, 'root.json');
    await ferry([
      'trust',
      'init',
      '--root-key',
      join(d, 'root.key'),
      '--bundle-key',
      join(d, 'rel1.pub'),
      '--bundle-key',
      join(d, 'rel2.pub'),
      '--bundle-threshold',
      '2',
      '--out',
      root,
    ]);
    const out = join(d, 'b.ferry');
    expect(
      (await ferry(['bundle', 'create', '--spec', specPath, '--key', join(d, 'rel1.key'), '--out', out]))
        .code,
    ).toBe(0);
    const one = await ferry(['bundle', 'verify', out, '--trust', root, '--json']);
    expect(json(one.stdout)).toMatchObject({ ok: false, code: 'SIGNATURE_THRESHOLD' });
    const before = await readFile(out);
    const signed = await ferry(['bundle', 'sign', out, '--key', join(d, 'rel2.key')]);
    expect(signed.code, signed.stderr).toBe(0);
    const after = await readFile(out);
    const tailLen = before.length - headLength(before);
    expect(after.subarray(after.length - tailLen)).toEqual(before.subarray(before.length - tailLen));
    const two = await ferry(['bundle', 'verify', out, '--trust', root, '--json']);
    expect(json(two.stdout)).toMatchObject({ ok: true, threshold: 2 });
    const dup = await ferry(['bundle', 'sign', out, '--key', join(d, 'rel2.key')]);
    expect(dup.code).toBe(1);
    expect(await readFile(out)).toEqual(after);
  });

  it('refuses a group-readable signing key and writes no bundle', async () => {
    const d = join(w.dir, 'perm');
    await ferry(['keys', 'generate', '--out', d, '--name', 'loose']);
    await chmod(join(d, 'loose.key'), 0o644);
    const out = join(d, 'never.ferry');
    const r = await ferry([
      'bundle',
      'create',
      '--spec',
      specPath,
      '--key',
      join(d, 'loose.key'),
      '--out',
      out,
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/KEY_PERMISSIONS/);
    expect(await readdir(d)).toEqual(['loose.key', 'loose.pub']);
  });

  it('splits into self-verifying volumes and writes deltas over a base', async () => {
    const big = [
      { name: 'a', kind: 'file' as const, content: Buffer.alloc(300_000, 1) },
      { name: 'b', kind: 'file' as const, content: Buffer.alloc(300_000, 2) },
      { name: 'c', kind: 'file' as const, content: Buffer.alloc(300_000, 3) },
    ];
    const spec = await writeSpec(join(w.dir, 'vol'), {}, big);
    const out = join(w.dir, 'vol', 'rel.ferry');
    const c = await ferry([
      'bundle',
      'create',
      '--spec',
      spec,
      '--key',
      join(w.keyDir, 'release.key'),
      '--out',
      out,
      '--volume-size',
      '700K',
      '--json',
    ]);
    expect(c.code, c.stdout + c.stderr).toBe(0);
    const vols = (json(c.stdout).volumes as { path: string }[]).map((v) => v.path);
    expect(vols.length).toBe(2);
    const held: string[] = [];
    for (const v of vols) {
      expect((await stat(v)).size).toBeLessThanOrEqual(700 * 1024);
      const r = json((await ferry(['bundle', 'verify', v, '--trust', w.rootPath, '--json'])).stdout);
      expect(r.ok).toBe(true);
      held.push(...(r.blobs as string[]));
    }
    expect(new Set(held).size).toBe(3);

    // delta: b and c unchanged, a changed, d new
    const next = [
      { ...big[0]!, content: Buffer.alloc(300_000, 9) },
      big[1]!,
      big[2]!,
      { name: 'd', kind: 'file' as const, content: 'new' },
    ];
    const spec2 = await writeSpec(join(w.dir, 'vol2'), { sequence: 2 }, next);
    const full = join(w.dir, 'vol', 'full.ferry');
    await ferry(['bundle', 'create', '--spec', spec, '--key', join(w.keyDir, 'release.key'), '--out', full]);
    const delta = join(w.dir, 'vol2', 'delta.ferry');
    const d = await ferry([
      'bundle',
      'create',
      '--spec',
      spec2,
      '--key',
      join(w.keyDir, 'release.key'),
      '--out',
      delta,
      '--base',
      full,
      '--json',
    ]);
    expect(d.code, d.stderr).toBe(0);
    expect((json(d.stdout).omitted as string[]).length).toBe(2);
    const r = json((await ferry(['bundle', 'verify', delta, '--trust', w.rootPath, '--json'])).stdout);
    expect(r).toMatchObject({ ok: true, complete: false, sequence: 2 });
    expect((r.blobs as string[]).length).toBe(2);
    expect((r.missing as string[]).length).toBe(2);
    expect((await stat(delta)).size).toBeLessThan(310_000);
  });

  it('carries a root rotation so a site pinned to v1 can verify a bundle signed under v2', async () => {
    const d = join(w.dir, 'rot');
    for (const n of ['newroot', 'newrel']) await ferry(['keys', 'generate', '--out', d, '--name', n]);
    const root2 = join(d, 'root2.json');
    const rot = await ferry([
      'trust',
      'rotate',
      '--from',
      w.rootPath,
      '--sign-key',
      join(w.keyDir, 'root.key'),
      '--sign-key',
      join(d, 'newroot.key'),
      '--root-key',
      join(d, 'newroot.pub'),
      '--bundle-key',
      join(d, 'newrel.pub'),
      '--out',
      root2,
    ]);
    expect(rot.code, rot.stderr).toBe(0);
    const withRoot = join(d, 'with-root.ferry');
    const without = join(d, 'without-root.ferry');
    await ferry([
      'bundle',
      'create',
      '--spec',
      specPath,
      '--key',
      join(d, 'newrel.key'),
      '--out',
      withRoot,
      '--root',
      root2,
    ]);
    await ferry(['bundle', 'create', '--spec', specPath, '--key', join(d, 'newrel.key'), '--out', without]);
    const ok = json((await ferry(['bundle', 'verify', withRoot, '--trust', w.rootPath, '--json'])).stdout);
    expect(ok).toMatchObject({ ok: true, rootVersion: 2, adoptedRoots: [2], rootEntries: [2] });
    const no = json((await ferry(['bundle', 'verify', without, '--trust', w.rootPath, '--json'])).stdout);
    expect(no).toMatchObject({ ok: false, code: 'SIGNATURE_THRESHOLD' });
    // the old release key no longer counts under root v2
    const oldKey = join(d, 'old-key.ferry');
    await ferry([
      'bundle',
      'create',
      '--spec',
      specPath,
      '--key',
      join(w.keyDir, 'release.key'),
      '--out',
      oldKey,
      '--root',
      root2,
    ]);
    expect(
      json((await ferry(['bundle', 'verify', oldKey, '--trust', w.rootPath, '--json'])).stdout).code,
    ).toBe('SIGNATURE_THRESHOLD');
  });
});

/** Length of the manifest entry (header + body + padding) at the start of a bundle. */
function headLength(b: Buffer): number {
  const size = parseInt(b.subarray(124, 136).toString('latin1').replace(/\0.*$/, ''), 8);
  return 512 + Math.ceil(size / 512) * 512;
}
