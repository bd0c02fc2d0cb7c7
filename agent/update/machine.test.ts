import { describe, expect, it } from 'vitest';
import { badVersionKey } from './version-choice.js';
import {
  initialUpdateState,
  step,
  type Phase,
  type UpdateAction,
  type UpdateEvent,
  type UpdateState,
} from './machine.js';

const T0 = Date.parse('2026-11-22T10:00:00Z');
const DIGEST = 'd1'.repeat(32);
const BAD_V2 = badVersionKey(DIGEST, '2.0.0');
const begin: UpdateEvent = { type: 'begin', version: '2.0.0', from: '1.0.0', payloadDigest: DIGEST };

/** Feeds events in order at T0 + offset ms; returns the last state and every action. */
function run(s: UpdateState, events: (UpdateEvent | [number, UpdateEvent])[]) {
  const actions: UpdateAction[][] = [];
  for (const ev of events) {
    const [at, e] = Array.isArray(ev) ? ev : [0, ev];
    const r = step(s, e, T0 + at);
    s = r.state;
    actions.push(r.actions);
  }
  return { state: s, actions, last: actions.at(-1) ?? [] };
}

const init = () => initialUpdateState({ highestCommitted: '1.0.0' });
const toSelfTest: UpdateEvent[] = [
  begin,
  { type: 'download-done' },
  { type: 'verify-ok' },
  { type: 'stage-done' },
];
const toPending: UpdateEvent[] = [...toSelfTest, { type: 'self-test-ok' }, { type: 'swapped' }];
const started2: UpdateEvent = { type: 'started', version: '2.0.0' };
const toHealth: UpdateEvent[] = [...toPending, started2];
const atPhase = (events: UpdateEvent[]) => run(init(), events).state;

const rolledBack = (reason: RegExp, phase: Phase, pendingRecord = true): UpdateAction[] => [
  ['remember-bad', '2.0.0', BAD_V2],
  ['switch-current-to', '1.0.0'],
  ...(pendingRecord ? [['remove-pending-record'] as const] : []),
  [
    'report',
    { outcome: 'rolled-back', phase, version: '2.0.0', reason: expect.stringMatching(reason) as string },
  ],
  ['exit'],
];

