/**
 * Room on the destination filesystem: a download is refused before its first
 * byte when the bytes it still needs plus a reserve do not fit, and a write
 * that hits ENOSPC anyway (another process filled the disk meanwhile) becomes
 * the same coded STORAGE_FULL, not a generic I/O error.
 */
import { statfs } from 'node:fs/promises';
import { dirname } from 'node:path';
import { FerryError } from '../../core/errors.js';
import { StorageFullError } from './errors.js';

/** Bytes an unprivileged writer may still use on the filesystem holding `dir` (or its nearest existing parent). */
export async function freeBytes(dir: string): Promise<number> {
  for (let d = dir; ; d = dirname(d)) {
    try {
      const s = await statfs(d);
      return s.bavail * s.bsize;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || dirname(d) === d) throw e;
    }
  }
}

const MiB = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MiB`;

/** Refuses with STORAGE_FULL unless `need` bytes plus `reserve` fit under `dir`; nothing is written either way. */
export async function ensureRoom(dir: string, need: number, reserve: number, what: string): Promise<void> {
  const free = await freeBytes(dir);
  if (free >= need + reserve) return;
  throw new StorageFullError(
    `no room for ${what}: needs ${MiB(need)} and keeps ${MiB(reserve)} free, ${MiB(free)} free in ${dir}`,
    dir,
    need + reserve,
    free,
  );
}

const FULL = new Set(['ENOSPC', 'EDQUOT']);

/**
 * The coded error for a failed disk operation on `path`: STORAGE_FULL for
 * ENOSPC/EDQUOT, IO_ERROR otherwise (our own disk, which no source can fix).
 */
export async function diskFailure(e: unknown, what: string, dir: string, need: number): Promise<Error> {
  if (e instanceof StorageFullError || e instanceof FerryError) return e;
  const message = `${what}: ${e instanceof Error ? e.message : String(e)}`;
  if (FULL.has((e as NodeJS.ErrnoException).code ?? '')) {
    const free = await freeBytes(dir).catch(() => 0);
    return new StorageFullError(message, dir, need, free, { cause: e });
  }
  return new FerryError('IO_ERROR', message, { cause: e });
}
