import { describe, expect, it } from 'vitest';
import type { Manifest } from '../manifest.js';
import { answerFor } from './answer.js';
import {
  DEFAULT_GATE_LIMITS,
  initialGate,
  step,
  tally,
  type GateEvent,
  type GateLimits,
  type GateState,
} from './gate.js';
import { planOf, rolloutIdOf, type Plan } from './plan.js';
import { BUCKETS, bucketOf, waveForBucket, waveOf } from './wave.js';
import { inWindow, localTime } from './window.js';

const T0 = Date.parse('2026-11-28T12:00:00Z');
const MIN = 60_000;
const hex = (n: number) => n.toString(16).padStart(32, '0');

function manifest(
  over: Partial<Manifest> = {},
  rollout: Partial<NonNullable<Manifest['rollout']>> = {},
): Manifest {
  return {
    type: 'ferry.manifest/v1',
    publisher: 'acme',
    sequence: 7,
    created: '2026-11-28T00:00:00Z',
    expires: '2027-11-28T00:00:00Z',
    sites: ['plant'],
    artifacts: [
      {
        name: 'ferry-agent',
        kind: 'agent',
        version: '2.0.0',
        platform: 'linux-x64',
        sha256: 'a'.repeat(64),
        size: 1,
      },
    ],
    rollout: {
      agent: '2.0.0',
      strategy: 'staggered',
      waves: [{ percent: 5, soakMinutes: 30 }, { percent: 25, soakMinutes: 30 }, { percent: 100 }],
      maxFailureRate: 0,
      ...rollout,
    },
    ...over,
  };
}

/** Drives the gate like the mirror does, remembering every record and the wall time. */
class Sim {
  s: GateState = initialGate();
  now = T0;
  records: { event: string; actor: string; wave: number; info: Record<string, unknown> }[] = [];
  constructor(readonly limits: GateLimits = DEFAULT_GATE_LIMITS) {}
  feed(e: GateEvent) {
    const r = step(this.s, e, this.now, this.limits);
    this.s = r.state;
    for (const a of r.actions)
      this.records.push({ event: a.info.event, actor: a.info.actor, wave: a.info.wave, info: { ...a.info } });
    return r;
  }
  at(ms: number) {
    this.now = ms;
    return this.feed({ type: 'tick' });
  }
  /** Ticks every 30 s up to `ms` later (the mirror ticks; the gate clock follows). */
  pass(ms: number) {
    const end = this.now + ms;
    while (this.now < end) this.at(Math.min(end, this.now + 30_000));
  }
  hb(
    id: string,
    running = '1.0.0',
    updates: { outcome: string; version: string }[] = [],
    groups: string[] = [],
  ) {
    return this.feed({ type: 'agent', agentId: id, groups, running, updates });
  }
  answer(id: string) {
    return answerFor(this.s, id, [], this.now);
  }
  events() {
    return this.records.map((r) => r.event);
  }
  /** An agent takes the update it is allowed: asks, starts, commits. */
  update(id: string, outcome = 'committed') {
    const a = this.answer(id);
    expect(a.may).toBe(true);
    this.feed({ type: 'go', agentId: id, groups: [] });
    this.hb(id, outcome === 'committed' ? '2.0.0' : '1.0.0', [{ outcome, version: '2.0.0' }]);
  }
}

function fleet(sim: Sim, n: number, plan: Plan | null) {
  for (let i = 0; i < n; i++) sim.hb(hex(i));
  sim.feed({ type: 'plan', plan });
  return [...Array(n).keys()].map(hex);
}

const byWave = (plan: Plan, ids: string[], w: number) =>
  ids.filter((id) => waveOf(plan.id, id, plan.waves) === w);

/** Agent ids for which the plan puts exactly `counts[w]` agents in wave w, in wave order. */
function idsWithWaves(plan: Plan, counts: number[]): string[] {
  const out: string[] = [];
  const left = [...counts];
  for (let i = 0; left.some((c) => c > 0); i++) {
    const w = waveOf(plan.id, hex(i), plan.waves);
    if (left[w]! > 0) {
      left[w]!--;
      out.push(hex(i));
    }
  }
  return out.sort((a, b) => waveOf(plan.id, a, plan.waves) - waveOf(plan.id, b, plan.waves));
}

