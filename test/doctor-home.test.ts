/**
 * The diagnosis goes home: the heartbeat's optional, bounded `doctor` field
 * (old heartbeats still verify; an oversized or malformed one is refused), the
 * server's fleet state keeping it as the agent's latest, the mirror keeping
 * each agent's latest report, and end to end: a real agent runs its checks on
 * its schedule, its signed heartbeat carries the summary to a real mirror, and
 * `ferry mirror doctor AGENT` shows it at the site.
 */
import { mkdir, readFile, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { signHeartbeat, verifyHeartbeat, agentIdOf, type DoctorSummary } from '../core/heartbeat.js';
import { serializeEnvelope, parseEnvelope } from '../core/dsse.js';
import { doctorDue, summarize } from '../agent/doctor/summary.js';
import type { CheckResult } from '../agent/doctor/types.js';
import { DoctorReports } from '../mirror/doctor-reports.js';
import { apply, emptyState } from '../server/fleet-state.js';
import { eventually, importInto, OPEN_ENROLMENT, startAgent, startMirrorAt } from './helpers/agent-proc.js';
import { buildBundle, makeKey, tempDir } from './helpers/fixtures.js';
import { testHeartbeat } from './helpers/heartbeats.js';
import { runFerry } from './helpers/mirror-proc.js';
import { useWorld } from './helpers/world.js';

const w = useWorld();

const summary = (over: Partial<DoctorSummary> = {}): DoctorSummary => ({
  at: '2026-11-29T10:00:00.000Z',
  ok: 14,
  warn: 1,
  fail: 1,
  problems: [
    { id: 'key', status: 'fail', evidence: '/var/lib/ferry/agent/keys/agent.key has mode 0644' },
    { id: 'temp', status: 'warn', evidence: '1 left by an interrupted write' },
  ],
  ...over,
});

describe('heartbeat doctor field', () => {
  it('a heartbeat without one (as every older agent sends) and one with it both verify', async () => {
    const key = await makeKey(join(w.dir, 'hb-keys'), 'agent');
    const id = agentIdOf(key.publicKey);
    const old = parseEnvelope(serializeEnvelope(signHeartbeat(testHeartbeat(id, 1), key)), 'hb');
    expect(verifyHeartbeat(old, key.publicKey).doctor).toBeUndefined();
    const withDoctor = signHeartbeat(testHeartbeat(id, 2, { doctor: summary() }), key);
    expect(verifyHeartbeat(withDoctor, key.publicKey).doctor).toEqual(summary());
  });

  it('refuses a doctor field past its bounds or of the wrong shape, naming the part', async () => {
    const key = await makeKey(join(w.dir, 'hb-keys2'), 'agent');
    const id = agentIdOf(key.publicKey);
    const problem = { id: 'temp', status: 'warn' as const, evidence: 'x' };
    const bad: [unknown, RegExp][] = [
      [
        summary({ problems: Array.from({ length: 33 }, () => problem) }),
        /doctor\.problems must be an array of at most 32/,
      ],
      [summary({ problems: [{ ...problem, evidence: 'e'.repeat(513) }] }), /doctor\.problems\[0\]\.evidence/],
      [summary({ problems: [{ ...problem, status: 'ok' as 'warn' }] }), /doctor\.problems\[0\]\.status/],
      [summary({ problems: [{ ...problem, id: 'Not An Id' }] }), /doctor\.problems\[0\]\.id/],
      [{ ...summary(), extra: 1 }, /doctor has unknown field "extra"/],
      [summary({ fail: -1 }), /doctor\.fail must be an integer/],
      [summary({ at: 'yesterday' }), /doctor\.at must be an ISO 8601 time/],
    ];
    for (const [doctor, msg] of bad) {
      const hb = { ...testHeartbeat(id, 3), doctor } as Parameters<typeof signHeartbeat>[0];
      expect(() => signHeartbeat(hb, key)).toThrow(msg);
    }
  });

  it('summarize keeps failures first, at most 32, evidence cut at 512 characters', () => {
    const checks = Array.from({ length: 40 }, (_, i): CheckResult => ({
      id: `c${i}`,
      title: '',
      status: i === 39 ? 'fail' : 'warn',
      evidence: 'e'.repeat(600),
      fix: 'x',
    }));
    const s = summarize({
      at: Date.parse('2026-11-29T10:00:00Z'),
      checks,
      counts: { ok: 0, warn: 39, fail: 1 },
    });
    expect(s.problems).toHaveLength(32);
    expect(s.problems[0]).toMatchObject({ id: 'c39', status: 'fail' });
    expect(s.problems[1]!.evidence).toHaveLength(512);
    expect(s).toMatchObject({ at: '2026-11-29T10:00:00Z', ok: 0, warn: 39, fail: 1 });
  });

  it('is due daily by default, at once after a failed update, and when none ran yet', () => {
    const at = Date.parse(summary().at);
    expect(doctorDue(undefined, at, 86_400, false)).toBe(true);
    expect(doctorDue(summary(), at + 3_600_000, 86_400, false)).toBe(false);
    expect(doctorDue(summary(), at + 3_600_000, 86_400, true)).toBe(true);
    expect(doctorDue(summary(), at + 86_400_000, 86_400, false)).toBe(true);
  });
});

describe('where the summary is kept', () => {
  it('the server keeps it as the agent latest until the next one, across heartbeats without one', () => {
    const s = emptyState();
    const agentId = 'a'.repeat(32);
    const base = {
      at: '2026-11-29T10:00:01Z',
      mirror: 'm1',
      envelope: { payloadType: '', payload: '', signatures: [] },
    };
    apply(s, {
      kind: 'enrolment',
      at: base.at,
      mirror: 'm1',
      mirrorSeq: 1,
      site: 'plant-7',
      agent: {
        agentId,
        publicKey: 'b'.repeat(64),
        hostname: 'h',
        platform: 'linux-x64',
        groups: [],
        enrolledAt: base.at,
      },
    });
    apply(
      s,
      { kind: 'heartbeat', ...base, mirrorSeq: 2, agentId, counter: 1 },
      testHeartbeat(agentId, 1, { doctor: summary() }),
    );
    expect(s.agents[agentId]!.latest!.doctor).toEqual(summary());
    apply(s, { kind: 'heartbeat', ...base, mirrorSeq: 3, agentId, counter: 2 }, testHeartbeat(agentId, 2));
    expect(s.agents[agentId]!.latest).toMatchObject({ counter: 2, doctor: summary() });
    const next = summary({ at: '2026-11-30T10:00:00.000Z', fail: 0, problems: [] });
    apply(
      s,
      { kind: 'heartbeat', ...base, mirrorSeq: 4, agentId, counter: 3 },
      testHeartbeat(agentId, 3, { doctor: next }),
    );
    expect(s.agents[agentId]!.latest!.doctor).toEqual(next);
  });

  it('the mirror keeps each agent latest report and rewrites it only when the checks ran again', async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const r = new DoctorReports(dir);
      const id = 'c'.repeat(32);
      expect(await r.record(id, 5, summary(), Date.now())).toBe(true);
      expect(await r.record(id, 6, summary(), Date.now())).toBe(false); // same run, repeated
      expect(await new DoctorReports(dir).record(id, 7, summary(), Date.now())).toBe(false); // after a restart too
      const later = summary({ at: '2026-11-30T10:00:00.000Z', fail: 0, problems: [] });
      expect(await r.record(id, 8, later, Date.now())).toBe(true);
      expect(await r.record(id, 9, summary(), Date.now())).toBe(false); // an older run never wins
      expect((await r.get(id))!).toMatchObject({ counter: 8, summary: later });
      expect(await r.get('d'.repeat(32))).toBeUndefined();
      expect(await r.get('../../etc/passwd')).toBeUndefined();
    } finally {
      await cleanup();
    }
  });
});

