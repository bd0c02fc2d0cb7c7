/**
 * Managed files against real files in a temp root: missing, content drift and
 * mode drift are detected; with enforce they are restored atomically, without
 * it they are only reported; every refusal leaves the disk as it was.
 */
import { createHash } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readFile, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { checkFile, placeFile, placementKey, reconcileFiles, type BlobRef } from '../agent/files.js';
import type { FileEntry } from '../core/policy.js';

let root: string;
let blobs: string;
let etc: string;
const GOOD = 'listen = 8080\n';
const sha = (s: string | Buffer) => createHash('sha256').update(s).digest('hex');
let blob: BlobRef;

/** Every file under `dir` with its bytes and mode, to prove nothing moved. */
async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    const p = join(e.parentPath, e.name);
    const st = await stat(p).catch(() => undefined);
    out[p] =
      e.isFile() && st
        ? `${(st.mode & 0o7777).toString(8)} ${sha(await readFile(p))}`
        : e.isDirectory()
          ? 'dir'
          : 'other';
  }
  return out;
}

const modeOf = async (p: string) => (await stat(p)).mode & 0o7777;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'ferry-files-'));
  blobs = join(root, 'blobs');
  await mkdir(blobs);
  const blobPath = join(blobs, sha(GOOD));
  await writeFile(blobPath, GOOD);
  blob = { path: blobPath, sha256: sha(GOOD) };
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});
beforeEach(async () => {
  etc = await mkdtemp(join(root, 'etc-'));
});

const spec = (name: string, over: Partial<FileEntry> = {}): FileEntry => ({
  path: join(etc, name),
  artifact: 'app-conf',
  mode: '0640',
  enforce: true,
  ...over,
});

describe('checkFile', () => {
  it('reports ok, missing, drift and mode', async () => {
    const s = spec('app.conf');
    expect(await checkFile(s, blob.sha256)).toBe('missing');
    await writeFile(s.path, GOOD, { mode: 0o640 });
    await chmod(s.path, 0o640);
    expect(await checkFile(s, blob.sha256)).toBe('ok');
    await chmod(s.path, 0o666);
    expect(await checkFile(s, blob.sha256)).toBe('mode');
    await writeFile(s.path, 'listen = 0.0.0.0:22\n');
    expect(await checkFile(s, blob.sha256)).toBe('drift');
    await rm(s.path);
    await symlink(blob.path, s.path); // right bytes behind a symlink are still drift
    expect(await checkFile(s, blob.sha256)).toBe('drift');
  });
});

describe('placeFile', () => {
  it('creates parent dirs 0755 and writes the bytes with the spec mode, leaving no temp files', async () => {
    const s = spec('deep/er/app.conf', { mode: '0600' });
    await placeFile(s, blob.path, blob.sha256);
    expect(await readFile(s.path, 'utf8')).toBe(GOOD);
    expect(await modeOf(s.path)).toBe(0o600);
    expect(await modeOf(join(etc, 'deep'))).toBe(0o755);
    expect(await readdir(join(etc, 'deep/er'))).toEqual(['app.conf']);
  });

  it('replaces a symlink rather than writing through it', async () => {
    const victim = join(root, 'victim');
    await writeFile(victim, 'untouched\n');
    const s = spec('link.conf');
    await symlink(victim, s.path);
    await placeFile(s, blob.path, blob.sha256);
    expect(await readFile(victim, 'utf8')).toBe('untouched\n');
    expect(await checkFile(s, blob.sha256)).toBe('ok');
  });

  it('refuses a blob whose digest does not match; the old file and the directory are unchanged', async () => {
    const s = spec('app.conf');
    await writeFile(s.path, 'old\n', { mode: 0o644 });
    const before = await snapshot(etc);
    await expect(placeFile(s, blob.path, 'f'.repeat(64))).rejects.toMatchObject({
      code: 'FILE_BLOB_MISMATCH',
    });
    expect(await snapshot(etc)).toEqual(before);
  });

  it('refuses paths a policy may not name, before touching anything', async () => {
    const before = await snapshot(etc);
    for (const path of [`${etc}/../x/../y`, `${etc}/./y`, 'relative/app.conf', '/proc/self/x', `${etc}/`]) {
      await expect(placeFile(spec('x', { path }), blob.path)).rejects.toMatchObject({
        code: 'FILE_PATH_REFUSED',
      });
    }
    expect(await snapshot(etc)).toEqual(before);
    expect(await readdir(root)).toEqual(expect.not.arrayContaining(['y', 'x']));
  });

  it('refuses an unknown owner without writing', async () => {
    const s = spec('owned.conf', { owner: 'no-such-user-ferry' });
    await expect(placeFile(s, blob.path, blob.sha256)).rejects.toMatchObject({ code: 'FILE_OWNER_UNKNOWN' });
    expect(await readdir(etc)).toEqual([]);
  });

  it('applies numeric owner and group', async () => {
    const s = spec('owned.conf', { owner: '0', group: '0' });
    await placeFile(s, blob.path, blob.sha256);
    const st = await stat(s.path);
    expect([st.uid, st.gid]).toEqual([0, 0]);
    expect(st.mode & 0o7777).toBe(0o640);
  });
});