describe('rollout identity', () => {
  const id = rolloutIdOf(manifest())!;
  it('is 64 hex, and the same for the same plan', () => {
    expect(id).toMatch(/^[0-9a-f]{64}$/);
    expect(rolloutIdOf(manifest())).toBe(id);
  });
  it.each([
    ['a new sequence', manifest({ sequence: 8 })],
    [
      'a changed window',
      manifest({}, { window: { days: ['sat'], start: '01:00', end: '02:00', tz: 'UTC' } }),
    ],
    ['changed pins', manifest({ pins: { 'group:x': '1.0.0' } })],
  ])('does not change with %s', (_, m) => expect(rolloutIdOf(m)).toBe(id));
  it.each([
    ['another version', manifest({}, { agent: '2.0.1' })],
    [
      'another binary',
      manifest({
        artifacts: [
          {
            name: 'ferry-agent',
            kind: 'agent',
            version: '2.0.0',
            platform: 'linux-x64',
            sha256: 'b'.repeat(64),
            size: 1,
          },
        ],
      }),
    ],
    ['other waves', manifest({}, { waves: [{ percent: 10, soakMinutes: 30 }, { percent: 100 }] })],
    [
      'another soak',
      manifest(
        {},
        { waves: [{ percent: 5, soakMinutes: 31 }, { percent: 25, soakMinutes: 30 }, { percent: 100 }] },
      ),
    ],
    ['another strategy', manifest({}, { strategy: 'manual' })],
    ['another threshold', manifest({}, { maxFailureRate: 0.1 })],
    ['another publisher', manifest({ publisher: 'other' })],
  ])('changes with %s', (_, m) => expect(rolloutIdOf(m)).not.toBe(id));
  it('is absent without a rollout', () => {
    expect(rolloutIdOf(manifest({ rollout: undefined }))).toBeUndefined();
    expect(planOf(manifest({ rollout: undefined }))).toBeNull();
  });
});

describe('waves by stable hash', () => {
  const waves = [{ percent: 5 }, { percent: 25 }, { percent: 100 }];
  it.each([
    [0, 0],
    [499, 0],
    [500, 1],
    [2499, 1],
    [2500, 2],
    [BUCKETS - 1, 2],
  ])('bucket %i is in wave %i', (b, w) => expect(waveForBucket(b, waves)).toBe(w));
  it('handles fractional percents at the boundary', () => {
    expect(waveForBucket(49, [{ percent: 0.5 }, { percent: 100 }])).toBe(0);
    expect(waveForBucket(50, [{ percent: 0.5 }, { percent: 100 }])).toBe(1);
  });
  it('is stable, and spreads 10,000 agents close to the plan', () => {
    const id = 'c'.repeat(64);
    expect(bucketOf(id, hex(1))).toBe(bucketOf(id, hex(1)));
    const n = [0, 0, 0];
    for (let i = 0; i < 10_000; i++) n[waveOf(id, hex(i), waves)]!++;
    expect(n[0]).toBeGreaterThan(400);
    expect(n[0]).toBeLessThan(600);
    expect(n[1]).toBeGreaterThan(1800);
    expect(n[1]).toBeLessThan(2200);
  });
  it('reshuffles for another rollout', () => {
    const a = [...Array(200).keys()].map((i) => waveOf('c'.repeat(64), hex(i), waves));
    const b = [...Array(200).keys()].map((i) => waveOf('d'.repeat(64), hex(i), waves));
    expect(a).not.toEqual(b);
  });
});

