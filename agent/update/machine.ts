/**
 * The agent self-update state machine, free of I/O: step(state, event, now) →
 * { state, actions }. The driver persists the returned state atomically, then
 * performs the actions in order; it feeds back what happened as events and
 * feeds `tick` with the clock so deadlines fire. A step never throws: an event
 * the current phase does not accept changes nothing and yields `ignored`.
 *
 *   idle → downloading → verifying → staged → self-testing → swapping → pending
 *   (old binary exits; the supervisor starts the new one) → health-checking
 *   → committed | rolled-back
 *
 * Failures before the swap go back to idle and nothing on the host changes.
 * After the swap, every start of the new binary counts; more than maxAttempts
 * starts without a commit, a failed health check or a missed deadline switch
 * `current` back to the previous version and remember the version as bad. The
 * starts are counted outside the new code by systemd/ferry-agent-prestart.sh,
 * which also switches back by itself when the new binary never gets this far.
 */
import { compareSemver, parseSemver } from '../../core/semver.js';
import { badVersionKey } from './version-choice.js';

export type Phase =
  | 'idle'
  | 'downloading'
  | 'verifying'
  | 'staged'
  | 'self-testing'
  | 'swapping'
  | 'pending'
  | 'health-checking'
  | 'committed'
  | 'rolled-back';

export interface UpdateLimits {
  /** Starts of the new binary allowed without a commit. */
  maxAttempts: number;
  selfTestMs: number;
  /** From a start of the new binary to a passing health check. */
  healthMs: number;
  /** How long the new binary must keep running after its health check passed. */
  soakMs: number;
}

export const DEFAULT_LIMITS: UpdateLimits = {
  maxAttempts: 3,
  selfTestMs: 60_000,
  healthMs: 120_000,
  soakMs: 600_000,
};

export interface UpdateState {
  phase: Phase;
  /** The version being installed, committed or rolled back; null when idle from the start. */
  version: string | null;
  /** The version that ran before, the rollback target. */
  previous: string | null;
  /** Digest of the manifest that offered `version`, scope of the bad-version memory. */
  payloadDigest: string | null;
  /** Starts of the new binary since the swap. */
  attempts: number;
  /** Self-test or health-check deadline (ms since epoch). */
  deadline: number | null;
  /** Set once the health check passed: commit when reached. */
  soakUntil: number | null;
  highestCommitted: string | null;
  /** highestCommitted before this update, restored by a rollback. */
  highestBefore: string | null;
  limits: UpdateLimits;
}

export type UpdateEvent =
  | { type: 'begin'; version: string; from: string; payloadDigest: string }
  | { type: 'download-done' }
  | { type: 'download-failed'; reason: string }
  | { type: 'verify-ok' }
  | { type: 'verify-failed'; reason: string }
  | { type: 'stage-done' }
  /** Staging failed on this node (e.g. ENOSPC): nothing was swapped; says nothing about the version. */
  | { type: 'stage-failed'; reason: string }
  | { type: 'self-test-ok' }
  | { type: 'self-test-failed'; reason: string }
  | { type: 'self-test-timeout' }
  | { type: 'swapped' }
  /**
   * A start of the agent binary, with the version that is running and, when the
   * prestart script counted it (pending.attempts), the starts since the swap.
   */
  | { type: 'started'; version: string; attempts?: number }
  /** The prestart script already switched `current` back before this start (pending.rolledback). */
  | { type: 'boot-rolled-back'; reason: string }
  | { type: 'health-ok' }
  | { type: 'health-failed'; reason: string }
  | { type: 'soak-elapsed' }
  | { type: 'crashed'; reason: string }
  | { type: 'manual-rollback'; reason: string }
  | { type: 'tick' };

export interface Report {
  /** `healthy`: the health check passed and the soak began; the rest end an update. */
  outcome: 'healthy' | 'committed' | 'rolled-back' | 'failed' | 'interrupted';
  /** The phase in which it ended. */
  phase: Phase;
  version: string;
  reason: string;
}

export interface PendingRecord {
  version: string;
  previous: string;
}

export type UpdateAction =
  | readonly ['download', string]
  | readonly ['verify', string]
  | readonly ['stage', string]
  | readonly ['self-test', string]
  | readonly ['discard-staged', string]
  | readonly ['write-pending-record', PendingRecord]
  | readonly ['swap', string]
  /** Exit so the supervisor starts whatever `current` points at. */
  | readonly ['exit']
  | readonly ['run-health-checks', string]
  | readonly ['remove-pending-record']
  | readonly ['keep-previous', string]
  | readonly ['switch-current-to', string]
  /** version, and the key `badVersionKey(payloadDigest, version)` for the policy. */
  | readonly ['remember-bad', string, string]
  | readonly ['report', Report]
  | readonly ['ignored', { phase: Phase; event: UpdateEvent['type'] }];