describe('reconcileFiles', () => {
  async function world() {
    const files = {
      ok: spec('ok.conf'),
      drift: spec('drift.conf'),
      mode: spec('mode.conf'),
      missing: spec('sub/missing.conf'),
      lax: spec('lax.conf', { enforce: false }),
      noblob: spec('noblob.conf', { artifact: 'elsewhere' }),
    };
    await writeFile(files.ok.path, GOOD, { mode: 0o640 });
    await chmod(files.ok.path, 0o640);
    await writeFile(files.drift.path, 'tampered\n', { mode: 0o640 });
    await chmod(files.drift.path, 0o640);
    await writeFile(files.mode.path, GOOD);
    await chmod(files.mode.path, 0o666);
    await writeFile(files.lax.path, 'local edit\n');
    return files;
  }
  const blobsMap = () => new Map([['app-conf', blob]]);

  it('restores drifted, mode-drifted and missing files where enforce is true', async () => {
    const f = await world();
    const report = await reconcileFiles(Object.values(f), blobsMap(), { enforce: true });
    expect(report.map((r) => [r.path, r.status, r.action])).toEqual([
      [f.ok.path, 'ok', 'none'],
      [f.drift.path, 'drift', 'restored'],
      [f.mode.path, 'mode', 'restored'],
      [f.missing.path, 'missing', 'restored'],
      [f.lax.path, 'drift', 'reported'],
      [f.noblob.path, 'no-blob', 'none'],
    ]);
    for (const s of [f.ok, f.drift, f.mode, f.missing]) expect(await checkFile(s, blob.sha256)).toBe('ok');
    expect(await readFile(f.lax.path, 'utf8')).toBe('local edit\n');
    await expect(stat(f.noblob.path)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('only reports when the node-wide enforce is off: nothing on disk changes', async () => {
    const f = await world();
    const before = await snapshot(etc);
    const report = await reconcileFiles(Object.values(f), blobsMap(), { enforce: false });
    expect(report.map((r) => [r.status, r.action])).toEqual([
      ['ok', 'none'],
      ['drift', 'reported'],
      ['mode', 'reported'],
      ['missing', 'reported'],
      ['drift', 'reported'],
      ['no-blob', 'none'],
    ]);
    expect(await snapshot(etc)).toEqual(before);
  });

  it('places a non-enforced file once; after that its drift or removal is only reported', async () => {
    const f = await world();
    const lax = { ...f.lax, path: join(etc, 'lax-new.conf') };
    const placed = new Set<string>();
    const first = await reconcileFiles([lax], blobsMap(), { enforce: true, placedBefore: placed });
    expect(first.map((r) => [r.status, r.action])).toEqual([['missing', 'placed']]);
    expect(await checkFile(lax, blob.sha256)).toBe('ok');
    placed.add(placementKey(lax.path, blob.sha256));
    await writeFile(lax.path, 'operator edit\n');
    const drifted = await reconcileFiles([lax], blobsMap(), { enforce: true, placedBefore: placed });
    expect(drifted.map((r) => [r.status, r.action])).toEqual([['drift', 'reported']]);
    expect(await readFile(lax.path, 'utf8')).toBe('operator edit\n');
    await rm(lax.path);
    const removed = await reconcileFiles([lax], blobsMap(), { enforce: true, placedBefore: placed });
    expect(removed.map((r) => [r.status, r.action])).toEqual([['missing', 'reported']]);
    await expect(stat(lax.path)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('a failing restore is reported and does not stop the others', async () => {
    const f = await world();
    const bad = new Map([['app-conf', { path: blob.path, sha256: 'e'.repeat(64) }]]);
    const before = await readFile(f.drift.path, 'utf8');
    const report = await reconcileFiles([f.drift, f.missing], bad, { enforce: true });
    // with the wrong expected digest every file looks drifted; the restore refuses the blob
    expect(report.map((r) => [r.action, r.error?.code])).toEqual([
      ['failed', 'FILE_BLOB_MISMATCH'],
      ['failed', 'FILE_BLOB_MISMATCH'],
    ]);
    expect(await readFile(f.drift.path, 'utf8')).toBe(before);
    await expect(stat(f.missing.path)).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(stat(join(etc, 'sub'))).rejects.toMatchObject({ code: 'ENOENT' }); // no parent dir either
  });
});
