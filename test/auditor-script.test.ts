import { execFile } from 'node:child_process';
import { copyFile, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildBundle, makeKey, makeWorld, REPO, type World } from './helpers/fixtures.js';
import { haveProgram } from './helpers/system.js';

/** The auditor's guide promises a bundle can be checked with standard tools only; this runs that procedure. */
const SCRIPT = join(REPO, 'docs/verify-by-hand.sh');
const tools = ['bash', 'tar', 'jq', 'xxd', 'openssl', 'sha256sum'].every(haveProgram);
const run = promisify(execFile);

async function byHand(bundle: string, root: string, site?: string): Promise<{ code: number; out: string }> {
  try {
    const r = await run('bash', [SCRIPT, bundle, root, ...(site ? [site] : [])]);
    return { code: 0, out: r.stdout + r.stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, out: err.stdout + err.stderr };
  }
}

describe.runIf(tools)('verifying a bundle by hand (docs/verify-by-hand.sh)', () => {
  let w: World;
  let good: string;
  beforeAll(async () => {
    w = await makeWorld();
    good = join(w.dir, 'good.ferry');
    await buildBundle(w, good);
  });
  afterAll(() => w.cleanup());

  it('accepts what ferry accepts', async () => {
    const r = await byHand(good, w.rootPath, 'plant-7');
    expect(r.out).toMatch(/^OK: 1 of 1 bundle signature/m);
    expect(r.code).toBe(0);
  });

  it('refuses a flipped byte, a wrong site and a stranger signature', async () => {
    const bad = join(w.dir, 'bad.ferry');
    await copyFile(good, bad);
    const bytes = await readFile(bad);
    const at = bytes.indexOf(Buffer.alloc(64, 7)) + 100;
    bytes.writeUInt8(bytes.readUInt8(at) ^ 0x80, at);
    await writeFile(bad, bytes);
    expect(await byHand(bad, w.rootPath)).toMatchObject({
      code: 1,
      out: expect.stringMatching(/does not match its digest/) as string,
    });
    expect(await byHand(good, w.rootPath, 'ship-3')).toMatchObject({
      code: 1,
      out: expect.stringMatching(/not for site/) as string,
    });
    const stranger = await makeKey(join(w.dir, 'k2'), 'stranger');
    const forged = join(w.dir, 'forged.ferry');
    await buildBundle(w, forged, { signers: [stranger] });
    expect(await byHand(forged, w.rootPath)).toMatchObject({
      code: 1,
      out: expect.stringMatching(/signed by 0 bundle key/) as string,
    });
  });
});