export interface Step {
  state: UpdateState;
  actions: UpdateAction[];
}

export function initialUpdateState(
  o: { highestCommitted?: string | null; limits?: Partial<UpdateLimits> } = {},
): UpdateState {
  return {
    phase: 'idle',
    version: null,
    previous: null,
    payloadDigest: null,
    attempts: 0,
    deadline: null,
    soakUntil: null,
    highestCommitted: o.highestCommitted ?? null,
    highestBefore: null,
    limits: { ...DEFAULT_LIMITS, ...o.limits },
  };
}

const PRE_SWAP: readonly Phase[] = ['downloading', 'verifying', 'staged', 'self-testing'];

export function step(s: UpdateState, e: UpdateEvent, now: number): Step {
  const ignored = (): Step => ({ state: s, actions: [['ignored', { phase: s.phase, event: e.type }]] });
  const to = (patch: Partial<UpdateState>, ...actions: UpdateAction[]): Step => ({
    state: { ...s, ...patch },
    actions,
  });
  const v = s.version;
  const prev = s.previous;
  if (e.type === 'begin') {
    if (s.phase !== 'idle' && s.phase !== 'committed' && s.phase !== 'rolled-back') return ignored();
    return {
      state: {
        ...s,
        phase: 'downloading',
        version: e.version,
        previous: e.from,
        payloadDigest: e.payloadDigest,
        attempts: 0,
        deadline: null,
        soakUntil: null,
        highestBefore: s.highestCommitted,
      },
      actions: [['download', e.version]],
    };
  }
  // Every other event concerns an update in flight or just finished.
  if (v === null || prev === null) return ignored();

  const report = (outcome: Report['outcome'], reason: string, phase: Phase = s.phase): UpdateAction => [
    'report',
    { outcome, phase, version: v, reason },
  ];
  /** Before the swap: the host never changed; drop the staged copy and go idle. */
  const abandon = (reason: string, bad: boolean): Step =>
    to(
      { phase: 'idle', deadline: null },
      ['discard-staged', v],
      ...(bad ? [rememberBad(s, v)] : []),
      report('failed', reason),
    );
  /** After the swap: back to the previous version, and never this one again under this manifest. */
  const rollback = (reason: string, pendingRecord = true): Step =>
    to(
      { phase: 'rolled-back', deadline: null, soakUntil: null, highestCommitted: s.highestBefore },
      // remembered first: a crash between these actions must not lead to a retry
      rememberBad(s, v),
      ['switch-current-to', prev],
      ...(pendingRecord ? [['remove-pending-record'] as const] : []),
      report('rolled-back', reason),
      ['exit'],
    );
  const startHealth = (attempts: number): Step =>
    attempts > s.limits.maxAttempts
      ? rollback(`${v} started ${attempts} times without a commit (max ${s.limits.maxAttempts})`)
      : to({ phase: 'health-checking', attempts, deadline: now + s.limits.healthMs, soakUntil: null }, [
          'run-health-checks',
          v,
        ]);
  /** The prestart script switched `current` back already: record, report, clean up; no exit. */
  const bootRolledBack = (reason: string): Step =>
    to(
      { phase: 'rolled-back', deadline: null, soakUntil: null, highestCommitted: s.highestBefore },
      rememberBad(s, v),
      ['remove-pending-record'],
      report('rolled-back', `${v} ${reason}`),
    );
  const commit = (): Step =>
    to(
      {
        phase: 'committed',
        deadline: null,
        soakUntil: null,
        highestCommitted: maxVersion(s.highestCommitted, v),
      },
      ['remove-pending-record'],
      ['keep-previous', prev],
      report('committed', `${v} passed its health checks and soak`),
    );

  switch (s.phase) {
    case 'downloading':
      if (e.type === 'download-done') return to({ phase: 'verifying' }, ['verify', v]);
      if (e.type === 'download-failed') return abandon(`download failed: ${e.reason}`, false);
      break;
    case 'verifying':
      if (e.type === 'verify-ok') return to({ phase: 'staged' }, ['stage', v]);
      // Bytes that do not match the signed digest say nothing about the version.
      if (e.type === 'verify-failed') return abandon(`verification failed: ${e.reason}`, false);
      break;
    case 'staged':
      if (e.type === 'stage-done')
        return to({ phase: 'self-testing', deadline: now + s.limits.selfTestMs }, ['self-test', v]);
      if (e.type === 'stage-failed') return abandon(`staging failed: ${e.reason}`, false);
      break;
    case 'self-testing':
      if (e.type === 'self-test-ok')
        return to(
          { phase: 'swapping', deadline: null },
          // the record exists before `current` changes, so the new binary always finds it
          ['write-pending-record', { version: v, previous: prev }],
          ['swap', v],
        );
      if (e.type === 'self-test-failed') return abandon(`self-test failed: ${e.reason}`, true);
      if (e.type === 'self-test-timeout' || (e.type === 'tick' && pastDeadline(s, now)))
        return abandon(`self-test did not finish within ${s.limits.selfTestMs} ms`, true);
      break;
    case 'swapping':
      if (e.type === 'swapped') return to({ phase: 'pending' }, ['exit']);
      // Restarted before the driver saw the swap finish: the running version says whether it did.
      if (e.type === 'started' && e.version === v) return startHealth(e.attempts ?? s.attempts + 1);
      if (e.type === 'boot-rolled-back') return bootRolledBack(e.reason);
      if (e.type === 'started' && e.version === prev)
        return to(
          { phase: 'idle' },
          ['remove-pending-record'],
          ['discard-staged', v],
          report('interrupted', 'restarted during the swap; current still points at the previous version'),
        );
      break;
    case 'pending':
    case 'health-checking':
      if (e.type === 'started' && e.version === v) return startHealth(e.attempts ?? s.attempts + 1);
      if (e.type === 'boot-rolled-back') return bootRolledBack(e.reason);
      if (e.type === 'started')
        // Something else already put another binary in place; no evidence against this version.
        return to(
          { phase: 'rolled-back', deadline: null, soakUntil: null, highestCommitted: s.highestBefore },
          ['remove-pending-record'],
          report('interrupted', `expected ${v} to start, but ${e.version} started`),
        );
      if (e.type === 'manual-rollback') return rollback(`manual rollback: ${e.reason}`);
      if (s.phase === 'pending') break;
      if (e.type === 'crashed')
        return s.attempts >= s.limits.maxAttempts
          ? rollback(`${v} crashed (${e.reason}) after ${s.attempts} starts`)
          : to({ phase: 'pending', deadline: null, soakUntil: null }, ['exit']);
      if (e.type === 'health-failed') return rollback(`health check failed: ${e.reason}`);
      if (s.soakUntil === null) {
        if (e.type === 'health-ok')
          return to({ deadline: null, soakUntil: now + s.limits.soakMs }, [
            'report',
            {
              outcome: 'healthy',
              phase: 'health-checking',
              version: v,
              reason: `soaking ${s.limits.soakMs} ms`,
            },
          ]);
        if (e.type === 'tick' && pastDeadline(s, now))
          return rollback(`no passing health check within ${s.limits.healthMs} ms`);
      } else if (e.type === 'soak-elapsed' || (e.type === 'tick' && now >= s.soakUntil)) {
        return commit();
      }
      break;
    case 'committed':
      if (e.type === 'manual-rollback') return rollback(`manual rollback: ${e.reason}`, false);
      break;
    case 'rolled-back':
      // Restarted before `current` was switched back (crash mid-rollback): switch again.
      if (e.type === 'started' && e.version === v) return to({}, ['switch-current-to', prev], ['exit']);
      // Recorded already (a crash before the pending files were removed): only clean up.
      if (e.type === 'boot-rolled-back') return to({}, ['remove-pending-record']);
      break;
    case 'idle':
      break;
  }
  if (e.type === 'started' && PRE_SWAP.includes(s.phase))
    // The agent restarted mid-update; `current` never changed. Start over later.
    return to(
      { phase: 'idle', deadline: null },
      ['discard-staged', v],
      report('interrupted', `agent restarted while ${s.phase}`),
    );
  // A tick is welcome in every phase; it only acts when a deadline has passed.
  if (e.type === 'tick') return { state: s, actions: [] };
  return ignored();
}

function pastDeadline(s: UpdateState, now: number): boolean {
  return s.deadline !== null && now >= s.deadline;
}

function rememberBad(s: UpdateState, v: string): UpdateAction {
  return ['remember-bad', v, badVersionKey(s.payloadDigest ?? '', v)];
}

function maxVersion(a: string | null, b: string): string {
  if (a === null) return b;
  return compareSafe(a, b) >= 0 ? a : b;
}

/** compareSemver, but a corrupt stored value must not make step() throw. */
function compareSafe(a: string, b: string): number {
  const pa = parseSemver(a);
  const pb = parseSemver(b);
  if (!pa || !pb) return pa ? 1 : -1;
  return compareSemver(a, b);
}
