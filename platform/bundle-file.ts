/**
 * The first look at a file the operator says is a bundle, before anything is
 * read in earnest or written anywhere: it exists, it is a regular file, and it
 * starts the way every ferry bundle starts (a tar header naming the manifest
 * entry). The reader still checks everything else; this only turns "wrong
 * file" into one line that says what was expected.
 */
import { open } from 'node:fs/promises';
import { MANIFEST_ENTRY } from '../core/bundle/reader.js';
import { BLOCK } from '../core/bundle/tar.js';
import { PlatformError } from './errors.js';
import { inputFileError, statInputFile } from './fsx.js';

const EXPECTED = 'a .ferry bundle file';
/** The tar name field of the first header: the manifest entry's name, then NUL. */
const FIRST_NAME = Buffer.from(`${MANIFEST_ENTRY}\0`, 'latin1');

/** Returns the file's size; refuses with NOT_FOUND, NOT_A_FILE, NOT_A_BUNDLE or IO_ERROR. */
export async function checkBundleFile(path: string): Promise<number> {
  const size = await statInputFile(path, EXPECTED);
  const head = Buffer.alloc(BLOCK);
  let got: number;
  try {
    const fh = await open(path, 'r');
    try {
      got = (await fh.read(head, 0, BLOCK, 0)).bytesRead;
    } finally {
      await fh.close();
    }
  } catch (e) {
    throw inputFileError(path, e, EXPECTED);
  }
  if (got === 0) throw new PlatformError('NOT_A_BUNDLE', `${path} is empty; expected ${EXPECTED}`);
  if (got < BLOCK || !head.subarray(0, FIRST_NAME.length).equals(FIRST_NAME))
    throw new PlatformError('NOT_A_BUNDLE', `${path} is not a ferry bundle (no ${MANIFEST_ENTRY} first)`);
  return size;
}
