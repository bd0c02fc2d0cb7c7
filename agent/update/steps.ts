/**
 * How each step of an update is carried out on this node (fetch, digest check,
 * staging into versions/, the staged binary's self-test, switching `current`,
 * the new version's health check), each returning what the machine
 * (machine.ts) is fed next. Failures become events, never
 * exceptions: the driver only sequences and records.
 */
import { execFile } from 'node:child_process';
import type { Logger } from '../../platform/log.js';
import type { Artifact } from '../../core/manifest.js';
import { blobCachePath, fetchBlob, type MirrorSet } from '../fetch.js';
import { readAgentState } from '../agent-state.js';
import { crashPoint } from '../../platform/crash.js';
import { pointCurrentAt, removeVersion, sha256File, stageVersion, versionBinary } from './install.js';
import type { UpdateEvent } from './machine.js';
import type { ClientLimits } from '../../platform/http/limits.js';

export interface StepContext {
  installRoot: string;
  stateDir: string;
  cacheDir: string;
  log: Logger;
  timeoutMs: number;
  /** HTTP deadlines, floor rate and disk reserve for the download, as the agent's own fetches use. */
  httpLimits?: Partial<ClientLimits>;
}

/** The target's bytes into the verified cache, from the first mirror that has them. */
export async function download(
  c: StepContext,
  target: Artifact | undefined,
  version: string,
  mirrors: MirrorSet | undefined,
): Promise<UpdateEvent> {
  if (!target || target.version !== version || !mirrors)
    return { type: 'download-failed', reason: 'no artifact in hand' };
  try {
    await fetchBlob(mirrors, target, c.cacheDir, {
      timeoutMs: c.timeoutMs,
      log: c.log,
      ...(c.httpLimits && { limits: c.httpLimits }),
    });
    crashPoint('downloaded');
    return { type: 'download-done' };
  } catch (e) {
    return { type: 'download-failed', reason: (e as Error).message };
  }
}

/** The cached bytes hash to the signed digest (read again: the cache is not trusted over time). */
export async function verify(c: StepContext, target: Artifact): Promise<UpdateEvent> {
  const got = await sha256File(blobCachePath(c.cacheDir, target.sha256)).catch((e: Error) => e.message);
  crashPoint('verified');
  return got === target.sha256
    ? { type: 'verify-ok' }
    : { type: 'verify-failed', reason: `sha256 ${got} is not ${target.sha256}` };
}

export async function stage(c: StepContext, target: Artifact, version: string): Promise<UpdateEvent> {
  try {
    await stageVersion(c.installRoot, version, blobCachePath(c.cacheDir, target.sha256));
    return { type: 'stage-done' };
  } catch (e) {
    // a full disk or a read-only install root: abandon cleanly, keep running what we run
    await removeVersion(c.installRoot, version).catch(() => undefined);
    const code = (e as NodeJS.ErrnoException).code ?? (e as { code?: string }).code ?? 'IO_ERROR';
    return { type: 'stage-failed', reason: `${code}: ${(e as Error).message}` };
  }
}

/** Runs `<versions>/<v>/ferry-agent self-test` against this state directory, killed after `ms`. */
export function selfTest(c: StepContext, version: string, ms: number): Promise<UpdateEvent> {
  return new Promise((done) => {
    execFile(
      versionBinary(c.installRoot, version),
      ['self-test', '--state', c.stateDir],
      { timeout: ms, killSignal: 'SIGKILL', cwd: '/' },
      (err, stdout, stderr) => {
        if (!err) {
          c.log.info('update.self_test_ok', { version, out: stdout.trim() });
          crashPoint('self-tested');
          done({ type: 'self-test-ok' });
        } else if ((err as { killed?: boolean }).killed) done({ type: 'self-test-timeout' });
        else done({ type: 'self-test-failed', reason: (stderr.trim() || err.message).slice(-500) });
      },
    );
  });
}

/** Points `current` at versions/<v> atomically (install.ts) and says so. */
export async function switchCurrent(c: StepContext, version: string): Promise<void> {
  await pointCurrentAt(c.installRoot, version);
  c.log.info('update.current', { version });
}

/** Why the version now running is unhealthy after a completed cycle, or undefined when it is healthy. */
export async function healthProblem(c: StepContext, sync: string): Promise<string | undefined> {
  try {
    if (!(await readAgentState(c.stateDir))) return 'state.json is missing';
  } catch (e) {
    return `state unreadable: ${(e as Error).message}`;
  }
  // a disconnected site is normal for ferry: an unreachable mirror does not fail the update
  if (sync === 'unreachable') c.log.warn('update.health_disconnected', {});
  return undefined; // the loop is alive: this is called at the end of a completed cycle
}
