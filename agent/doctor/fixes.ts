/**
 * `ferry agent doctor --fix [--dry-run]`: named remediation patterns, each
 * tied to the check it mends. A pattern first plans (what exactly it would
 * change, in words) and only then applies; `--dry-run` stops after planning
 * and changes nothing. A real run refuses while the agent runs (it holds
 * `agent.lock` for as long as it does), takes that lock itself, applies, then
 * runs every check again and says which fix did not take.
 *
 * What a fix may touch: the state directory, the install directory, and the
 * managed files the signed, verified policy names. Nothing else.
 */
import { chmod, rm } from 'node:fs/promises';
import { FerryError } from '../../core/errors.js';
import { acquireLock } from '../../platform/lock.js';
import { readAgentState, writeAgentState } from '../agent-state.js';
import { blobCachePath } from '../fetch.js';
import { checkFile, placeFile } from '../files.js';
import { AgentOutbox, compactionPlan, DEFAULT_OUTBOX_LIMITS, listOutbox } from '../outbox.js';
import { loadContext, type DoctorContext } from './context.js';
import { corruptBlobs, staleTemps } from './checks-disk.js';
import { keyPathOf } from './checks-node.js';
import { agentLockPath, runningAgent } from './holder.js';
import { runDoctor } from './run.js';
import { planUpdateSettlement } from './settle-update.js';
import { errText, type CheckResult, type DoctorOptions, type DoctorReport } from './types.js';

export interface Change {
  /** The pattern that plans it. */
  pattern: string;
  /** The check it mends. */
  check: string;
  what: string;
  apply: () => Promise<void>;
}

interface Pattern {
  id: string;
  check: string;
  plan: (c: DoctorContext) => Promise<{ what: string; apply: () => Promise<void> }[]>;
}

const PATTERNS: Pattern[] = [
  {
    id: 'key-mode',
    check: 'key',
    plan: (c) => {
      const p = keyPathOf(c.stateDir);
      return Promise.resolve([{ what: `chmod 600 ${p}`, apply: () => chmod(p, 0o600) }]);
    },
  },
  {
    id: 'state-migrate',
    check: 'state',
    plan: (c) =>
      Promise.resolve([
        {
          what: `rewrite ${c.stateDir}/state.json in the current format (one sequence mark, signed time kept)`,
          apply: async () => {
            const s = await readAgentState(c.stateDir); // migrates on read
            if (s) await writeAgentState(c.stateDir, s);
          },
        },
      ]),
  },
  {
    id: 'update-stale',
    check: 'update',
    plan: async (c) => {
      const s = await planUpdateSettlement({
        stateDir: c.stateDir,
        installRoot: c.o.installRoot,
        now: c.now,
      });
      if (!s) return [];
      const [first, ...rest] = s.describe;
      return [{ what: [first, ...rest.map((w) => `  then ${w}`)].join('\n'), apply: s.apply }];
    },
  },
  {
    id: 'temp-files',
    check: 'temp',
    plan: async (c) =>
      (await staleTemps(c)).map((p) => ({ what: `remove ${p}`, apply: () => rm(p, { force: true }) })),
  },
  {
    id: 'file-drift',
    check: 'files',
    plan: async (c) => {
      const out: { what: string; apply: () => Promise<void> }[] = [];
      for (const f of c.desired?.files ?? []) {
        const status = await checkFile(f.entry, f.artifact.sha256).catch(() => 'drift');
        if (status === 'ok') continue;
        const blob = blobCachePath(c.cacheDir, f.artifact.sha256);
        out.push({
          what: `restore ${f.entry.path} (${status}) from ${blob}, mode ${f.entry.mode}`,
          apply: () => placeFile(f.entry, blob, f.artifact.sha256),
        });
      }
      return out;
    },
  },
  {
    id: 'cache-corrupt',
    check: 'cache',
    plan: async (c) =>
      (await corruptBlobs(c)).corrupt.map((n) => {
        const p = blobCachePath(c.cacheDir, n);
        return {
          what: `delete ${p} (bytes do not hash to its name; fetched again on the next poll)`,
          apply: () => rm(p, { force: true }),
        };
      }),
  },
  {
    id: 'outbox-compact',
    check: 'outbox',
    plan: async (c) => {
      const { entries, temps } = await listOutbox(c.stateDir);
      const { drop } = compactionPlan(entries, DEFAULT_OUTBOX_LIMITS);
      if (drop.length === 0) return [];
      const what =
        `drop the ${drop.length} oldest heartbeat(s) from the outbox (seq ${drop[0]}…${drop.at(-1)}); results and update reports stay` +
        (temps.length ? `, and remove ${temps.length} torn temp file(s) there` : '');
      return [
        {
          what,
          apply: async () => {
            await (await AgentOutbox.open(c.stateDir)).compact();
          },
        },
      ];
    },
  },
];

