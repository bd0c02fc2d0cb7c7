/**
 * Managed files: compare what is on disk with what the verified policy says,
 * and put the signed bytes back where the policy enforces them. Writes are
 * atomic (temp file in the same directory, fsync, chmod, rename, fsync dir).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, mkdir, readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { CodedError } from '../core/errors.js';
import { withAtomicFile } from '../platform/fsx.js';
import { managedPathProblem, parseMode, type FileEntry } from '../core/policy.js';

export type FileStatus = 'ok' | 'missing' | 'drift' | 'mode';

export type FileErrorCode = 'FILE_PATH_REFUSED' | 'FILE_BLOB_MISMATCH' | 'FILE_OWNER_UNKNOWN' | 'FILE_IO';

/** A managed file that cannot be placed as its policy says; the message names the path. */
export class FileError extends CodedError<FileErrorCode> {}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/**
 * `missing` when nothing is there; `drift` when the content differs (or the
 * path is not a regular file, e.g. a symlink or directory); `mode` when only
 * the permission bits differ. Ownership is not compared.
 */
export async function checkFile(spec: FileEntry, expectedSha256: string): Promise<FileStatus> {
  let st;
  try {
    st = await lstat(spec.path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 'missing';
    throw new FileError('FILE_IO', `cannot stat ${spec.path}: ${(e as Error).message}`, { cause: e });
  }
  if (!st.isFile()) return 'drift';
  if ((await sha256File(spec.path)) !== expectedSha256) return 'drift';
  if ((st.mode & 0o7777) !== parseMode(spec.mode)) return 'mode';
  return 'ok';
}

async function lookupId(db: string, name: string): Promise<number | undefined> {
  if (/^[0-9]+$/.test(name)) return Number(name);
  const text = await readFile(db, 'utf8');
  for (const line of text.split('\n')) {
    const [n, , id] = line.split(':');
    if (n === name && id !== undefined && /^[0-9]+$/.test(id)) return Number(id);
  }
  return undefined;
}

async function ownership(spec: FileEntry): Promise<{ uid: number; gid: number } | undefined> {
  if (spec.owner === undefined && spec.group === undefined) return undefined;
  const uid = spec.owner === undefined ? -1 : await lookupId('/etc/passwd', spec.owner);
  const gid = spec.group === undefined ? -1 : await lookupId('/etc/group', spec.group);
  if (uid === undefined) throw new FileError('FILE_OWNER_UNKNOWN', `${spec.path}: no user ${spec.owner}`);
  if (gid === undefined) throw new FileError('FILE_OWNER_UNKNOWN', `${spec.path}: no group ${spec.group}`);
  return { uid, gid };
}

/**
 * Places the blob at `spec.path` atomically with `spec.mode` (and owner/group
 * when given), creating missing parent directories (0755). When
 * `expectedSha256` is given the copied bytes must hash to it, or nothing at
 * `spec.path` changes.
 */
export async function placeFile(
  spec: FileEntry,
  sourceBlobPath: string,
  expectedSha256?: string,
): Promise<void> {
  const problem = managedPathProblem(spec.path);
  if (problem !== undefined) throw new FileError('FILE_PATH_REFUSED', `${String(spec.path)} ${problem}`);
  const mode = parseMode(spec.mode);
  const owner = await ownership(spec);
  // Check the blob before creating any directory, so a bad blob changes nothing;
  // the copy below hashes again, in case the blob changes underneath us.
  if (expectedSha256 !== undefined) {
    const got = await sha256File(sourceBlobPath).catch((e: unknown) => {
      throw new FileError('FILE_IO', `cannot read ${sourceBlobPath}: ${(e as Error).message}`, { cause: e });
    });
    if (got !== expectedSha256)
      throw new FileError('FILE_BLOB_MISMATCH', `${sourceBlobPath} hashes to ${got}, not ${expectedSha256}`);
  }
  try {
    await mkdir(dirname(spec.path), { recursive: true, mode: 0o755 });
  } catch (e) {
    throw new FileError('FILE_IO', `cannot create ${dirname(spec.path)}: ${(e as Error).message}`, {
      cause: e,
    });
  }
  await withAtomicFile(spec.path, { mode }, async (fh) => {
    const h = createHash('sha256');
    for await (const chunk of createReadStream(sourceBlobPath)) {
      const buf = chunk as Buffer;
      h.update(buf);
      await fh.write(buf);
    }
    const got = h.digest('hex');
    if (expectedSha256 !== undefined && got !== expectedSha256) {
      throw new FileError('FILE_BLOB_MISMATCH', `${sourceBlobPath} hashes to ${got}, not ${expectedSha256}`);
    }
    if (owner) {
      await fh.chown(owner.uid, owner.gid);
      await fh.chmod(mode); // chown may clear mode bits
    }
  }).catch((e: unknown) => {
    // withAtomicFile wraps foreign errors as IO_ERROR; keep ours recognisable.
    const cause = (e as { cause?: unknown }).cause;
    if (cause instanceof FileError) throw cause;
    throw e;
  });
}

export interface BlobRef {
  /** Local path of the verified blob. */
  path: string;
  sha256: string;
}

export type FileAction = 'none' | 'placed' | 'restored' | 'reported' | 'failed';

export interface FileReport {
  path: string;
  artifact: string;
  /** Status before any action; `no-blob` when the artifact is not available locally. */
  status: FileStatus | 'no-blob';
  action: FileAction;
  error?: { code: string; message: string };
}

export interface ReconcileOptions {
  /** Node-wide switch: false only reports, even for entries with `enforce: true`. */
  enforce: boolean;
  /**
   * Placements this agent already made, as `placementKey(path, sha256)`. A file
   * the policy manages is placed once even when its entry does not enforce;
   * after that, drift of a non-enforced file (including removal) is only reported.
   */
  placedBefore?: ReadonlySet<string>;
}

export const placementKey = (path: string, sha256: string) => `${path}\0${sha256}`;

/**
 * Checks each managed file and restores missing or drifted ones (content or
 * mode) where both the entry and `opts.enforce` say so; otherwise reports
 * without touching the file. One file's failure does not stop the others.
 */
export async function reconcileFiles(
  files: readonly FileEntry[],
  blobsByArtifact: ReadonlyMap<string, BlobRef>,
  opts: ReconcileOptions,
): Promise<FileReport[]> {
  const report: FileReport[] = [];
  for (const spec of files) {
    const base = { path: spec.path, artifact: spec.artifact };
    const blob = blobsByArtifact.get(spec.artifact);
    if (blob === undefined) {
      report.push({ ...base, status: 'no-blob', action: 'none' });
      continue;
    }
    let status: FileStatus;
    try {
      status = await checkFile(spec, blob.sha256);
    } catch (e) {
      report.push({ ...base, status: 'drift', action: 'failed', error: describe(e) });
      continue;
    }
    if (status === 'ok') {
      report.push({ ...base, status, action: 'none' });
    } else if (!opts.enforce) {
      report.push({ ...base, status, action: 'reported' });
    } else if (!spec.enforce && opts.placedBefore?.has(placementKey(spec.path, blob.sha256)) !== false) {
      report.push({ ...base, status, action: 'reported' });
    } else {
      try {
        await placeFile(spec, blob.path, blob.sha256);
        report.push({ ...base, status, action: spec.enforce ? 'restored' : 'placed' });
      } catch (e) {
        report.push({ ...base, status, action: 'failed', error: describe(e) });
      }
    }
  }
  return report;
}

function describe(e: unknown): { code: string; message: string } {
  const code = (e as { code?: unknown }).code;
  return { code: typeof code === 'string' ? code : 'FILE_IO', message: (e as Error).message };
}