describe('agent self-update machine', () => {
  it('happy path 1.0.0 → 2.0.0: every phase, its actions, then commit', () => {
    const r = run(init(), [
      begin,
      { type: 'download-done' },
      { type: 'verify-ok' },
      [5, { type: 'stage-done' }],
      [10, { type: 'self-test-ok' }],
      [11, { type: 'swapped' }],
      [1000, started2],
      [2000, { type: 'health-ok' }],
      [2000 + 600_000, { type: 'soak-elapsed' }],
    ]);
    expect(r.actions).toEqual([
      [['download', '2.0.0']],
      [['verify', '2.0.0']],
      [['stage', '2.0.0']],
      [['self-test', '2.0.0']],
      [
        ['write-pending-record', { version: '2.0.0', previous: '1.0.0' }],
        ['swap', '2.0.0'],
      ],
      [['exit']],
      [['run-health-checks', '2.0.0']],
      [
        [
          'report',
          { outcome: 'healthy', phase: 'health-checking', version: '2.0.0', reason: 'soaking 600000 ms' },
        ],
      ],
      [
        ['remove-pending-record'],
        ['keep-previous', '1.0.0'],
        [
          'report',
          {
            outcome: 'committed',
            phase: 'health-checking',
            version: '2.0.0',
            reason: expect.any(String) as string,
          },
        ],
      ],
    ]);
    expect(r.state).toMatchObject({
      phase: 'committed',
      version: '2.0.0',
      previous: '1.0.0',
      attempts: 1,
      highestCommitted: '2.0.0',
      deadline: null,
      soakUntil: null,
    });
  });

  it('walks the phases in the documented order', () => {
    const phases: Phase[] = [];
    let s = init();
    for (const e of [...toHealth, { type: 'health-ok' } as const, { type: 'soak-elapsed' } as const]) {
      s = step(s, e, T0).state;
      phases.push(s.phase);
    }
    expect(phases).toEqual([
      'downloading',
      'verifying',
      'staged',
      'self-testing',
      'swapping',
      'pending',
      'health-checking',
      'health-checking',
      'committed',
    ]);
  });

  it.each<[string, UpdateEvent | [number, UpdateEvent], RegExp]>([
    ['self-test failed', { type: 'self-test-failed', reason: 'exit 3' }, /self-test failed: exit 3/],
    ['self-test timeout event', { type: 'self-test-timeout' }, /within 60000 ms/],
    ['self-test deadline passed on tick', [60_000, { type: 'tick' }], /within 60000 ms/],
  ])('%s: never swaps, remembers the version, goes idle', (_name, ev, reason) => {
    const r = run(init(), [...toSelfTest, ev]);
    expect(r.last).toEqual([
      ['discard-staged', '2.0.0'],
      ['remember-bad', '2.0.0', BAD_V2],
      [
        'report',
        {
          outcome: 'failed',
          phase: 'self-testing',
          version: '2.0.0',
          reason: expect.stringMatching(reason) as string,
        },
      ],
    ]);
    expect(r.state).toMatchObject({ phase: 'idle', highestCommitted: '1.0.0', deadline: null });
    expect(r.actions.flat().some((a) => a[0] === 'swap' || a[0] === 'switch-current-to')).toBe(false);
  });

  it.each<[string, UpdateEvent[], UpdateEvent, Phase, RegExp]>([
    [
      'download failure',
      [begin],
      { type: 'download-failed', reason: 'mirror down' },
      'downloading',
      /mirror down/,
    ],
    [
      'verification failure',
      [begin, { type: 'download-done' }],
      { type: 'verify-failed', reason: 'sha256 mismatch' },
      'verifying',
      /sha256 mismatch/,
    ],
  ])('%s: goes idle without remembering the version as bad', (_name, before, ev, phase, reason) => {
    const r = run(init(), [...before, ev]);
    expect(r.last).toEqual([
      ['discard-staged', '2.0.0'],
      [
        'report',
        { outcome: 'failed', phase, version: '2.0.0', reason: expect.stringMatching(reason) as string },
      ],
    ]);
    expect(r.state.phase).toBe('idle');
  });

  it('a crash loop after the swap rolls back on the start after maxAttempts', () => {
    let s = atPhase(toPending);
    for (let n = 1; n <= 3; n++) {
      const r = step(s, started2, T0 + n);
      expect(r.actions).toEqual([['run-health-checks', '2.0.0']]);
      expect(r.state).toMatchObject({ phase: 'health-checking', attempts: n });
      s = r.state; // the new binary dies before the health check; the supervisor starts it again
    }
    const r = step(s, started2, T0 + 4);
    expect(r.actions).toEqual(rolledBack(/started 4 times without a commit \(max 3\)/, 'health-checking'));
    expect(r.state).toMatchObject({ phase: 'rolled-back', highestCommitted: '1.0.0' });
  });

  it('honours a configured maxAttempts', () => {
    const s = initialUpdateState({ limits: { maxAttempts: 1 } });
    const r = run(s, [...toHealth, started2]);
    expect(r.state.phase).toBe('rolled-back');
  });

  it('a reported crash exits for a restart, and rolls back once attempts are used up', () => {
    const crash: UpdateEvent = { type: 'crashed', reason: 'SIGSEGV' };
    const r1 = run(init(), [...toHealth, crash]);
    expect(r1.last).toEqual([['exit']]);
    expect(r1.state).toMatchObject({ phase: 'pending', attempts: 1 });
    const r3 = run(init(), [...toHealth, crash, started2, crash, started2, crash]);
    expect(r3.last).toEqual(rolledBack(/crashed \(SIGSEGV\) after 3 starts/, 'health-checking'));
  });

  it('a crash during the soak restarts the soak, not the count', () => {
    const r = run(init(), [
      ...toHealth,
      [10, { type: 'health-ok' }],
      [20, { type: 'crashed', reason: 'oom' }],
      [30, started2],
    ]);
    expect(r.state).toMatchObject({ phase: 'health-checking', attempts: 2, soakUntil: null });
    // the old soak end is no longer a commit
    expect(step(r.state, { type: 'soak-elapsed' }, T0 + 700_000).actions[0]?.[0]).toBe('ignored');
  });

  it.each<[string, UpdateEvent | [number, UpdateEvent], RegExp]>([
    [
      'health check failed',
      { type: 'health-failed', reason: 'mirror unreachable' },
      /health check failed: mirror/,
    ],
    [
      'health deadline passed on tick',
      [120_000, { type: 'tick' }],
      /no passing health check within 120000 ms/,
    ],
    [
      'manual rollback while checking',
      { type: 'manual-rollback', reason: 'operator' },
      /manual rollback: operator/,
    ],
  ])('%s → rollback to the previous version', (_name, ev, reason) => {
    const r = run(init(), [...toHealth, ev]);
    expect(r.last).toEqual(rolledBack(reason, 'health-checking'));
    expect(r.state).toMatchObject({ phase: 'rolled-back', version: '2.0.0', previous: '1.0.0' });
    expect(r.state.highestCommitted).toBe('1.0.0');
  });

  it('soak completes on tick → commit; an early tick does nothing', () => {
    const healthy = run(init(), [...toHealth, [100, { type: 'health-ok' }]]).state;
    expect(healthy.soakUntil).toBe(T0 + 100 + 600_000);
    expect(step(healthy, { type: 'tick' }, T0 + 600_099)).toEqual({ state: healthy, actions: [] });
    const r = step(healthy, { type: 'tick' }, T0 + 600_100);
    expect(r.state.phase).toBe('committed');
    expect(r.actions).toContainEqual(['keep-previous', '1.0.0']);
  });

  it('the health deadline does not fire once the health check passed', () => {
    const r = run(init(), [...toHealth, [100, { type: 'health-ok' }], [120_000, { type: 'tick' }]]);
    expect(r.state.phase).toBe('health-checking');
    expect(r.last).toEqual([]);
  });

  it('manual rollback after commit returns to the previous version', () => {
    const committed = atPhase([...toHealth, { type: 'health-ok' }, { type: 'soak-elapsed' }]);
    expect(committed.highestCommitted).toBe('2.0.0');
    const r = step(committed, { type: 'manual-rollback', reason: 'regression' }, T0);
    expect(r.actions).toEqual(rolledBack(/manual rollback: regression/, 'committed', false));
    expect(r.state).toMatchObject({ phase: 'rolled-back', highestCommitted: '1.0.0' });
    // a kill between persisting and switching: the bad binary starts again and switches back
    expect(step(r.state, started2, T0).actions).toEqual([['switch-current-to', '1.0.0'], ['exit']]);
  });

  it('a new update may begin after a commit or a rollback', () => {
    const committed = atPhase([...toHealth, { type: 'health-ok' }, { type: 'soak-elapsed' }]);
    const next = { type: 'begin', version: '2.1.0', from: '2.0.0', payloadDigest: 'ee' } as const;
    expect(step(committed, next, T0).state).toMatchObject({
      phase: 'downloading',
      version: '2.1.0',
      previous: '2.0.0',
      attempts: 0,
      highestBefore: '2.0.0',
    });
    const rolled = atPhase([...toHealth, { type: 'health-failed', reason: 'x' }]);
    expect(step(rolled, next, T0).state.phase).toBe('downloading');
  });

  it('restarts at awkward moments', () => {
    // killed during download: the old binary starts, nothing changed, try again later
    const r1 = run(init(), [begin, { type: 'started', version: '1.0.0' }]);
    expect(r1.state.phase).toBe('idle');
    expect(r1.last[0]).toEqual(['discard-staged', '2.0.0']);
    // killed after the swap, before the driver saw it: the new binary starts and counts
    const r2 = run(init(), [...toSelfTest, { type: 'self-test-ok' }, started2]);
    expect(r2.state).toMatchObject({ phase: 'health-checking', attempts: 1 });
    // killed before the swap happened: the old binary starts, the pending record goes
    const r3 = run(init(), [...toSelfTest, { type: 'self-test-ok' }, { type: 'started', version: '1.0.0' }]);
    expect(r3.state.phase).toBe('idle');
    expect(r3.last.slice(0, 2)).toEqual([['remove-pending-record'], ['discard-staged', '2.0.0']]);
    // someone else switched current back while pending: not counted against 2.0.0
    const r4 = run(init(), [...toPending, { type: 'started', version: '1.0.0' }]);
    expect(r4.state.phase).toBe('rolled-back');
    expect(r4.last.some((a) => a[0] === 'remember-bad')).toBe(false);
  });

  it.each<[string, UpdateEvent[], UpdateEvent]>([
    ['download-done when idle', [], { type: 'download-done' }],
    ['started when idle', [], { type: 'started', version: '1.0.0' }],
    ['manual-rollback when idle', [], { type: 'manual-rollback', reason: 'x' }],
    ['begin while downloading', [begin], begin],
    ['verify-ok while downloading', [begin], { type: 'verify-ok' }],
    ['swapped before the self-test', toSelfTest, { type: 'swapped' }],
    ['self-test-ok while verifying', [begin, { type: 'download-done' }], { type: 'self-test-ok' }],
    ['health-ok while pending', toPending, { type: 'health-ok' }],
    ['health-failed while pending', toPending, { type: 'health-failed', reason: 'x' }],
    ['soak-elapsed before the health check passed', toHealth, { type: 'soak-elapsed' }],
    ['crashed while self-testing', toSelfTest, { type: 'crashed', reason: 'x' }],
    [
      'health-ok after commit',
      [...toHealth, { type: 'health-ok' }, { type: 'soak-elapsed' }],
      { type: 'health-ok' },
    ],
    [
      'manual-rollback after a rollback',
      [...toHealth, { type: 'health-failed', reason: 'x' }],
      { type: 'manual-rollback', reason: 'y' },
    ],
    [
      'self-test-timeout when staged',
      [begin, { type: 'download-done' }, { type: 'verify-ok' }],
      { type: 'self-test-timeout' },
    ],
  ])('ignores %s and changes nothing', (_name, before, ev) => {
    const s = atPhase(before);
    const frozen = structuredClone(s);
    const r = step(s, ev, T0 + 1);
    expect(r.state).toBe(s);
    expect(s).toEqual(frozen);
    expect(r.actions).toEqual([['ignored', { phase: s.phase, event: ev.type }]]);
  });

  it('never throws, even on a corrupt stored highestCommitted', () => {
    const s = { ...initialUpdateState(), highestCommitted: 'garbage' };
    const r = run(s, [...toHealth, { type: 'health-ok' }, { type: 'soak-elapsed' }]);
    expect(r.state).toMatchObject({ phase: 'committed', highestCommitted: '2.0.0' });
  });

  it('takes the start count from the prestart script when given, and rolls back past the max', () => {
    const counted = run(init(), [...toPending, { type: 'started', version: '2.0.0', attempts: 3 }]);
    expect(counted.state).toMatchObject({ phase: 'health-checking', attempts: 3 });
    const over = run(init(), [...toPending, { type: 'started', version: '2.0.0', attempts: 4 }]);
    expect(over.state.phase).toBe('rolled-back');
    expect(over.last).toEqual(rolledBack(/started 4 times without a commit \(max 3\)/, 'pending'));
  });

  it('boot-rolled-back: the prestart script switched current; record, clean up, report, no exit', () => {
    for (const events of [toPending, toHealth]) {
      const r = run(init(), [...events, { type: 'boot-rolled-back', reason: 'started 4 times (max 3)' }]);
      expect(r.state).toMatchObject({ phase: 'rolled-back', version: '2.0.0', highestCommitted: '1.0.0' });
      expect(r.last).toEqual([
        ['remember-bad', '2.0.0', BAD_V2],
        ['remove-pending-record'],
        [
          'report',
          {
            outcome: 'rolled-back',
            phase: events === toPending ? 'pending' : 'health-checking',
            version: '2.0.0',
            reason: '2.0.0 started 4 times (max 3)',
          },
        ],
      ]);
      // seen again after a crash before the clean-up: only clean up; the previous version's start is ignored
      const again = step(r.state, { type: 'boot-rolled-back', reason: 'x' }, T0);
      expect(again).toEqual({ state: r.state, actions: [['remove-pending-record']] });
      expect(step(r.state, { type: 'started', version: '1.0.0' }, T0).state).toBe(r.state);
    }
  });
});
