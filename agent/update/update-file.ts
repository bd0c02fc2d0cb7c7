/**
 * Self-update's files under the agent's state directory, read and written
 * here only:
 *
 *   update.json          machine state, bad versions, unsent reports
 *   pending.json         swapped, not yet committed
 *   pending.{previous,max}  for the prestart script, written before pending.json
 *   pending.attempts     starts since the swap, counted by the prestart script
 *   pending.rolledback   the prestart script switched `current` back (reason)
 *
 * Every write is atomic (platform/fsx.ts) and private (0600).
 */
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDir, writeFileAtomic } from '../../platform/fsx.js';
import type { Logger } from '../../platform/log.js';
import {
  initialUpdateState,
  type PendingRecord,
  type Report,
  type UpdateAction,
  type UpdateLimits,
  type UpdateState,
} from './machine.js';

/** What goes home in a heartbeat's results as `{update: …}`. */
export interface UpdateReport {
  outcome: Report['outcome'] | 'refused';
  version: string;
  reason: string;
  phase?: string;
  code?: string;
  at: number;
}

export interface UpdateFile {
  format: 'ferry.agent-update/v1';
  machine: UpdateState;
  badVersions: string[];
  unreported: UpdateReport[];
  /** `payloadDigest:code` of the last refusal reported, so one manifest is reported once. */
  lastRefusal: string | null;
}

/** Written by the prestart script (systemd/ferry-agent-prestart.sh) while an update is pending. */
const PENDING_COUNTER_FILES = ['pending.attempts', 'pending.rolledback'] as const;
const PRIVATE = { mode: 0o600 };

export function newUpdateFile(): UpdateFile {
  return {
    format: 'ferry.agent-update/v1',
    machine: initialUpdateState(),
    badVersions: [],
    unreported: [],
    lastRefusal: null,
  };
}

/** update.json as stored, or undefined when there is none yet. */
export async function readUpdateFile(stateDir: string): Promise<UpdateFile | undefined> {
  try {
    return JSON.parse(await readFile(join(stateDir, 'update.json'), 'utf8')) as UpdateFile;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

export async function writeUpdateFile(stateDir: string, file: UpdateFile): Promise<void> {
  await writeFileAtomic(join(stateDir, 'update.json'), JSON.stringify(file) + '\n', PRIVATE);
}

/** The text of pending.json, or undefined when no swap awaits its commit. */
export function readPendingRecord(stateDir: string): Promise<string | undefined> {
  return readFile(join(stateDir, 'pending.json'), 'utf8').catch(() => undefined);
}

/**
 * What the prestart script reads, then pending.json, which is what it looks
 * for: `previousDir` is where it switches `current` back to after `maxAttempts`.
 */
export async function writePendingRecord(
  stateDir: string,
  r: PendingRecord,
  previousDir: string,
  maxAttempts: number,
): Promise<void> {
  for (const n of PENDING_COUNTER_FILES) await rm(join(stateDir, n), { force: true });
  await writeFileAtomic(join(stateDir, 'pending.previous'), `${previousDir}\n`, PRIVATE);
  await writeFileAtomic(join(stateDir, 'pending.max'), `${maxAttempts}\n`, PRIVATE);
  await writeFileAtomic(join(stateDir, 'pending.json'), JSON.stringify(r) + '\n', PRIVATE);
}

/** pending.json first: without it the prestart script does nothing. */
export async function removePendingFiles(stateDir: string): Promise<void> {
  await rm(join(stateDir, 'pending.json'), { force: true });
  for (const n of [...PENDING_COUNTER_FILES, 'pending.previous', 'pending.max'])
    await rm(join(stateDir, n), { force: true });
  await fsyncDir(stateDir);
}

/** The prestart script's count of starts since the swap, and its rollback, if it made one. */
export async function readBootRecord(stateDir: string): Promise<{ attempts?: number; rolledBack?: string }> {
  const read = (n: string) =>
    readFile(join(stateDir, n), 'utf8').then(
      (t) => t.trim(),
      () => undefined,
    );
  const attempts = await read('pending.attempts');
  const rolledBack = await read('pending.rolledback');
  return {
    ...(attempts !== undefined && /^\d+$/.test(attempts) && { attempts: Number(attempts) }),
    ...(rolledBack !== undefined && { rolledBack: rolledBack || 'rolled back by the prestart script' }),
  };
}

/**
 * update.json in memory: the machine state with its bookkeeping (bad versions,
 * reports not yet sent, the last refusal reported), written whole by `persist`.
 */
export class UpdateRecord {
  private readonly booked = new WeakSet<UpdateAction>();

  private constructor(
    private readonly stateDir: string,
    readonly file: UpdateFile,
    private readonly now: () => number,
    private readonly log: Logger,
  ) {}

  /** Limits are configuration, not state: this start's settings win over the stored ones. */
  static async open(
    stateDir: string,
    limits: Partial<UpdateLimits> | undefined,
    now: () => number,
    log: Logger,
  ): Promise<UpdateRecord> {
    const file = (await readUpdateFile(stateDir)) ?? newUpdateFile();
    file.machine = { ...file.machine, limits: { ...file.machine.limits, ...limits } };
    return new UpdateRecord(stateDir, file, now, log);
  }

  get machine(): UpdateState {
    return this.file.machine;
  }

  set machine(s: UpdateState) {
    this.file.machine = s;
  }

  persist(): Promise<void> {
    return writeUpdateFile(this.stateDir, this.file);
  }

  addReport(r: Omit<UpdateReport, 'at'>): void {
    this.file.unreported.push({ ...r, at: this.now() });
  }

  /** False when this refusal (manifest and code) was reported already; records it otherwise. */
  firstRefusal(key: string): boolean {
    if (this.file.lastRefusal === key) return false;
    this.file.lastRefusal = key;
    return true;
  }

  /** The first `n` reports are in the outbox now. */
  dropReported(n: number): void {
    this.file.unreported = this.file.unreported.slice(n);
  }

  /** Applies a bookkeeping action (remember-bad, report) in memory, once; true when something changed. */
  book(a: UpdateAction): boolean {
    if (this.booked.has(a)) return false;
    if (a[0] === 'remember-bad') {
      this.booked.add(a);
      if (!this.file.badVersions.includes(a[2])) this.file.badVersions.push(a[2]);
      return true;
    }
    if (a[0] === 'report') {
      this.booked.add(a);
      this.log.info('update.report', { ...a[1] });
      this.addReport(a[1]);
      return true;
    }
    return false;
  }
}