describe('maintenance window', () => {
  const berlin = { days: ['sat', 'sun'], start: '01:00', end: '05:00', tz: 'Europe/Berlin' };
  const night = { days: ['sat'], start: '23:00', end: '02:00', tz: 'Europe/Berlin' };
  const springSun = { days: ['sun'], start: '02:30', end: '03:30', tz: 'Europe/Berlin' };
  const fallSun = { days: ['sun'], start: '02:00', end: '03:00', tz: 'Europe/Berlin' };
  it.each([
    ['no window', null, '2026-11-25T12:00:00Z', true],
    ['sat 00:59 CET', berlin, '2026-11-27T23:59:00Z', false],
    ['sat 01:00 CET', berlin, '2026-11-28T00:00:00Z', true],
    ['sat 04:59 CET', berlin, '2026-11-28T03:59:00Z', true],
    ['sat 05:00 CET', berlin, '2026-11-28T04:00:00Z', false],
    ['wed 02:00 CET', berlin, '2026-11-25T01:00:00Z', false],
    ['sat 22:59 (spanning midnight)', night, '2026-11-28T21:59:00Z', false],
    ['sat 23:00 (spanning midnight)', night, '2026-11-28T22:00:00Z', true],
    ['sun 01:59 belongs to sat', night, '2026-11-29T00:59:00Z', true],
    ['sun 02:00 closes', night, '2026-11-29T01:00:00Z', false],
    ['fri 23:30 is not sat', night, '2026-11-27T22:30:00Z', false],
    ['sat 00:30 is fri night, not listed', night, '2026-11-27T23:30:00Z', false],
    ['spring forward: 01:59 CET', springSun, '2026-03-29T00:59:00Z', false],
    ['spring forward: 03:00 CEST opens', springSun, '2026-03-29T01:00:00Z', true],
    ['spring forward: 03:30 CEST closes', springSun, '2026-03-29T01:30:00Z', false],
    ['fall back: 02:30 CEST', fallSun, '2026-10-25T00:30:00Z', true],
    ['fall back: 02:30 CET (again)', fallSun, '2026-10-25T01:30:00Z', true],
    ['fall back: 03:00 CET', fallSun, '2026-10-25T02:00:00Z', false],
    [
      'start == end: the whole day',
      { days: ['wed'], start: '00:00', end: '00:00', tz: 'UTC' },
      '2026-11-25T23:59:00Z',
      true,
    ],
    [
      'start == end: not another day',
      { days: ['wed'], start: '00:00', end: '00:00', tz: 'UTC' },
      '2026-11-26T00:00:00Z',
      false,
    ],
    [
      'another zone',
      { days: ['sat'], start: '09:00', end: '10:00', tz: 'Asia/Tokyo' },
      '2026-11-28T00:30:00Z',
      true,
    ],
  ])('%s', (_, w, at, want) => expect(inWindow(w, Date.parse(at))).toBe(want));
  it('reads local time through Intl', () => {
    expect(localTime(Date.parse('2026-11-28T23:30:00Z'), 'Europe/Berlin')).toEqual({
      day: 'sun',
      minute: 30,
    });
  });
});

