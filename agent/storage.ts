/**
 * The agent's record of a storage shortage (`storage.json` in its state
 * directory): written when a cycle could not fetch what the manifest needs
 * because the disk is too full, removed by the next cycle that syncs. While it
 * stands the agent keeps applying its last verified state; `ferry agent
 * status` shows it and every heartbeat carries it in its drift list.
 */
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { JsonObject } from '../core/heartbeat.js';
import { isoUtc } from '../core/time.js';
import { writeFileAtomic } from '../platform/fsx.js';
import { freeBytes } from '../platform/http/client.js';

export interface StorageShortage {
  code: 'STORAGE_FULL';
  /** The one-line refusal, naming what needed how much room where. */
  message: string;
  /** The directory the agent downloads into. */
  path: string;
  /** Bytes free there when the shortage was last seen. */
  freeBytes: number;
  /** When it was first and last seen (ms since the epoch). */
  since: number;
  at: number;
}

const file = (stateDir: string) => join(stateDir, 'storage.json');

/** The standing shortage, or null (none recorded, or a record that does not parse). */
export async function readShortage(stateDir: string): Promise<StorageShortage | null> {
  try {
    const v = JSON.parse(await readFile(file(stateDir), 'utf8')) as Partial<StorageShortage>;
    if (v.code !== 'STORAGE_FULL' || typeof v.message !== 'string' || typeof v.since !== 'number')
      return null;
    return v as StorageShortage;
  } catch {
    return null;
  }
}

/**
 * Records the shortage seen now (keeping when it began), or clears it. Best
 * effort: on a disk this full the record itself may not fit, and the caller's
 * log line says the same.
 */
export async function recordShortage(
  stateDir: string,
  cacheDir: string,
  seen: { message: string } | null,
  now: number,
): Promise<StorageShortage | null> {
  if (!seen) {
    await rm(file(stateDir), { force: true }).catch(() => undefined);
    return null;
  }
  const before = await readShortage(stateDir);
  const s: StorageShortage = {
    code: 'STORAGE_FULL',
    message: seen.message,
    path: cacheDir,
    freeBytes: await freeBytes(cacheDir).catch(() => 0),
    since: before?.since ?? now,
    at: now,
  };
  await writeFileAtomic(file(stateDir), JSON.stringify(s) + '\n', { mode: 0o600 }).catch(() => undefined);
  return s;
}

/** The shortage as a heartbeat drift entry: what this node should hold and cannot. */
export function shortageDrift(s: StorageShortage): JsonObject {
  return {
    path: s.path,
    artifact: '',
    status: 'storage_full',
    action: 'none',
    code: s.code,
    message: s.message,
    freeBytes: s.freeBytes,
    since: isoUtc(s.since),
  };
}
