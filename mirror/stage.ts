/**
 * Blobs received from a bundle wait in tmp/ until the whole bundle has been
 * read and the import decided: a refused bundle must leave no new blob in the
 * store. Each staged file is fsynced before the reader moves on; publishing
 * renames them into blobs/sha256/ and fsyncs that directory once.
 */
import { randomBytes } from 'node:crypto';
import { chmod, lstat, open, rename, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { BlobSink } from '../core/bundle/reader.js';
import { fsyncDir } from '../platform/fsx.js';

/** Content-addressed blobs never change: stored read-only. */
export const BLOB_MODE = 0o444;

export class BlobStage {
  private readonly staged = new Map<string, string>();
  private readonly open = new Set<string>();

  constructor(
    private readonly tmpDir: string,
    private readonly blobDir: string,
    private readonly held: (digest: string) => Promise<boolean>,
  ) {}

  /**
   * Stages files whose digest the caller verified over every byte (a peer pull): only those `named`
   * (the signed manifest's digest → size) and whose file is a regular file of exactly that size. The
   * store does not hold them yet, so nothing is read twice; the rest are not touched.
   */
  async takeVerified(named: ReadonlyMap<string, number>, files: ReadonlyMap<string, string>): Promise<void> {
    for (const [digest, path] of files) {
      const size = named.get(digest);
      if (size === undefined || this.staged.has(digest) || (await this.held(digest))) continue;
      const st = await lstat(path).catch(() => undefined);
      if (!st?.isFile() || st.size !== size) continue;
      await chmod(path, BLOB_MODE);
      this.staged.set(digest, path);
    }
  }

  /** The reader's `openBlob`: undefined (hash only, keep nothing) when the store already holds it. */
  readonly openBlob = async (digest: string): Promise<BlobSink | undefined> => {
    if (this.staged.has(digest) || (await this.held(digest))) return undefined;
    const path = join(this.tmpDir, `${digest}.${randomBytes(6).toString('hex')}.part`);
    const fh = await open(path, 'wx', BLOB_MODE);
    await fh.chmod(BLOB_MODE); // the umask must not change what agents are served
    this.open.add(path);
    return {
      write: (chunk) => writeAll(fh, chunk),
      commit: async () => {
        await fh.sync();
        await fh.close();
        this.open.delete(path);
        this.staged.set(digest, path);
      },
      abort: async () => {
        await fh.close().catch(() => undefined);
        this.open.delete(path);
        await rm(path, { force: true });
      },
    };
  };

  /** Digests received and verified so far. */
  get digests(): string[] {
    return [...this.staged.keys()];
  }

  /** Moves every staged blob into the store. Returns the digests added. */
  async publish(): Promise<string[]> {
    const added: string[] = [];
    for (const [digest, path] of this.staged) {
      await rename(path, join(this.blobDir, digest));
      this.staged.delete(digest);
      added.push(digest);
    }
    if (added.length > 0) await fsyncDir(this.blobDir);
    return added;
  }

  /** Removes whatever was received and not published. */
  async discard(): Promise<void> {
    for (const path of [...this.staged.values(), ...this.open]) await rm(path, { force: true });
    this.staged.clear();
    this.open.clear();
  }
}

async function writeAll(fh: FileHandle, chunk: Buffer): Promise<void> {
  let off = 0;
  while (off < chunk.length) {
    const { bytesWritten } = await fh.write(chunk, off, chunk.length - off);
    off += bytesWritten;
  }
}