describe('the gate: staggered waves', () => {
  it('canary → wave → full, each after its soak with committed evidence', () => {
    const sim = new Sim();
    const plan = planOf(manifest())!;
    const ids = fleet(sim, 40, plan);
    expect(sim.events()).toEqual(['started', 'wave_opened']);
    const w0 = byWave(plan, ids, 0);
    const w1 = byWave(plan, ids, 1);
    const w2 = byWave(plan, ids, 2);
    for (const id of [...w1, ...w2]) expect(sim.answer(id).code).toBe('WAVE_NOT_OPEN');
    if (w0.length === 0) expect(sim.s.run!.wave).toBeGreaterThan(0);
    for (const id of w0) sim.update(id);
    sim.pass(30 * MIN - 30_000);
    expect(sim.s.run!.wave).toBe(w0.length === 0 ? sim.s.run!.wave : 0);
    sim.pass(30_000);
    expect(sim.s.run!.wave).toBe(1);
    for (const id of w1) sim.update(id);
    for (const id of w2) expect(sim.answer(id).code).toBe('WAVE_NOT_OPEN');
    sim.pass(30 * MIN);
    expect(sim.s.run!.wave).toBe(2);
    for (const id of w2) sim.update(id);
    sim.at(sim.now + 1000);
    expect(sim.s.run!.phase).toBe('completed');
    expect(sim.events().filter((e) => e === 'wave_opened')).toHaveLength(3);
    expect(sim.events().at(-1)).toBe('completed');
    for (const id of ids) expect(sim.answer(id).code).toBe('ALREADY_THERE');
  });

  it('does not open the next wave while the canary is still updating', () => {
    const sim = new Sim();
    const plan = planOf(manifest())!;
    const ids = idsWithWaves(plan, [2, 3, 5]);
    for (const id of ids) sim.hb(id);
    sim.feed({ type: 'plan', plan });
    const [a, b] = byWave(plan, ids, 0);
    sim.update(a!);
    sim.feed({ type: 'go', agentId: b!, groups: [] });
    sim.pass(20 * MIN);
    expect(sim.s.run!.wave).toBe(0);
    expect(tally(sim.s)[0]!.counts).toMatchObject({ agents: 2, committed: 1, updating: 1 });
  });

  it('passes an empty wave at once (5 % of a tiny fleet is nobody)', () => {
    const sim = new Sim();
    const plan = planOf(manifest())!;
    const ids = idsWithWaves(plan, [0, 1, 3]);
    for (const id of ids) sim.hb(id);
    sim.feed({ type: 'plan', plan });
    expect(sim.s.run!.wave).toBe(1);
    expect(sim.events()).toEqual(['started', 'wave_opened', 'wave_opened']);
    expect(sim.answer(byWave(plan, ids, 1)[0]!).code).toBe('GO');
  });

  it('knowing no agent, opens only the first wave and never completes', () => {
    const sim = new Sim();
    sim.feed({ type: 'plan', plan: planOf(manifest())! });
    sim.pass(120 * MIN);
    expect(sim.s.run).toMatchObject({ phase: 'running', wave: 0 });
    expect(sim.events()).toEqual(['started', 'wave_opened']);
  });

  it('judges waves over the enrolled roster given with the plan', () => {
    const sim = new Sim();
    const plan = planOf(manifest())!;
    const ids = idsWithWaves(plan, [1, 1, 1]);
    sim.feed({ type: 'plan', plan, roster: ids.map((agentId) => ({ agentId, groups: [] })) });
    expect(sim.s.run!.wave).toBe(0);
    expect(tally(sim.s).map((t) => t.counts.pending)).toEqual([1, 1, 1]);
    expect(sim.answer(ids[2]!).code).toBe('WAVE_NOT_OPEN');
  });

  it('a canary of one agent that fails halts the rollout, the rest untouched', () => {
    const sim = new Sim();
    const plan = planOf(manifest({}, { maxFailureRate: 0.5 }))!;
    const ids = idsWithWaves(plan, [1, 2, 5]);
    for (const id of ids) sim.hb(id);
    sim.feed({ type: 'plan', plan });
    sim.update(byWave(plan, ids, 0)[0]!, 'rolled-back');
    expect(sim.s.run!.phase).toBe('halted');
    const halted = sim.records.at(-1)!;
    expect(halted).toMatchObject({ event: 'halted', actor: 'mirror', wave: 0 });
    expect(halted.info).toMatchObject({
      threshold: 0.5,
      failureRate: 1,
      counts: { agents: 1, rolledBack: 1 },
    });
    for (const id of ids.slice(1)) expect(sim.answer(id)).toMatchObject({ may: false });
    expect(sim.answer(ids[0]!).code).toBe('BAD_VERSION');
  });
});

describe('the gate: auto-halt at maxFailureRate', () => {
  const immediate = (rate: number) =>
    planOf(manifest({}, { strategy: 'immediate', waves: [{ percent: 100 }], maxFailureRate: rate }))!;
  it.each([
    [0, 1, true],
    [0.1, 1, false],
    [0.1, 2, true],
    [0.5, 5, false],
    [0.5, 6, true],
    [1, 10, false],
  ])('rate %f with %i of 10 failed: halted %s', (rate, failures, halted) => {
    const sim = new Sim();
    const ids = fleet(sim, 10, immediate(rate));
    for (const id of ids.slice(0, failures)) sim.update(id, 'failed');
    expect(sim.s.run!.phase === 'halted').toBe(halted);
    if (halted)
      expect(sim.records.at(-1)!.info).toMatchObject({ threshold: rate, failureRate: failures / 10 });
  });

  it('an agent silent past the deadline after starting counts as failed', () => {
    const sim = new Sim({ ...DEFAULT_GATE_LIMITS, silentMs: 10 * MIN });
    const ids = fleet(sim, 3, immediate(0));
    sim.feed({ type: 'go', agentId: ids[0]!, groups: [] });
    sim.pass(10 * MIN);
    expect(sim.s.run!.phase).toBe('running');
    sim.pass(60_000);
    expect(sim.s.run!.phase).toBe('halted');
    expect(sim.records.at(-1)!.info).toMatchObject({ counts: { silent: 1 } });
  });
});

