/**
 * fileSource on paths that are not readable files: nothing is opened until the
 * first chunk is asked for, and then the failure is a coded error naming the
 * path. A source made and never read must not leave an error nobody hears.
 */
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fileSource, statInputFile } from './fsx.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ferry-fsx-'));
  await mkdir(join(dir, 'sub'));
  await writeFile(join(dir, 'data'), Buffer.alloc(3 * 1024 * 1024 + 5, 1));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

async function drain(src: AsyncIterable<Buffer>): Promise<number> {
  let n = 0;
  for await (const c of src) n += c.length;
  return n;
}

describe('fileSource', () => {
  it('reads a file whole, in large chunks', async () => {
    expect(await drain(fileSource(join(dir, 'data')))).toBe(3 * 1024 * 1024 + 5);
  });

  it('a missing file is NOT_FOUND when read, and nothing fails before that', async () => {
    const src = fileSource(join(dir, 'missing.ferry'));
    await new Promise((r) => setTimeout(r, 50)); // an eager stream would have emitted its error by now
    await expect(drain(src)).rejects.toMatchObject({
      code: 'NOT_FOUND',
      message: `${join(dir, 'missing.ferry')} does not exist`,
    });
  });

  it('a directory is NOT_A_FILE', async () => {
    await expect(drain(fileSource(join(dir, 'sub')))).rejects.toMatchObject({ code: 'NOT_A_FILE' });
    await expect(statInputFile(join(dir, 'sub'), 'a .ferry bundle file')).rejects.toMatchObject({
      code: 'NOT_A_FILE',
      message: `${join(dir, 'sub')} is a directory; expected a .ferry bundle file`,
    });
  });
});
