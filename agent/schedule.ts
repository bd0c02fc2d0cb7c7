/**
 * Which scripts are due: a pure function of (policy, groups, digests, run
 * history, now). The agent's driver persists the history (in state.json) and
 * calls this on each tick, connected or not, so scheduled scripts keep their
 * schedule across restarts and disconnection.
 */
import { appliesTo, parseSchedule, type Policy } from '../core/policy.js';

export interface RunRecord {
  /** sha256 of the script artifact that ran. */
  digest: string;
  /** Epoch ms when the run started. */
  lastRunAt: number;
  /** Exit code, or null when the run was killed by a signal. */
  lastExit: number | null;
}

export type RunHistory = Record<string, RunRecord>;

export type DueReason = 'first-run' | 'digest-changed' | 'interval' | 'boot';

export interface DueScript {
  script: string;
  reason: DueReason;
}

export interface DueOptions {
  /**
   * Epoch ms at which this agent process started. `boot` scripts are due when
   * their last run is older than this. Without it, `boot` scripts run only on
   * first run or when their digest changes.
   */
  bootAt?: number;
}

/**
 * Scripts due at `now`, in policy order.
 *
 * * `once`: on first run, then again only when the script's digest changes.
 * * `boot`: like `once`, and also once per agent start (see `bootAt`).
 * * `every N`: on first run, then when `now >= lastRunAt + N`. A digest change
 *   does not reset the schedule. A forward clock jump runs the script once (no
 *   catch-up of missed runs). A backward jump larger than N runs it once (the
 *   record is from the "future"); a smaller one delays the next run by at most N.
 *
 * Scripts whose digest is unknown (artifact not in the verified manifest) and
 * entries that do not apply to `agentGroups` are never due.
 */
export function dueScripts(
  policy: Pick<Policy, 'scripts'>,
  agentGroups: readonly string[],
  scriptDigests: ReadonlyMap<string, string>,
  history: Readonly<RunHistory>,
  now: number,
  opts: DueOptions = {},
): DueScript[] {
  const due: DueScript[] = [];
  for (const entry of policy.scripts) {
    if (!appliesTo(entry.groups, agentGroups)) continue;
    const digest = scriptDigests.get(entry.script);
    const schedule = parseSchedule(entry.schedule);
    if (digest === undefined || schedule === undefined) continue;
    const last = Object.hasOwn(history, entry.script) ? history[entry.script] : undefined;
    if (last === undefined) {
      due.push({ script: entry.script, reason: 'first-run' });
      continue;
    }
    switch (schedule.kind) {
      case 'once':
        if (last.digest !== digest) due.push({ script: entry.script, reason: 'digest-changed' });
        break;
      case 'boot':
        if (last.digest !== digest) due.push({ script: entry.script, reason: 'digest-changed' });
        else if (opts.bootAt !== undefined && last.lastRunAt < opts.bootAt)
          due.push({ script: entry.script, reason: 'boot' });
        break;
      case 'every':
        if (now >= last.lastRunAt + schedule.intervalMs || now < last.lastRunAt - schedule.intervalMs)
          due.push({ script: entry.script, reason: 'interval' });
        break;
    }
  }
  return due;
}

/**
 * Earliest epoch ms at which an `every` script applying to this agent becomes
 * due (never earlier than `now`), or undefined when none is scheduled; lets the
 * driver sleep until then instead of polling.
 */
export function nextDueAt(
  policy: Pick<Policy, 'scripts'>,
  agentGroups: readonly string[],
  scriptDigests: ReadonlyMap<string, string>,
  history: Readonly<RunHistory>,
  now: number,
): number | undefined {
  let next: number | undefined;
  for (const entry of policy.scripts) {
    const schedule = parseSchedule(entry.schedule);
    if (schedule?.kind !== 'every' || !appliesTo(entry.groups, agentGroups)) continue;
    if (!scriptDigests.has(entry.script)) continue;
    const last = Object.hasOwn(history, entry.script) ? history[entry.script] : undefined;
    let at = last === undefined ? now : last.lastRunAt + schedule.intervalMs;
    if (last !== undefined && now < last.lastRunAt - schedule.intervalMs) at = now;
    at = Math.max(at, now);
    next = next === undefined ? at : Math.min(next, at);
  }
  return next;
}