describe('the gate: clock jumps and evidence', () => {
  it('a clock stepped forward counts as no more than maxGapMs: no false silence, no soak', () => {
    const sim = new Sim({ ...DEFAULT_GATE_LIMITS, silentMs: 10 * MIN });
    const plan = planOf(manifest())!;
    const ids = idsWithWaves(plan, [1, 1, 1]);
    for (const id of ids) sim.hb(id);
    sim.feed({ type: 'plan', plan });
    sim.update(ids[0]!);
    sim.feed({ type: 'go', agentId: ids[0]!, groups: [] });
    const before = sim.s.clock;
    sim.at(sim.now + 24 * 3600_000);
    expect(sim.s.clock - before).toBe(DEFAULT_GATE_LIMITS.maxGapMs);
    expect(sim.s.run!.wave).toBe(0);
    expect(sim.s.run!.phase).toBe('running');
  });
  it('a clock stepped back does not move the gate clock back', () => {
    const sim = new Sim();
    fleet(sim, 2, planOf(manifest()));
    sim.pass(5 * MIN);
    const c = sim.s.clock;
    sim.at(sim.now - 3600_000);
    expect(sim.s.clock).toBe(c);
    sim.at(sim.now + 30_000);
    expect(sim.s.clock).toBe(c + 30_000);
  });
  it('committed agents that went quiet are no evidence until heard again', () => {
    const limits = { ...DEFAULT_GATE_LIMITS, evidenceMs: 20 * MIN };
    const sim = new Sim(limits);
    const plan = planOf(manifest())!;
    const ids = idsWithWaves(plan, [1, 1, 1]);
    for (const id of ids) sim.hb(id);
    sim.feed({ type: 'plan', plan });
    sim.update(ids[0]!);
    sim.pass(31 * MIN);
    expect(sim.s.run!.wave).toBe(0);
    sim.hb(ids[0]!, '2.0.0');
    expect(sim.s.run!.wave).toBe(0); // the soak starts again from fresh evidence
    sim.pass(10 * MIN);
    sim.hb(ids[0]!, '2.0.0');
    sim.pass(10 * MIN);
    sim.hb(ids[0]!, '2.0.0');
    sim.pass(10 * MIN + 30_000);
    expect(sim.s.run!.wave).toBe(1);
  });
  it('agents that vanish leave the counts; late-enrolling agents get their wave by hash', () => {
    const sim = new Sim({ ...DEFAULT_GATE_LIMITS, vanishMs: 60 * MIN });
    const plan = planOf(manifest())!;
    const ids = idsWithWaves(plan, [2, 1, 1]);
    for (const id of ids) sim.hb(id);
    sim.feed({ type: 'plan', plan });
    const [a, b] = byWave(plan, ids, 0);
    sim.update(a!);
    for (let t = 0; t < 100; t += 5) {
      sim.pass(5 * MIN);
      sim.hb(a!, '2.0.0');
    }
    expect(sim.s.run!.wave).toBe(2); // the later waves' only agents vanished too: empty, passed
    expect(tally(sim.s, sim.limits)[0]!.counts.agents).toBe(1);
    const late = idsWithWaves(plan, [0, 1, 0]).find((id) => !ids.includes(id)) ?? hex(999_999);
    expect(sim.answer(b!).code).toBe('GO');
    if (waveOf(plan.id, late, plan.waves) <= 1) expect(sim.answer(late).code).toBe('GO');
  });
});

