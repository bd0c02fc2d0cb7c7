/**
 * The install layout self-update changes, and only this file touches it:
 *
 *   <install>/versions/<version>/ferry-agent   each installed agent
 *   <install>/current → versions/<version>     what the supervisor starts
 *
 * The install root is $FERRY_AGENT_INSTALL_ROOT, else derived from the path the
 * agent was started by (<root>/current/ferry-agent); an agent started any other
 * way (e.g. `ferry agent run`) does not self-update.
 */
import { createHash } from 'node:crypto';
import { chmod, copyFile, mkdir, open, readFile, readlink, rename, rm, symlink } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { fsyncDir } from '../../platform/fsx.js';
import { crashPoint } from '../../platform/crash.js';

export function platformTag(): string {
  const os = process.platform === 'win32' ? 'windows' : process.platform;
  return `${os}-${process.arch}`;
}

/** Where versions/ and current live, or undefined when this process was not started from that layout. */
export function installRootOf(argv1: string | undefined, env = process.env): string | undefined {
  if (env.FERRY_AGENT_INSTALL_ROOT) return resolve(env.FERRY_AGENT_INSTALL_ROOT);
  if (!argv1 || basename(argv1) !== 'ferry-agent') return undefined;
  const dir = dirname(resolve(argv1));
  if (basename(dir) === 'current') return dirname(dir);
  if (basename(dirname(dir)) === 'versions') return dirname(dirname(dir));
  return undefined;
}

export function versionDir(installRoot: string, v: string): string {
  return join(installRoot, 'versions', v);
}

export function versionBinary(installRoot: string, v: string): string {
  return join(versionDir(installRoot, v), 'ferry-agent');
}

/** The version `current` points at, or undefined when there is no such link. */
export async function currentVersion(installRoot: string): Promise<string | undefined> {
  const link = await readlink(join(installRoot, 'current')).catch(() => undefined);
  return link === undefined ? undefined : basename(link);
}

/** current.tmp → versions/<v>, renamed over current: the switch is atomic. */
export async function pointCurrentAt(installRoot: string, v: string): Promise<void> {
  const tmp = join(installRoot, 'current.tmp');
  await rm(tmp, { force: true });
  await symlink(join('versions', v), tmp);
  await rename(tmp, join(installRoot, 'current'));
  await fsyncDir(installRoot);
}

/** Copies a verified blob to versions/<v>/ferry-agent: temp file, 0755, fsync, rename, fsync the directory. */
export async function stageVersion(installRoot: string, v: string, blob: string): Promise<void> {
  const dir = versionDir(installRoot, v);
  await mkdir(dir, { recursive: true });
  const tmp = join(dir, 'ferry-agent.tmp');
  await rm(tmp, { force: true });
  await copyFile(blob, tmp);
  crashPoint('stage-tmp');
  await chmod(tmp, 0o755);
  const fh = await open(tmp, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, join(dir, 'ferry-agent'));
  await fsyncDir(dir);
  crashPoint('staged');
}

export async function removeVersion(installRoot: string, v: string): Promise<void> {
  await rm(versionDir(installRoot, v), { recursive: true, force: true });
}

export async function sha256File(p: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(p))
    .digest('hex');
}
