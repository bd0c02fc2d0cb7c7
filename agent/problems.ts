/**
 * Problems in the signed policies this agent runs under, kept where an
 * operator can see them: `<state>/policy-problems.json` (what `ferry agent
 * status` shows), a log line when a problem first appears or all clear, and
 * every heartbeat (as drift entries, see agent/report.ts) while it lasts.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../platform/fsx.js';
import type { Logger } from '../platform/log.js';
import type { PolicyProblem } from './desired.js';

export const PROBLEMS_FILE = 'policy-problems.json';

export interface ProblemsRecord {
  format: 'ferry.agent-policy-problems/v1';
  /** When the current set of problems was first seen (ms since the epoch). */
  since: number;
  problems: PolicyProblem[];
}

const key = (p: PolicyProblem) => `${p.sha256}\n${p.code}\n${p.message}`;

/** The recorded problems; an absent or unreadable file reads as none. */
export async function readPolicyProblems(stateDir: string): Promise<ProblemsRecord | undefined> {
  try {
    const v = JSON.parse(await readFile(join(stateDir, PROBLEMS_FILE), 'utf8')) as ProblemsRecord;
    return v.format === 'ferry.agent-policy-problems/v1' && Array.isArray(v.problems) ? v : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Records this cycle's problems. Logs each one not recorded before (warn
 * `policy.invalid` with its code) and the moment none are left; the file is
 * rewritten only when the set changes.
 */
export async function recordPolicyProblems(
  stateDir: string,
  problems: readonly PolicyProblem[],
  log: Logger,
  now: number,
): Promise<void> {
  const before = (await readPolicyProblems(stateDir))?.problems ?? [];
  const had = new Set(before.map(key));
  const has = new Set(problems.map(key));
  const fresh = problems.filter((p) => !had.has(key(p)));
  for (const p of fresh)
    log.warn('policy.invalid', { policy: p.policy, sha256: p.sha256, code: p.code, reason: p.message });
  if (fresh.length === 0 && had.size === has.size) return; // same set as recorded
  if (problems.length === 0) log.info('policy.problems_cleared', { cleared: before.length });
  const record: ProblemsRecord = {
    format: 'ferry.agent-policy-problems/v1',
    since: now,
    problems: [...problems],
  };
  await writeFileAtomic(join(stateDir, PROBLEMS_FILE), JSON.stringify(record) + '\n');
}
