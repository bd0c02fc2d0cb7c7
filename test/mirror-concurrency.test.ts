/**
 * Imports from several processes into one data directory: the lock file, not
 * the in-process queue, is what keeps them apart. The mirror is compiled once
 * into a temp dir so that child processes can run it with plain node.
 */
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { importBundle, type ImportResult } from '../mirror/import.js';
import { Store } from '../mirror/store.js';
import { buildBundle, makeWorld, REPO, type ArtifactInput, type World } from './helpers/fixtures.js';

const run = promisify(execFile);
let w: World;
let build: string;
let rootBytes: Buffer;

beforeAll(async () => {
  w = await makeWorld();
  rootBytes = await readFile(w.rootPath);
  build = join(w.dir, 'build');
  await run(process.execPath, [
    join(REPO, 'node_modules/typescript/bin/tsc'),
    '-p',
    join(REPO, 'tsconfig.build.json'),
    '--outDir',
    build,
  ]);
  await writeFile(join(build, 'package.json'), '{"type":"module"}\n');
  await symlink(join(REPO, 'node_modules'), join(build, 'node_modules'));
  await writeFile(
    join(build, 'import-child.js'),
    `import { Store } from './mirror/store.js';
import { importBundle } from './mirror/import.js';
const [dir, ...files] = process.argv.slice(2);
const store = await Store.open(dir);
const out = [];
for (const f of files) out.push(await importBundle(store, f));
process.stdout.write(JSON.stringify(out));
`,
  );
}, 120_000);
afterAll(() => w.cleanup());

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const arts = (tag: string): ArtifactInput[] =>
  [0, 1, 2].map((i) => ({ name: `a${i}`, kind: 'file', content: Buffer.alloc(20_000, `${tag}:${i};`) }));

async function bundles(seqs: number[], volumeSize?: number): Promise<string[]> {
  const out: string[] = [];
  for (const s of seqs) {
    const r = await buildBundle(w, join(w.dir, `p${s}.ferry`), {
      artifacts: arts(`p${s}`),
      spec: { sequence: s },
      ...(volumeSize !== undefined && { volumeSize }),
    });
    out.push(...r.volumes.map((v) => v.path));
  }
  return out;
}

function child(dir: string, files: string[]): Promise<ImportResult[]> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [join(build, 'import-child.js'), dir, ...files], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', reject);
    p.on('close', (code) =>
      code === 0 ? resolve(JSON.parse(out) as ImportResult[]) : reject(new Error(err)),
    );
  });
}

async function newStore(lockTimeoutMs?: number): Promise<Store> {
  const dir = join(w.dir, `data-${Math.random().toString(16).slice(2)}`);
  return Store.open(dir, {
    init: { rootBytes, site: 'plant-7' },
    ...(lockTimeoutMs !== undefined && { lock: { timeoutMs: lockTimeoutMs } }),
  });
}

async function expectConsistent(store: Store): Promise<void> {
  for (const name of await readdir(store.paths.blobs))
    expect(sha256(await readFile(store.blobPath(name)))).toBe(name);
  expect(await readdir(store.paths.tmp)).toEqual([]);
  expect((await readdir(store.dir)).filter((f) => f.startsWith('lock'))).toEqual([]);
  const s = await store.readState();
  expect(s.active).not.toBeNull();
  expect(sha256(await store.readManifestBytes(s.active!))).toBe(s.active!.digest);
  expect(await store.missingBlobs(s.active!)).toEqual([]);
}

describe('mirror store across processes', () => {
  it('two processes and this one importing at once end in one consistent state', async () => {
    const store = await newStore();
    const [b1, b2, b3, b4, b5, b6] = await bundles([1, 2, 3, 4, 5, 6]);
    const vols = await bundles([7], 30_000);
    expect(vols).toHaveLength(3);
    const results = (
      await Promise.all([
        child(store.dir, [b1!, b4!, vols[0]!, b5!]),
        child(store.dir, [b2!, vols[1]!, b3!]),
        (async () => [await importBundle(store, b6!), await importBundle(store, vols[2]!)])(),
      ])
    ).flat();
    expect(results).toHaveLength(9);
    for (const r of results) expect(r.ok || r.code === 'SEQUENCE_ROLLBACK').toBe(true);
    const s = await store.readState();
    expect(s.active?.sequence).toBe(7);
    expect(s.pending).toEqual([]);
    expect(s.imports.length + s.quarantine.length).toBe(9);
    await expectConsistent(store);
  });

  it('waits for a live holder, gives up with STORE_LOCKED, and takes over once the holder is gone', async () => {
    const store = await newStore(300);
    const [file] = await bundles([1]);
    const holder = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)'], { stdio: 'ignore' });
    const pid = holder.pid!;
    const gone = new Promise((r) => holder.on('exit', r));
    try {
      await writeFile(store.paths.lock, JSON.stringify({ pid, host: 'h', token: 'held', at: 'then' }));
      const before = await readFile(store.paths.state);
      await expect(importBundle(store, file!)).rejects.toMatchObject({ code: 'STORE_LOCKED' });
      expect(await readFile(store.paths.state)).toEqual(before);
      expect(await readdir(store.paths.tmp)).toEqual([]);
    } finally {
      process.kill(pid);
      await gone;
    }
    expect(await importBundle(store, file!)).toMatchObject({ ok: true, status: 'active' });
    await expectConsistent(store);
  });

  it('takes over a lock left by a dead process or holding garbage', async () => {
    const store = await newStore(5_000);
    const [f1, f2] = await bundles([11, 12]);
    const dead = spawn(process.execPath, ['-e', '0'], { stdio: 'ignore' });
    const deadPid = dead.pid!;
    await new Promise((r) => dead.on('exit', r));
    await writeFile(
      store.paths.lock,
      JSON.stringify({ pid: deadPid, host: 'h', token: 'stale', at: 'then' }),
    );
    expect(await importBundle(store, f1!)).toMatchObject({ ok: true });
    await writeFile(store.paths.lock, 'not json');
    expect(await importBundle(store, f2!)).toMatchObject({ ok: true, sequence: 12 });
    await expectConsistent(store);
  });
});