describe('the gate: manual strategy, operators, pins, window', () => {
  it('manual waits for approve after the soak; approve before then is refused', () => {
    const sim = new Sim();
    const plan = planOf(manifest({}, { strategy: 'manual' }))!;
    const ids = idsWithWaves(plan, [1, 1, 1]);
    for (const id of ids) sim.hb(id);
    sim.feed({ type: 'plan', plan });
    expect(sim.feed({ type: 'approve', actor: 'ops' }).refused?.code).toBe('NOT_AWAITING_APPROVAL');
    sim.update(ids[0]!);
    sim.pass(60 * MIN);
    expect(sim.s.run!.phase).toBe('awaiting-approval');
    expect(sim.answer(ids[1]!).reason).toMatch(/approval/);
    const r = sim.feed({ type: 'approve', actor: 'ops', reason: 'looks good' });
    expect(r.refused).toBeUndefined();
    expect(sim.events().slice(-2)).toEqual(['approved', 'wave_opened']);
    expect(sim.records.at(-2)).toMatchObject({ actor: 'ops', wave: 1 });
    expect(sim.answer(ids[1]!).code).toBe('GO');
  });

  it('halt, resume (failures so far accepted), a new failure halts again', () => {
    const sim = new Sim();
    const ids = fleet(sim, 6, planOf(manifest({}, { strategy: 'immediate', waves: [{ percent: 100 }] })));
    expect(sim.feed({ type: 'resume', actor: 'ops' }).refused?.code).toBe('NOT_HALTED');
    sim.feed({ type: 'halt', actor: 'ops', reason: 'change freeze' });
    expect(sim.answer(ids[0]!)).toMatchObject({ code: 'HALTED', may: false });
    expect(sim.feed({ type: 'halt', actor: 'ops' }).refused?.code).toBe('ALREADY_HALTED');
    sim.feed({ type: 'resume', actor: 'ops' });
    sim.update(ids[0]!, 'failed');
    expect(sim.s.run!.phase).toBe('halted');
    sim.feed({ type: 'resume', actor: 'ops' });
    expect(sim.s.run!.phase).toBe('running');
    sim.update(ids[1]!);
    expect(sim.s.run!.phase).toBe('running');
    sim.update(ids[2]!, 'rolled-back');
    expect(sim.s.run!.phase).toBe('halted');
    expect(sim.events()).toEqual([
      'started',
      'wave_opened',
      'halted',
      'resumed',
      'halted',
      'resumed',
      'halted',
    ]);
  });

  it('abort keeps agents where they are, or with revert sends updated ones back', () => {
    for (const revert of [false, true]) {
      const sim = new Sim();
      const ids = fleet(sim, 4, planOf(manifest({}, { strategy: 'immediate', waves: [{ percent: 100 }] })));
      sim.update(ids[0]!);
      sim.feed({ type: 'abort', actor: 'ops', revert });
      expect(sim.records.at(-1)!.info).toMatchObject({ event: 'aborted', revert });
      expect(sim.answer(ids[0]!).code).toBe(revert ? 'REVERT' : 'ABORTED');
      expect(sim.answer(ids[1]!)).toMatchObject({ code: 'ABORTED', may: false });
      expect(sim.feed({ type: 'halt', actor: 'ops' }).refused?.code).toBe('ROLLOUT_OVER');
    }
  });

  it('operator events name their rollout: one for another rollout is refused', () => {
    const sim = new Sim();
    expect(sim.feed({ type: 'halt', actor: 'ops' }).refused?.code).toBe('NO_ROLLOUT');
    fleet(sim, 2, planOf(manifest()));
    const r = sim.feed({ type: 'halt', actor: 'ops', rolloutId: 'f'.repeat(64) });
    expect(r.refused?.code).toBe('ROLLOUT_MISMATCH');
    expect(r.state.run!.phase).toBe('running');
  });

  it('update-now lets one agent ahead of its wave and the window, never past a halt', () => {
    const sim = new Sim();
    const plan = planOf(
      manifest({}, { window: { days: ['mon'], start: '01:00', end: '02:00', tz: 'UTC' } }),
    )!;
    const ids = idsWithWaves(plan, [1, 0, 1]);
    for (const id of ids) sim.hb(id);
    sim.feed({ type: 'plan', plan });
    const late = byWave(plan, ids, 2)[0]!;
    expect(sim.answer(ids[0]!).code).toBe('OUTSIDE_WINDOW');
    expect(sim.answer(late).code).toBe('WAVE_NOT_OPEN');
    sim.feed({ type: 'update-now', actor: 'ops', agentId: late, groups: [] });
    expect(sim.answer(late)).toMatchObject({ code: 'UPDATE_NOW', may: true });
    expect(sim.events().at(-1)).toBe('update_now');
    sim.feed({ type: 'halt', actor: 'ops' });
    expect(sim.answer(late).code).toBe('HALTED');
  });

  it('a failure of an agent let go early halts, though its wave is not open', () => {
    const sim = new Sim();
    const plan = planOf(manifest({}, { strategy: 'manual' }))!;
    const ids = idsWithWaves(plan, [1, 0, 3]);
    for (const id of ids) sim.hb(id);
    sim.feed({ type: 'plan', plan });
    const early = byWave(plan, ids, 2)[0]!;
    sim.feed({ type: 'update-now', actor: 'ops', agentId: early, groups: [] });
    sim.update(early, 'rolled-back');
    expect(sim.s.run).toMatchObject({
      phase: 'halted',
      haltReason: expect.stringMatching(/wave 2: 1 of 1 failed/) as string,
    });
  });

  it('a pin holds an agent or a group out of the rollout and out of its counts', () => {
    const sim = new Sim();
    const plan = planOf(
      manifest({ pins: { 'group:scada': '1.0.0' } }, { strategy: 'immediate', waves: [{ percent: 100 }] }),
    )!;
    sim.hb(hex(1), '1.0.0', [], ['scada']);
    sim.hb(hex(2), '1.0.0', [], ['office']);
    sim.feed({ type: 'plan', plan });
    expect(sim.answer(hex(1))).toMatchObject({ code: 'PINNED', may: false });
    expect(sim.answer(hex(2)).code).toBe('GO');
    expect(tally(sim.s)[0]!.counts.agents).toBe(1);
  });

  it('the window blocks starts outside it and lets them in', () => {
    const sim = new Sim();
    sim.now = Date.parse('2026-11-28T00:30:00Z'); // sat 01:30 in Berlin
    const plan = planOf(
      manifest(
        {},
        {
          strategy: 'immediate',
          waves: [{ percent: 100 }],
          window: { days: ['sat'], start: '01:00', end: '02:00', tz: 'Europe/Berlin' },
        },
      ),
    )!;
    const ids = fleet(sim, 2, plan);
    expect(sim.answer(ids[0]!).code).toBe('GO');
    sim.now = Date.parse('2026-11-28T01:00:00Z');
    expect(sim.answer(ids[0]!)).toMatchObject({ code: 'OUTSIDE_WINDOW', may: false });
  });
});

