import { randomBytes } from 'node:crypto';
import { constants, createReadStream } from 'node:fs';
import { link, open, rename, rm, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { FerryError } from '../core/errors.js';

/** fsync a directory so that a rename inside it survives power loss. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** A temp path in the same directory as `path`, so the final rename is atomic. */
export function tempPathFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
}

export interface AtomicWriteOptions {
  mode?: number;
  /** Refuse when the destination already exists (checked at rename time via link semantics). */
  exclusive?: boolean;
}

/**
 * Writes a file atomically: temp file in the same directory, fsync, rename,
 * fsync the directory. A crash leaves the old file or the new one, never a mix.
 */
export async function writeFileAtomic(
  path: string,
  data: string | Uint8Array,
  opts: AtomicWriteOptions = {},
): Promise<void> {
  await withAtomicFile(path, opts, async (fh) => {
    await fh.writeFile(data);
  });
}

/**
 * Runs `fill` against a temp file handle; on success fsyncs and renames into
 * `path`; on failure removes the temp file and leaves `path` untouched.
 */
export async function withAtomicFile<T>(
  path: string,
  opts: AtomicWriteOptions,
  fill: (fh: FileHandle, tempPath: string) => Promise<T>,
): Promise<T> {
  const tmp = tempPathFor(path);
  const mode = opts.mode ?? 0o644;
  let fh: FileHandle | undefined;
  try {
    fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, mode);
    await fh.chmod(mode); // umask must not widen or narrow what we asked for
    const result = await fill(fh, tmp);
    await fh.sync();
    await fh.close();
    fh = undefined;
    if (opts.exclusive) {
      try {
        await link(tmp, path); // fails with EEXIST instead of replacing
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') {
          throw new FerryError('IO_ERROR', `${path} already exists; refusing to overwrite it`);
        }
        throw e;
      }
      await rm(tmp, { force: true });
    } else {
      await rename(tmp, path);
    }
    await fsyncDir(dirname(path));
    return result;
  } catch (e) {
    if (fh) await fh.close().catch(() => undefined);
    await rm(tmp, { force: true }).catch(() => undefined);
    if (e instanceof FerryError) throw e;
    throw new FerryError('IO_ERROR', `cannot write ${path}: ${(e as Error).message}`, { cause: e });
  }
}

/** A file as a stream of large chunks, for the reader. */
export function fileSource(path: string): AsyncIterable<Buffer> {
  return createReadStream(path, { highWaterMark: 1024 * 1024 }) as AsyncIterable<Buffer>;
}
