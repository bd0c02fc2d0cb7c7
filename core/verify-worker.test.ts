import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { nodeBackend } from './ed25519.js';
import { VerifyWorker } from './verify-worker.js';

const sodiumPath = createRequire(import.meta.url).resolve('sodium-native');
const inline = (pk: Uint8Array, m: Uint8Array, sig: Uint8Array) => nodeBackend.verify(pk, m, sig);

/** n signed messages of varied lengths (0 included); every third signature is spoiled. */
function cases(n: number) {
  return Array.from({ length: n }, (_, i) => {
    const seed = new Uint8Array(Buffer.alloc(32, (i % 7) + 1));
    const publicKey = nodeBackend.publicFromSeed(seed);
    const message = new Uint8Array(Buffer.alloc((i * 37) % 1500, i));
    const signature = nodeBackend.sign(seed, message);
    if (i % 3 === 0) signature[i % 64] = signature[i % 64]! ^ 1;
    return { publicKey, message, signature, expected: i % 3 !== 0 };
  });
}

describe('VerifyWorker', () => {
  it('answers each check in a batch of many (more than one message) correctly', async () => {
    const failures: Error[] = [];
    const w = new VerifyWorker(sodiumPath, inline, (e) => failures.push(e));
    try {
      const all = cases(700);
      const got = await Promise.all(all.map((c) => w.verify(c.publicKey, c.message, c.signature)));
      expect(got).toEqual(all.map((c) => c.expected));
      // later turns use the same worker
      const again = cases(5);
      for (const c of again) expect(await w.verify(c.publicKey, c.message, c.signature)).toBe(c.expected);
      expect(failures).toEqual([]);
    } finally {
      await w.close();
    }
  });

  it('a worker that cannot start: every check is still answered, inline, and the failure told once', async () => {
    const failures: Error[] = [];
    const w = new VerifyWorker('/nonexistent/sodium-native.js', inline, (e) => failures.push(e));
    try {
      const all = cases(50);
      const got = await Promise.all(all.map((c) => w.verify(c.publicKey, c.message, c.signature)));
      expect(got).toEqual(all.map((c) => c.expected));
      const late = cases(4);
      for (const c of late) expect(await w.verify(c.publicKey, c.message, c.signature)).toBe(c.expected);
      expect(failures).toHaveLength(1);
      expect(failures[0]!.message).toMatch(/Cannot find module|exited/);
    } finally {
      await w.close();
    }
  });

  it('close(): checks already handed over are answered, and later ones inline', async () => {
    const w = new VerifyWorker(sodiumPath, inline);
    const all = cases(30);
    const pending = all.map((c) => w.verify(c.publicKey, c.message, c.signature));
    await w.close();
    expect(await Promise.all(pending)).toEqual(all.map((c) => c.expected));
    const c = cases(2)[1]!;
    expect(await w.verify(c.publicKey, c.message, c.signature)).toBe(true);
  });

  it('keeps no process alive once nothing is in flight, used or idle (built, as the services run it)', () => {
    const mod = fileURLToPath(new URL('../dist/core/ed25519.js', import.meta.url));
    for (const use of [false, true]) {
      const script = [
        `import * as ed from ${JSON.stringify(mod)};`,
        `const r = await ed.useSodiumNative({ worker: true });`,
        `if (!r.ok || ed.backendName() !== 'sodium-native') throw new Error(JSON.stringify(r));`,
        use
          ? `console.log(await ed.verifyAsync(new Uint8Array(32), new Uint8Array(0), new Uint8Array(64)));`
          : '',
        `console.log('done');`,
      ].join('\n');
      // a file, as `ferry` is run: the hang this guards against did not show with `node -e`
      const dir = mkdtempSync(join(tmpdir(), 'ferry-verify-worker-'));
      const file = join(dir, 'exit.mjs');
      writeFileSync(file, script);
      const r = spawnSync(process.execPath, [file], {
        encoding: 'utf8',
        timeout: 15_000,
      });
      rmSync(dir, { recursive: true, force: true });
      expect({ status: r.status, signal: r.signal, out: r.stdout }).toEqual({
        status: 0,
        signal: null,
        out: use ? 'false\ndone\n' : 'done\n',
      });
    }
  });
});
