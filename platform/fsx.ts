import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { link, open, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { FerryError } from '../core/errors.js';
import { PlatformError } from './errors.js';

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

/**
 * Why a path the operator named cannot be read as a regular file, as a coded
 * error naming the path: NOT_FOUND, NOT_A_FILE (`expected` says what should be
 * there), or IO_ERROR for anything else (permissions, I/O).
 */
export function inputFileError(path: string, e: unknown, expected = 'a regular file'): PlatformError {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return new PlatformError('NOT_FOUND', `${path} does not exist`, { cause: e });
  if (code === 'ENOTDIR')
    return new PlatformError('NOT_FOUND', `${path} does not exist (a parent is not a directory)`, {
      cause: e,
    });
  if (code === 'EISDIR')
    return new PlatformError('NOT_A_FILE', `${path} is a directory; expected ${expected}`, { cause: e });
  const why =
    code === 'EACCES' || code === 'EPERM' ? 'permission denied' : ((e as Error).message ?? String(e));
  return new PlatformError('IO_ERROR', `cannot read ${path}: ${why}`, { cause: e });
}

/** Checks that `path` is a regular file and returns its size; refuses with inputFileError's codes. */
export async function statInputFile(path: string, expected = 'a regular file'): Promise<number> {
  let st;
  try {
    st = await stat(path);
  } catch (e) {
    throw inputFileError(path, e, expected);
  }
  if (st.isDirectory()) throw new PlatformError('NOT_A_FILE', `${path} is a directory; expected ${expected}`);
  if (!st.isFile())
    throw new PlatformError('NOT_A_FILE', `${path} is not a regular file; expected ${expected}`);
  return st.size;
}

/**
 * A file as a stream of large chunks, for the reader. Nothing is opened until
 * the first chunk is asked for, and a file that cannot be opened or read fails
 * that request with inputFileError's codes: no stream is left to emit an error
 * nobody listens to.
 */
export async function* fileSource(path: string): AsyncGenerator<Buffer, void, undefined> {
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    throw inputFileError(path, e);
  }
  try {
    const stream = fh.createReadStream({ highWaterMark: 1024 * 1024, autoClose: false });
    try {
      for await (const chunk of stream as AsyncIterable<Buffer>) yield chunk;
    } catch (e) {
      throw inputFileError(path, e);
    }
  } finally {
    await fh.close();
  }
}
