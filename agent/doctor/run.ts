/**
 * `ferry agent doctor`: every check, in the order a person reads them, against
 * one snapshot of the state directory. Only reads; the mirror probes are
 * read-only requests. With every mirror unreachable those checks say so and
 * the rest run as usual.
 */
import { loadContext } from './context.js';
import { checkBinary, checkManifest, checkOutbox, checkUpdate } from './checks-data.js';
import { checkCache, checkFiles, checkTemps } from './checks-disk.js';
import { checkClock, checkConfig, checkKey, checkRoot, checkState, checkStateDir } from './checks-node.js';
import { checkInterpreters, checkUnit } from './checks-system.js';
import { checkMirrors, probeMirrors } from './mirrors.js';
import { counts, errText, type CheckResult, type DoctorOptions, type DoctorReport } from './types.js';

/** Runs one check; a check that throws is itself a failure, never the end of the run. */
async function guarded(id: string, f: () => CheckResult | Promise<CheckResult>): Promise<CheckResult> {
  try {
    return await f();
  } catch (e) {
    return {
      id,
      title: id,
      status: 'fail',
      evidence: `the check itself failed: ${errText(e)}`,
      fix: 'see the evidence',
    };
  }
}

export async function runDoctor(o: DoctorOptions): Promise<DoctorReport> {
  const c = await loadContext(o);
  const probes = await probeMirrors(c).catch(() => []);
  const checks: CheckResult[] = [];
  const plan: [string, () => CheckResult | Promise<CheckResult>][] = [
    ['config', () => checkConfig(c)],
    ['state-dir', () => checkStateDir(c)],
    ['state', () => checkState(c)],
    ['key', () => checkKey(c)],
    ['root', () => checkRoot(c)],
    ['clock', () => checkClock(c, probes)],
    ['mirrors', () => checkMirrors(c, probes)],
    ['manifest', () => checkManifest(c, probes)],
    ['binary', () => checkBinary(c)],
    ['update', () => checkUpdate(c)],
    ['outbox', () => checkOutbox(c)],
    ['files', () => checkFiles(c)],
    ['cache', () => checkCache(c)],
    ['temp', () => checkTemps(c)],
    ['unit', () => checkUnit(c)],
    ['interpreters', () => checkInterpreters(c)],
  ];
  for (const [id, f] of plan) checks.push(await guarded(id, f));
  return { at: c.now, checks, counts: counts(checks) };
}

/** The one-line verdict under the list, as flutter doctor ends. */
export function summaryLine(r: DoctorReport): string {
  const { ok, warn, fail } = r.counts;
  if (fail === 0 && warn === 0) return `• No issues found! (${ok} checks passed)`;
  const parts = [fail && `${fail} failed`, warn && `${warn} warning${warn === 1 ? '' : 's'}`].filter(Boolean);
  return `! Doctor found issues in ${fail + warn} of ${r.checks.length} checks: ${parts.join(', ')}.`;
}

const MARK = { ok: '[✓]', warn: '[!]', fail: '[✗]' } as const;

/** One line per check (and its fix, indented, when it is not ok). */
export function reportLines(r: DoctorReport): string[] {
  const out: string[] = [];
  for (const c of r.checks) {
    out.push(`${MARK[c.status]} ${c.id}: ${c.evidence}`);
    if (c.status !== 'ok' && c.fix) out.push(`    fix: ${c.fix}`);
  }
  return out;
}
