/**
 * Small tmpfs mounts for full-disk tests. Mounting needs root and a kernel
 * that allows it; elsewhere the tests that need one skip with a one-line
 * reason, except under FERRY_REQUIRE_ALL=1 (.ci/run), where that is a failure.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmdirSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Why a tmpfs cannot be mounted here, or undefined when it can. */
function probe(): string | undefined {
  if (process.getuid?.() !== 0) return 'not running as root (mount -t tmpfs needs it)';
  const dir = mkdtempSync(join(tmpdir(), 'ferry-tmpfs-probe-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', dir], { stdio: 'pipe' });
    execFileSync('umount', [dir]);
    return undefined;
  } catch (e) {
    return `mount -t tmpfs is not permitted here (${(e as Error).message.split('\n')[0]})`;
  } finally {
    rmdirSync(dir);
  }
}

/** Undefined when tmpfs tests can run; else the reason they skip (thrown under FERRY_REQUIRE_ALL=1). */
export function tmpfsUnavailable(what: string): string | undefined {
  const why = probe();
  if (why && process.env.FERRY_REQUIRE_ALL === '1')
    throw new Error(`a tmpfs is required (FERRY_REQUIRE_ALL=1): ${why}`);
  if (why) console.warn(`skipping ${what}: ${why}`);
  return why;
}

/** Mounts a tmpfs of `size` (mount's syntax: 8m, 512k) on the existing directory `dir`. */
export function mountTmpfs(dir: string, size: string): void {
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'pipe' });
}

/** Grows or shrinks a mounted tmpfs. */
export function resizeTmpfs(dir: string, size: string): void {
  execFileSync('mount', ['-o', `remount,size=${size}`, dir], { stdio: 'pipe' });
}

export function umount(dir: string): void {
  execFileSync('umount', ['-l', dir], { stdio: 'pipe' });
}

/** Writes `path` until the filesystem is full; returns the bytes written. */
export async function fillDisk(path: string): Promise<number> {
  const fh = await open(path, 'w');
  const chunk = Buffer.alloc(64 * 1024, 1);
  let n = 0;
  try {
    for (;;) {
      try {
        const { bytesWritten } = await fh.write(chunk);
        n += bytesWritten;
        if (bytesWritten < chunk.length) break;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOSPC') break;
        throw e;
      }
    }
    // the last partial pages: byte by byte is too slow, halve instead
    for (let size = chunk.length / 2; size >= 1; size = Math.floor(size / 2)) {
      try {
        n += (await fh.write(chunk.subarray(0, size))).bytesWritten;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
      }
    }
  } finally {
    await fh.close();
  }
  return n;
}