describe('end to end', () => {
  it('a real agent runs its checks, its heartbeat carries them home, `ferry mirror doctor` shows them', async () => {
    const bundle = join(w.dir, 'home.ferry');
    await buildBundle(w, bundle);
    const data = join(w.dir, 'home-mirror');
    await importInto(data, bundle, w.rootPath);
    const mirror = await startMirrorAt(data, 0, OPEN_ENROLMENT);
    // one thing wrong on the node that the agent itself never mends: a temp file a crash left
    const state = join(w.dir, 'home-agent');
    await mkdir(state, { recursive: true, mode: 0o700 });
    const temp = join(state, '.state.json.dead01.tmp');
    await writeFile(temp, '{"torn":');
    const old = new Date(Date.now() - 3_600_000);
    await utimes(temp, old, old);
    const agent = startAgent([
      '--state',
      state,
      '--mirror',
      mirror.url,
      '--trust',
      w.rootPath,
      '--site',
      'plant-7',
      '--interval',
      '3600',
    ]);
    try {
      const ran = await agent.waitForLog((l) => l.event === 'doctor.ran', 60_000);
      expect(ran).toMatchObject({ warn: expect.any(Number) as number });
      await agent.waitForLog((l) => l.event === 'agent.cycle' && l.sent !== 0, 60_000);
      const agentId = (JSON.parse(await readFile(join(state, 'state.json'), 'utf8')) as { agentId: string })
        .agentId;
      const shown = await eventually('the doctor report at the mirror', async () => {
        const r = await runFerry(['mirror', 'doctor', agentId, '--data', data, '--json']);
        const v = JSON.parse(r.stdout) as {
          code?: string;
          problems?: { id: string; status: string; evidence: string }[];
        };
        return v.code === 'NO_DOCTOR_REPORT' ? undefined : { code: r.code, v };
      });
      expect(shown.v.problems).toContainEqual({
        id: 'temp',
        status: 'warn',
        evidence: expect.stringContaining('.state.json.dead01.tmp') as string,
      });
      const text = await runFerry(['mirror', 'doctor', agentId, '--data', data]);
      expect(text.stdout).toMatch(/^\[!\] temp: 1 left by an interrupted write: /m);
      // an agent that never sent one
      const none = await runFerry(['mirror', 'doctor', 'e'.repeat(32), '--data', data, '--json']);
      expect(none.code).toBe(1);
      expect(JSON.parse(none.stdout)).toMatchObject({ ok: false, code: 'NO_DOCTOR_REPORT' });
    } finally {
      await agent.stop();
      await mirror.stop();
    }
  }, 120_000);
});