export const PATTERN_IDS = PATTERNS.map((p) => p.id);

/** Every change the patterns plan for the checks that are not ok, in check order. */
export async function planFixes(c: DoctorContext, report: DoctorReport): Promise<Change[]> {
  const out: Change[] = [];
  for (const r of report.checks) {
    if (r.status === 'ok' || !r.fixable) continue;
    const p = PATTERNS.find((x) => x.id === r.fixable && x.check === r.id);
    if (!p) continue;
    for (const ch of await p.plan(c)) out.push({ pattern: p.id, check: p.check, ...ch });
  }
  return out;
}

export interface FixOutcome {
  dryRun: boolean;
  before: DoctorReport;
  planned: { pattern: string; check: string; what: string }[];
  /** Real runs: each change and whether it was applied. */
  applied?: { pattern: string; check: string; what: string; ok: boolean; error?: string }[];
  after?: DoctorReport;
  /** Checks a fix was planned for that are still not ok afterwards. */
  didNotTake?: CheckResult[];
  /** Everything still not ok afterwards (fixed or not, fixable or not). */
  stillWrong?: CheckResult[];
}

/** Plans (and unless `dryRun`, applies) the fixes for what the checks find. */
export async function runFixes(o: DoctorOptions, dryRun: boolean): Promise<FixOutcome> {
  const pid = await runningAgent(o.stateDir);
  if (pid !== undefined && !dryRun)
    throw new FerryError(
      'AGENT_RUNNING',
      `the agent runs on ${o.stateDir} (pid ${pid}); stop it first (systemctl stop ferry-agent), then run --fix again`,
    );
  let release: (() => Promise<void>) | undefined;
  if (!dryRun) {
    try {
      release = await acquireLock(agentLockPath(o.stateDir), { timeoutMs: 0 });
    } catch (e) {
      throw new FerryError(
        'AGENT_RUNNING',
        `${agentLockPath(o.stateDir)} is held: ${errText(e)}; stop the agent first`,
      );
    }
  }
  try {
    const before = await runDoctor(o);
    const c = await loadContext(o);
    const changes = await planFixes(c, before);
    const planned = changes.map(({ pattern, check, what }) => ({ pattern, check, what }));
    if (dryRun) return { dryRun, before, planned };
    const applied: NonNullable<FixOutcome['applied']> = [];
    for (const ch of changes) {
      try {
        await ch.apply();
        applied.push({ pattern: ch.pattern, check: ch.check, what: ch.what, ok: true });
      } catch (e) {
        applied.push({ pattern: ch.pattern, check: ch.check, what: ch.what, ok: false, error: errText(e) });
      }
    }
    const after = await runDoctor(o);
    const mended = new Set(changes.map((ch) => ch.check));
    const stillWrong = after.checks.filter((r) => r.status !== 'ok');
    return {
      dryRun,
      before,
      planned,
      applied,
      after,
      didNotTake: stillWrong.filter((r) => mended.has(r.id)),
      stillWrong,
    };
  } finally {
    await release?.();
  }
}
