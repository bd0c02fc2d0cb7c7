/**
 * Checks of what the agent keeps on disk: managed files, the blob cache and
 * temp files a crash left. Each only reads; fixes.ts uses the same listings.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { checkFile } from '../files.js';
import { blobCachePath } from '../fetch.js';
import type { DoctorContext } from './context.js';
import { errText, ok, type CheckResult } from './types.js';

/** Blobs re-hashed without --deep: those the active manifest needs first, then others. */
export const CACHE_SAMPLE = 8;
/** A temp file older than this was left by a crash, not by a write under way. */
export const TEMP_STALE_MS = 10 * 60_000;

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

export async function checkFiles(c: DoctorContext): Promise<CheckResult> {
  const t = 'managed files without drift';
  if (!c.desired) return ok('files', t, 'no active policy');
  if (c.desired.files.length === 0) return ok('files', t, 'the policy manages no files');
  const bad: string[] = [];
  let restorable = false;
  for (const f of c.desired.files) {
    let status: string;
    try {
      status = await checkFile(f.entry, f.artifact.sha256);
    } catch (e) {
      status = errText(e);
    }
    if (status === 'ok') continue;
    bad.push(`${f.entry.path}: ${status}`);
    if (await stat(blobCachePath(c.cacheDir, f.artifact.sha256)).catch(() => undefined)) restorable = true;
  }
  if (bad.length === 0) return ok('files', t, `${c.desired.files.length} file(s) as the policy says`);
  return {
    id: 'files',
    title: t,
    status: 'fail',
    evidence: bad.join('; '),
    fix: 'ferry agent doctor --fix (restores the signed bytes and mode from the verified cache)',
    ...(restorable && { fixable: 'file-drift' }),
  };
}

/** Cached blobs to re-hash: all with `deep`, else those the active manifest needs first, up to CACHE_SAMPLE. */
export async function cacheSample(c: DoctorContext): Promise<{ all: number; sample: string[] }> {
  const dir = join(c.cacheDir, 'blobs', 'sha256');
  const names = (await readdir(dir).catch(() => [])).filter((n) => /^[0-9a-f]{64}$/.test(n)).sort();
  if (c.o.deep) return { all: names.length, sample: names };
  const needed = new Set(c.manifest?.artifacts.map((a) => a.sha256) ?? []);
  const first = names.filter((n) => needed.has(n));
  const rest = names.filter((n) => !needed.has(n));
  return { all: names.length, sample: [...first, ...rest].slice(0, CACHE_SAMPLE) };
}

/** Cached blobs whose bytes do not hash to their name. */
export async function corruptBlobs(
  c: DoctorContext,
): Promise<{ all: number; checked: number; corrupt: string[] }> {
  const { all, sample } = await cacheSample(c);
  const corrupt: string[] = [];
  for (const n of sample) {
    const got = await sha256File(blobCachePath(c.cacheDir, n)).catch(() => 'unreadable');
    if (got !== n) corrupt.push(n);
  }
  return { all, checked: sample.length, corrupt };
}

export async function checkCache(c: DoctorContext): Promise<CheckResult> {
  const t = 'cached blobs intact';
  const r = await corruptBlobs(c);
  const ev = `${r.checked} of ${r.all} blob(s) re-hashed${c.o.deep ? ' (--deep)' : ''}`;
  if (r.corrupt.length === 0) return ok('cache', t, ev);
  return {
    id: 'cache',
    title: t,
    status: 'fail',
    evidence: `${ev}; corrupt: ${r.corrupt.map((n) => blobCachePath(c.cacheDir, n)).join(', ')}`,
    fix: 'ferry agent doctor --fix (deletes them; the next poll fetches them again)',
    fixable: 'cache-corrupt',
  };
}

/** Temp files a crash left under the state and install directories, older than TEMP_STALE_MS. */
export async function staleTemps(c: DoctorContext): Promise<string[]> {
  const out: string[] = [];
  const scan = async (dir: string, match: (n: string) => boolean) => {
    for (const n of await readdir(dir).catch(() => [])) {
      if (!match(n)) continue;
      const p = join(dir, n);
      const st = await lstat(p).catch(() => undefined);
      if ((st?.isFile() || st?.isSymbolicLink()) && c.now - st.mtimeMs > TEMP_STALE_MS) out.push(p);
    }
  };
  const atomicTemp = (n: string) => /^\..+\.tmp$/.test(n);
  await scan(c.stateDir, (n) => atomicTemp(n) || /^agent\.lock\..+\.tmp$/.test(n));
  await scan(join(c.stateDir, 'outbox'), atomicTemp);
  await scan(join(c.stateDir, 'keys'), atomicTemp);
  await scan(join(c.cacheDir, 'tmp'), (n) => n.endsWith('.part'));
  const root = c.o.installRoot;
  if (root) {
    await scan(root, (n) => n === 'current.tmp');
    for (const v of await readdir(join(root, 'versions')).catch(() => []))
      await scan(join(root, 'versions', v), (n) => n === 'ferry-agent.tmp');
  }
  return out;
}

export async function checkTemps(c: DoctorContext): Promise<CheckResult> {
  const t = 'no stale temp files';
  const found = await staleTemps(c);
  if (found.length === 0) return ok('temp', t, 'none older than 10 min');
  return {
    id: 'temp',
    title: t,
    status: 'warn',
    evidence: `${found.length} left by an interrupted write: ${found.slice(0, 5).join(', ')}${found.length > 5 ? ', …' : ''}`,
    fix: 'ferry agent doctor --fix (removes them)',
    fixable: 'temp-files',
  };
}
