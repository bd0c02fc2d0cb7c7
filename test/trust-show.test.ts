/**
 * `ferry trust show root.json`: the fingerprint an operator hands out is the SHA-256 of the root file's
 * exact bytes, the same value `openssl dgst -sha256` (which install.sh uses) prints for the file.
 */
import { execFileSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ferry } from './helpers/fixtures.js';
import { useWorld } from './helpers/world.js';

const w = useWorld();

function opensslSha256(path: string): string {
  const out = execFileSync('openssl', ['dgst', '-sha256', '-r', path], { encoding: 'utf8' });
  return out.slice(0, 64);
}

describe('ferry trust show', () => {
  it('prints the sha256 of the exact root file bytes, as openssl computes it', async () => {
    const r = await ferry(['trust', 'show', w.rootPath]);
    expect(r.code).toBe(0);
    const fp = opensslSha256(w.rootPath);
    expect(r.stdout.split('\n')[0]).toBe(`root-sha256 ${fp}`);
    const j = await ferry(['trust', 'show', w.rootPath, '--json']);
    expect(j.code).toBe(0);
    const out = JSON.parse(j.stdout) as Record<string, unknown>;
    expect(out).toMatchObject({ ok: true, fingerprint: fp, version: 1 });
    expect(out.roles).toMatchObject({ root: { threshold: 1 }, bundle: { threshold: 1 } });
  });

  it('the same root re-serialised (other whitespace) has another fingerprint: bytes, not meaning', async () => {
    const spaced = join(w.dir, 'spaced.root.json');
    await writeFile(spaced, JSON.stringify(JSON.parse(await readFile(w.rootPath, 'utf8')), null, 2));
    const a = await ferry(['trust', 'show', w.rootPath, '--json']);
    const b = await ferry(['trust', 'show', spaced, '--json']);
    expect(b.code).toBe(0); // still a valid root
    const fa = (JSON.parse(a.stdout) as { fingerprint: string }).fingerprint;
    const fb = (JSON.parse(b.stdout) as { fingerprint: string }).fingerprint;
    expect(fb).not.toBe(fa);
    expect(fb).toBe(opensslSha256(spaced));
  });

  it('refuses a root whose signature does not verify, and prints no fingerprint for it', async () => {
    const env = JSON.parse(await readFile(w.rootPath, 'utf8')) as { payload: string };
    const payload = JSON.parse(Buffer.from(env.payload, 'base64').toString('utf8')) as { version: number };
    payload.version = 7; // changed after signing
    env.payload = Buffer.from(JSON.stringify(payload)).toString('base64');
    const forged = join(w.dir, 'forged.root.json');
    await writeFile(forged, JSON.stringify(env));
    const r = await ferry(['trust', 'show', forged, '--json']);
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: false, code: 'ROOT_SIGNATURE' });
    expect(r.stdout).not.toContain(opensslSha256(forged));
  });

  it('is a usage error without a file (exit 2)', async () => {
    expect((await ferry(['trust', 'show'])).code).toBe(2);
  });
});
