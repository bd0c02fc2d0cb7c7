/**
 * `ferry agent rollback`: the operator's way back to the previous committed
 * agent version, with the agent stopped. update.json is written first (phase
 * rolled-back, the report, the bad version if asked), then `current` is switched
 * atomically; a crash in between is finished by the next start (the machine sees
 * the rolled-back version start and switches `current` again).
 */
import { readFile, readlink, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { FerryError } from '../../core/errors.js';
import { pointCurrentAt, versionBinary } from './install.js';
import { badVersionKey } from './version-choice.js';
import { readUpdateFile, writeUpdateFile, type UpdateFile } from './update-file.js';

export interface ManualRollback {
  /** The version `current` pointed at. */
  from: string;
  /** The version it points at now. */
  to: string;
  markedBad: boolean;
  reason: string;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export async function manualRollback(o: {
  stateDir: string;
  installRoot: string;
  markBad: boolean;
  now: number;
}): Promise<ManualRollback> {
  const file = await readUpdateFile(o.stateDir);
  const m = file?.machine;
  if (!file || !m || m.phase === 'idle' || m.phase === 'rolled-back' || !m.version || !m.previous)
    throw new FerryError(
      'NO_PREVIOUS_VERSION',
      `no previous committed agent version to roll back to (${m ? `phase ${m.phase}` : 'no update recorded'} in ${o.stateDir})`,
    );
  if (m.phase !== 'committed')
    throw new FerryError(
      'UPDATE_IN_PROGRESS',
      `an update to ${m.version} is in flight (phase ${m.phase}); it rolls back by itself if it fails`,
    );
  const { version: from, previous: to } = m;
  const link = await readlink(join(o.installRoot, 'current')).catch(() => undefined);
  if (link === undefined || basename(link) !== from)
    throw new FerryError(
      'CURRENT_MISMATCH',
      `${join(o.installRoot, 'current')} points at ${link ?? 'nothing'}, not the committed ${from}`,
    );
  const prevBin = versionBinary(o.installRoot, to);
  if (!(await stat(prevBin).catch(() => undefined))?.isFile())
    throw new FerryError(
      'NO_PREVIOUS_VERSION',
      `previous version ${to} is not installed (${prevBin} is missing)`,
    );
  const pid = Number((await readFile(join(o.stateDir, 'agent.pid'), 'utf8').catch(() => '')).trim());
  if (pid > 0 && pidAlive(pid))
    throw new FerryError(
      'AGENT_RUNNING',
      `the agent runs (pid ${pid}); stop it first (systemctl stop ferry-agent), then start it again`,
    );

  const reason = `manual rollback from ${from} to ${to}${o.markBad ? `; ${from} marked bad` : ''}`;
  const key = badVersionKey(m.payloadDigest ?? '', from);
  const next: UpdateFile = {
    ...file,
    machine: {
      ...m,
      phase: 'rolled-back',
      deadline: null,
      soakUntil: null,
      highestCommitted: m.highestBefore,
    },
    badVersions: o.markBad && !file.badVersions.includes(key) ? [...file.badVersions, key] : file.badVersions,
    unreported: [
      ...file.unreported,
      { outcome: 'rolled-back', phase: 'committed', version: from, reason, at: o.now },
    ],
  };
  await writeUpdateFile(o.stateDir, next);
  await pointCurrentAt(o.installRoot, to);
  return { from, to, markedBad: o.markBad, reason };
}
