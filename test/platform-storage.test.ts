/**
 * A full disk against the real thing: small tmpfs mounts (root needed; see
 * test/helpers/tmpfs.ts), a real node:http source on loopback. The verified
 * blob download refuses before its first byte when the blob and the reserve do
 * not fit, and when the disk fills under it anyway it removes its partial file
 * so the space comes back. The data-directory lock leaves no empty candidate.
 */
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { fetchVerifiedBlob, freeBytes, StorageFullError } from '../platform/http/client.js';
import { acquireLock } from '../platform/lock.js';
import { snapshotDir } from './helpers/fixtures.js';
import { fillDisk, mountTmpfs, tmpfsUnavailable, umount } from './helpers/tmpfs.js';

const noTmpfs = tmpfsUnavailable('the full-disk tests of the downloader and the lock');
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const MiB = 1024 * 1024;

let root: string;
let server: Server;
let base: string;
const requests: string[] = [];
/** When set, a blob answer sends its first MiB and then waits for this before the rest. */
let gate: Promise<void> | undefined;
const blobs = new Map<string, Buffer>();
const mounts: string[] = [];

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'ferry-storage-'));
  server = createServer((req, res) => {
    requests.push(req.url ?? '');
    const body = blobs.get((req.url ?? '').replace('/v1/blobs/sha256/', ''));
    if (!body) return void res.writeHead(404).end();
    res.writeHead(200, { 'content-length': body.length });
    if (!gate) return void res.end(body);
    const wait = gate;
    res.write(body.subarray(0, MiB), () => void wait.then(() => res.end(body.subarray(MiB))));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterEach(() => {
  for (const m of mounts.splice(0)) umount(m);
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
  await rm(root, { recursive: true, force: true });
});

async function tmpfs(name: string, size: string): Promise<string> {
  const d = join(root, name);
  await mkdir(d);
  mountTmpfs(d, size);
  mounts.push(d);
  return d;
}

function serve(bytes: Buffer): string {
  const hex = sha256(bytes);
  blobs.set(hex, bytes);
  return hex;
}

async function storageError(p: Promise<unknown>): Promise<StorageFullError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(StorageFullError);
  expect((e as StorageFullError).code).toBe('STORAGE_FULL');
  return e as StorageFullError;
}

describe.skipIf(noTmpfs !== undefined)('a full disk', () => {
  it('refuses a blob that does not fit with its reserve before asking any source, changing nothing', async () => {
    const disk = await tmpfs('small', '8m');
    await mkdir(join(disk, 'tmp'));
    const big = randomBytes(6 * MiB);
    const hex = serve(big);
    const before = await snapshotDir(disk);
    const asked = requests.length;
    const e = await storageError(
      fetchVerifiedBlob({
        sha256: hex,
        size: big.length,
        destDir: join(disk, 'blobs'),
        tmpDir: join(disk, 'tmp'),
        mirrors: [base],
        limits: { reserveBytes: 4 * MiB }, // 6 + 4 > 8
      }),
    );
    expect(e.message).toMatch(/^no room for sha256:[0-9a-f]{16}… \(6291456 bytes\): needs 6\.0 MiB/);
    expect(e.needBytes).toBe(10 * MiB);
    expect(e.freeBytes).toBeLessThanOrEqual(8 * MiB);
    expect(requests.length).toBe(asked); // no source was asked for a byte
    expect(await snapshotDir(disk)).toEqual(before);

    // the same blob with a reserve that fits is fetched
    const r = await fetchVerifiedBlob({
      sha256: hex,
      size: big.length,
      destDir: join(disk, 'blobs'),
      tmpDir: join(disk, 'tmp'),
      mirrors: [base],
      limits: { reserveBytes: 256 * 1024 },
    });
    expect(sha256(await readFile(r.path))).toBe(hex);
  });

  it('when the disk fills during a download: STORAGE_FULL, the partial file removed, the space back', async () => {
    const disk = await tmpfs('fills', '8m');
    const blob = randomBytes(5 * MiB);
    const hex = serve(blob);
    let release!: () => void;
    gate = new Promise<void>((r) => (release = r));
    const filler = join(disk, 'filler');
    const fetching = fetchVerifiedBlob({
      sha256: hex,
      size: blob.length,
      destDir: join(disk, 'blobs'),
      tmpDir: join(disk, 'tmp'),
      mirrors: [base],
      limits: { reserveBytes: 0 },
      retry: { attempts: 1, baseMs: 1, maxMs: 1, jitter: false },
    });
    try {
      // the first MiB is on disk; another process now takes the rest of it
      for (let i = 0; i < 200 && (await freeBytes(disk)) > 7 * MiB - 64 * 1024; i++)
        await new Promise((r) => setTimeout(r, 10));
      await fillDisk(filler);
    } finally {
      release();
      gate = undefined;
    }
    const e = await storageError(fetching);
    expect(e.message).toMatch(/ENOSPC/);
    expect(await readdir(join(disk, 'tmp'))).toEqual([]); // the partial file is gone
    expect(await readdir(join(disk, 'blobs'))).toEqual([]);
    expect(await freeBytes(disk)).toBeGreaterThanOrEqual(MiB - 64 * 1024); // its MiB came back
    await rm(filler);
    const r = await fetchVerifiedBlob({
      sha256: hex,
      size: blob.length,
      destDir: join(disk, 'blobs'),
      tmpDir: join(disk, 'tmp'),
      mirrors: [base],
      limits: { reserveBytes: 0 },
    });
    expect(sha256(await readFile(r.path))).toBe(hex);
  });

  it('the data-directory lock leaves no empty candidate behind on a full disk', async () => {
    const disk = await tmpfs('lock', '64k');
    await fillDisk(join(disk, 'filler'));
    const e = await acquireLock(join(disk, 'lock'), { timeoutMs: 0 }).then(
      () => undefined,
      (err: unknown) => err as NodeJS.ErrnoException,
    );
    expect(e?.code).toBe('ENOSPC');
    expect(await readdir(disk)).toEqual(['filler']);
  });
});