describe('the gate: supersession and purity', () => {
  it('a newer rollout supersedes the first mid-way; the same plan re-signed continues', () => {
    const sim = new Sim();
    const first = planOf(manifest())!;
    const ids = fleet(sim, 10, first);
    sim.update(byWave(first, ids, 0)[0] ?? ids[0]!, 'committed');
    sim.feed({ type: 'plan', plan: planOf(manifest({ sequence: 9 }))! });
    expect(sim.events()).not.toContain('superseded');
    expect(sim.s.run!.plan.manifestSequence).toBe(9);
    const second = planOf(manifest({ sequence: 10 }, { agent: '2.0.0', maxFailureRate: 0.2 }))!;
    sim.feed({ type: 'plan', plan: second });
    const sup = sim.records.find((r) => r.event === 'superseded')!;
    expect(sup.info.rolloutId).toBe(first.id);
    expect(sim.s.run!.plan.id).toBe(second.id);
    expect(sim.events().slice(-3)).toEqual(['superseded', 'started', 'wave_opened']);
    sim.feed({ type: 'plan', plan: null });
    expect(sim.events().at(-1)).toBe('superseded');
    expect(sim.s.run).toBeNull();
  });

  it('never changes the state it is given', () => {
    const sim = new Sim();
    fleet(sim, 5, planOf(manifest()));
    const before = JSON.stringify(sim.s);
    const frozen = sim.s;
    step(
      frozen,
      {
        type: 'agent',
        agentId: hex(1),
        groups: [],
        running: '2.0.0',
        updates: [{ outcome: 'failed', version: '2.0.0' }],
      },
      T0 + 1000,
    );
    step(frozen, { type: 'halt', actor: 'ops' }, T0 + 1000);
    step(frozen, { type: 'plan', plan: null }, T0 + 1000);
    expect(JSON.stringify(frozen)).toBe(before);
  });
});
