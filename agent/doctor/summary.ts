/**
 * The diagnosis that goes home: a compact summary of a doctor report for the
 * signed heartbeat (core/heartbeat.ts `doctor`), and the agent's schedule for
 * running the read-only checks — daily by default, and after a failed update.
 * Each new summary goes home in a heartbeat of its own; the last is kept in
 * `<state>/doctor.json`, so a restart does not run the checks again before they are due.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { assertDoctorSummary, DOCTOR_LIMITS, type DoctorSummary } from '../../core/heartbeat.js';
import { isoUtc } from '../../core/time.js';
import { writeFileAtomic } from '../../platform/fsx.js';
import type { DoctorReport } from './types.js';

export const DEFAULT_DOCTOR_INTERVAL_SEC = 86_400;

const file = (stateDir: string) => join(stateDir, 'doctor.json');

export function summarize(r: DoctorReport): DoctorSummary {
  const rank = { fail: 0, warn: 1, ok: 2 } as const;
  const problems = r.checks
    .filter((c) => c.status !== 'ok')
    .sort((a, b) => rank[a.status] - rank[b.status])
    .slice(0, DOCTOR_LIMITS.maxProblems)
    .map((c) => ({
      id: c.id,
      status: c.status as 'warn' | 'fail',
      evidence:
        c.evidence.length > DOCTOR_LIMITS.maxEvidenceChars
          ? `${c.evidence.slice(0, DOCTOR_LIMITS.maxEvidenceChars - 1)}…`
          : c.evidence,
    }));
  return { at: isoUtc(r.at), ...r.counts, problems };
}

/** The last summary the agent made, or undefined (none yet, or a file that does not validate). */
export async function readLastSummary(stateDir: string): Promise<DoctorSummary | undefined> {
  try {
    const v = (JSON.parse(await readFile(file(stateDir), 'utf8')) as { summary?: unknown }).summary;
    assertDoctorSummary(v);
    return v;
  } catch {
    return undefined;
  }
}

export async function writeLastSummary(stateDir: string, s: DoctorSummary): Promise<void> {
  await writeFileAtomic(
    file(stateDir),
    JSON.stringify({ format: 'ferry.agent-doctor/v1', summary: s }) + '\n',
    {
      mode: 0o600,
    },
  );
}

/** Due when none ran yet, the interval has passed since the last, or an update just failed. */
export function doctorDue(
  last: DoctorSummary | undefined,
  now: number,
  intervalSec: number,
  updateFailed: boolean,
): boolean {
  if (updateFailed || !last) return true;
  return now - Date.parse(last.at) >= intervalSec * 1000;
}
