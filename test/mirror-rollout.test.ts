/**
 * The site's rollout gate in a real `ferry mirror serve`, with a simulated site of 40 agents that speak
 * the real HTTP API with real keys: each enrols, heartbeats signed, asks `GET /v1/rollout/:agentId`, and
 * "updates" when told it may (it reports the outcome in a signed heartbeat, as agent/update/report.ts
 * does). Operators steer through the CLI and the control socket. Real self-updates by real agent
 * processes are test/agent-rollout.test.ts.
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { enroll, loadOrCreateIdentity, type AgentIdentity } from '../agent/identity.js';
import { signHeartbeat } from '../core/heartbeat.js';
import { waveOf } from '../core/rollout/wave.js';
import {
  eventually,
  importInto,
  startMirrorAt,
  OPEN_ENROLMENT,
  type MirrorAt,
} from './helpers/agent-proc.js';
import { buildBundle, snapshotDir } from './helpers/fixtures.js';
import { testHeartbeat } from './helpers/heartbeats.js';
import { runFerry } from './helpers/mirror-proc.js';
import { useWorld } from './helpers/world.js';

const w = useWorld();
const TARGET = '2.0.0';

interface Answer {
  agentId: string;
  rolloutId: string | null;
  version: string | null;
  wave: number | null;
  may: boolean;
  code: string;
  reason: string;
}

class SimAgent {
  counter = 0;
  version = '1.0.0';
  constructor(
    readonly id: AgentIdentity,
    readonly groups: string[],
    public url: string,
  ) {}
  get agentId() {
    return this.id.agentId;
  }
  async heartbeat(updates: { outcome: string; version: string }[] = []): Promise<number> {
    const hb = testHeartbeat(this.agentId, ++this.counter, {
      version: this.version,
      results: updates.map((u) => ({ update: { ...u, reason: u.outcome, at: new Date().toISOString() } })),
    });
    const r = await fetch(`${this.url}/v1/telemetry`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(signHeartbeat(hb, this.id.key)),
    });
    return r.status;
  }
  async ask(): Promise<Answer> {
    const r = await fetch(`${this.url}/v1/rollout/${this.agentId}`);
    expect(r.status).toBe(200);
    return (await r.json()) as Answer;
  }
  /** Asks; when allowed, "updates" with the given outcome. Returns the answer. */
  async cycle(outcome = 'committed'): Promise<Answer> {
    const a = await this.ask();
    if (a.may && a.code !== 'ALREADY_THERE' && a.version) {
      if (outcome === 'committed') this.version = a.version;
      expect(await this.heartbeat([{ outcome, version: a.version }])).toBe(202);
    } else expect(await this.heartbeat()).toBe(202);
    return a;
  }
}

interface Site {
  data: string;
  mirror: MirrorAt;
  agents: SimAgent[];
  rolloutId: string;
  waveOf: (a: SimAgent) => number;
}

let sites = 0;
/** A mirror serving a manifest whose rollout is `rollout`, and `n` enrolled agents at 1.0.0. */
async function site(
  rollout: Record<string, unknown>,
  n = 40,
  o: { pins?: Record<string, string>; groups?: (i: number) => string[] } = {},
): Promise<Site> {
  const name = `site${++sites}`;
  const data = join(w.dir, name);
  const agent = (version: string) => ({
    name: 'ferry-agent',
    kind: 'agent' as const,
    version,
    platform: 'linux-x64',
    content: randomBytes(4096),
  });
  // The fleet runs 1.0.0 under a first manifest; a later one brings the rollout.
  const first = await buildBundle(w, join(w.dir, `${name}-1.ferry`), { artifacts: [agent('1.0.0')] });
  await importInto(data, first.volumes[0]!.path, w.rootPath);
  const mirror = await startMirrorAt(data, 0, OPEN_ENROLMENT);
  const agents: SimAgent[] = [];
  for (let i = 0; i < n; i++) {
    const id = await loadOrCreateIdentity(join(w.dir, name, 'agents', String(i)));
    const groups = o.groups?.(i) ?? [];
    await enroll(mirror.url, id, { hostname: `n${i}`, platform: 'linux-x64', groups });
    const a = new SimAgent(id, groups, mirror.url);
    expect(await a.heartbeat()).toBe(202);
    agents.push(a);
  }
  expect(await agents[0]!.ask()).toMatchObject({ code: 'NO_ROLLOUT', may: false });
  const second = await buildBundle(w, join(w.dir, `${name}-2.ferry`), {
    spec: { sequence: 2, rollout: { agent: TARGET, ...rollout }, ...(o.pins && { pins: o.pins }) },
    artifacts: [agent(TARGET)],
  });
  await importInto(data, second.volumes[0]!.path, w.rootPath);
  const answered = await eventually('the rollout at the mirror', async () => {
    const a = await agents[0]!.ask();
    return a.rolloutId === null ? undefined : a;
  });
  const rolloutId = answered.rolloutId!;
  const waves = (rollout.waves as { percent: number }[]) ?? [{ percent: 100 }];
  return { data, mirror, agents, rolloutId, waveOf: (a) => waveOf(rolloutId, a.agentId, waves) };
}

async function status(data: string) {
  const r = await runFerry(['mirror', 'rollout', 'status', '--data', data, '--json']);
  expect(r.code, r.stderr).toBe(0);
  return (
    JSON.parse(r.stdout) as {
      rollout: Record<string, unknown> & { phase: string; wave: number; perWave: Record<string, number>[] };
    }
  ).rollout;
}

async function operator(data: string, ...args: string[]) {
  return runFerry(['mirror', 'rollout', ...args, '--data', data, '--actor', 'ops', '--json']);
}

/** The `rollout` records in the mirror's outbox, in order. */
async function rolloutRecords(
  data: string,
): Promise<{ event: string; actor: string; wave: number; [k: string]: unknown }[]> {
  const dir = join(data, 'telemetry', 'outbox');
  const { readdir } = await import('node:fs/promises');
  const out = [];
  for (const f of (await readdir(dir)).filter((x) => x.endsWith('.jsonl')).sort())
    for (const line of (await readFile(join(dir, f), 'utf8')).split('\n'))
      if (line) {
        const rec = JSON.parse(line) as {
          kind: string;
          rollout?: { event: string; actor: string; wave: number };
        };
        if (rec.kind === 'rollout' && rec.rollout) out.push(rec.rollout);
      }
  return out;
}

const STAGGERED = {
  strategy: 'staggered',
  waves: [{ percent: 5 }, { percent: 25 }, { percent: 100 }],
  maxFailureRate: 0,
};

describe('staged rollout at the site, 40 agents', () => {
  it('canary → wave → full: no agent goes before every agent of the waves before it committed', async () => {
    // agents' ids are random keys: with 5 % of 40 the canary is empty one run in eight, so this
    // test's waves are wide enough that every one of them has agents (all but 1 run in 7,000)
    const s = await site({ ...STAGGERED, waves: [{ percent: 20 }, { percent: 50 }, { percent: 100 }] });
    const committed = new Set<string>();
    for (let round = 0; committed.size < s.agents.length && round < 20; round++) {
      for (const a of s.agents) {
        if (committed.has(a.agentId)) continue;
        const ans = await a.cycle();
        if (ans.may) {
          // everyone in an earlier wave had reported committed before this one was let go
          for (const b of s.agents)
            if (s.waveOf(b) < s.waveOf(a)) expect(committed.has(b.agentId)).toBe(true);
          committed.add(a.agentId);
        } else expect(ans.code).toBe('WAVE_NOT_OPEN');
      }
    }
    expect(new Set(s.agents.map((a) => s.waveOf(a))).size).toBe(3); // all three waves had agents
    expect(committed.size).toBe(40);
    await s.agents[0]!.heartbeat();
    const st = await status(s.data);
    expect(st).toMatchObject({ phase: 'completed', wave: 2, version: TARGET, strategy: 'staggered' });
    expect(st.perWave.reduce((n, c) => n + c.committed!, 0)).toBe(40);
    const events = (await rolloutRecords(s.data)).map((r) => r.event);
    expect(events[0]).toBe('started');
    expect(events.filter((e) => e === 'wave_opened')).toHaveLength(3);
    expect(events.at(-1)).toBe('completed');
    await s.mirror.stop();
  });

  it('a bad version halts after the canary; the rest of the fleet stays at 1.0.0 and is shown halted', async () => {
    const s = await site(STAGGERED);
    // the canary is the first wave that has agents (5 % of 40 may be nobody)
    const first = Math.min(...s.agents.map((a) => s.waveOf(a)));
    const canary = s.agents.filter((a) => s.waveOf(a) === first);
    // the first canary's health check fails and it rolls back: with maxFailureRate 0 that halts
    expect(await canary[0]!.cycle('rolled-back')).toMatchObject({ may: true, code: 'GO' });
    const st = await status(s.data);
    expect(st.phase).toBe('halted');
    expect(String(st.haltReason)).toMatch(new RegExp(`wave ${first}: 1 of ${canary.length} failed`));
    for (const a of s.agents) {
      const ans = await a.cycle();
      expect(ans.may).toBe(false);
      expect(['HALTED', 'BAD_VERSION']).toContain(ans.code);
      expect(a.version).toBe('1.0.0');
    }
    const halted = (await rolloutRecords(s.data)).find((r) => r.event === 'halted')!;
    expect(halted).toMatchObject({
      actor: 'mirror',
      wave: first,
      threshold: 0,
      failureRate: 1 / canary.length,
    });
    const text = await runFerry(['mirror', 'rollout', 'status', '--data', s.data]);
    expect(text.stdout).toMatch(/HALTED/);
    await s.mirror.stop();
  });

  it('manual waits for approve; approve at the wrong time is refused and changes nothing', async () => {
    const s = await site({ ...STAGGERED, strategy: 'manual', waves: [{ percent: 20 }, { percent: 100 }] });
    const canary = s.agents.filter((a) => s.waveOf(a) === 0);
    const rest = s.agents.filter((a) => s.waveOf(a) === 1);
    const before = await snapshotDir(join(s.data, 'rollout'));
    const early = await operator(s.data, 'approve');
    expect(early.code).toBe(1);
    expect(early.stdout + early.stderr).toMatch(/NOT_AWAITING_APPROVAL/);
    expect(await snapshotDir(join(s.data, 'rollout'))).toEqual(before);
    for (const a of canary) await a.cycle();
    for (const a of rest) {
      const ans = await a.cycle();
      expect(ans).toMatchObject({ may: false, code: 'WAVE_NOT_OPEN' });
      expect(ans.reason).toMatch(/approval/);
    }
    expect((await status(s.data)).phase).toBe('awaiting-approval');
    const ok = await operator(s.data, 'approve', '--reason', 'canary fine');
    expect(ok.code, ok.stderr).toBe(0);
    for (const a of rest) expect((await a.cycle()).code).toBe('GO');
    const recs = await rolloutRecords(s.data);
    expect(recs.find((r) => r.event === 'approved')).toMatchObject({ actor: 'ops', reason: 'canary fine' });
    await s.mirror.stop();
  });

  it('the window blocks starts outside it; a pin holds a group back', async () => {
    const today = new Date().getUTCDay();
    const other = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'][(today + 3) % 7]!;
    const s = await site(
      {
        strategy: 'immediate',
        waves: [{ percent: 100 }],
        window: { days: [other], start: '00:00', end: '23:59', tz: 'UTC' },
      },
      6,
    );
    for (const a of s.agents) expect(await a.cycle()).toMatchObject({ may: false, code: 'OUTSIDE_WINDOW' });
    await s.mirror.stop();

    const p = await site({ strategy: 'immediate', waves: [{ percent: 100 }] }, 6, {
      pins: { 'group:scada': '1.0.0' },
      groups: (i) => (i % 2 === 0 ? ['scada'] : ['office']),
    });
    for (const a of p.agents) {
      const ans = await a.cycle();
      if (a.groups.includes('scada')) expect(ans).toMatchObject({ may: false, code: 'PINNED' });
      else expect(ans).toMatchObject({ may: true, code: 'GO' });
    }
    const st = await status(p.data);
    expect(st.perWave[0]).toMatchObject({ agents: 3, committed: 3 });
    await p.mirror.stop();
  });

  it('abort --revert tells the canary to go back and everyone else to stay', async () => {
    const s = await site(STAGGERED, 20);
    const canary = s.agents.filter((a) => s.waveOf(a) === 0);
    const first = canary[0] ?? s.agents[0]!;
    const upd = await runFerry([
      'mirror',
      'update-now',
      '--agent',
      first.agentId,
      '--data',
      s.data,
      '--actor',
      'ops',
    ]);
    expect(upd.code, upd.stderr).toBe(0);
    expect((await first.cycle()).may).toBe(true);
    expect(first.version).toBe(TARGET);
    const r = await operator(s.data, 'abort', '--revert');
    expect(r.code, r.stderr).toBe(0);
    expect(await first.ask()).toMatchObject({ may: false, code: 'REVERT' });
    for (const a of s.agents.filter((x) => x !== first))
      expect(await a.ask()).toMatchObject({ may: false, code: 'ABORTED' });
    const recs = await rolloutRecords(s.data);
    expect(recs.map((x) => x.event)).toContain('update_now');
    expect(recs.find((x) => x.event === 'aborted')).toMatchObject({ revert: true, actor: 'ops' });
    await s.mirror.stop();
  });

  it('the mirror killed -9 mid-rollout resumes the same state', async () => {
    const s = await site({ ...STAGGERED, waves: [{ percent: 30 }, { percent: 100 }] }, 20);
    for (const a of s.agents.filter((x) => s.waveOf(x) === 0)) await a.cycle();
    const one = s.agents.find((x) => s.waveOf(x) === 1)!;
    expect((await one.ask()).code).toBe('GO'); // told to go: updating, at the gate
    const before = await status(s.data);
    expect(before).toMatchObject({ phase: 'running', wave: 1 });
    expect(before.perWave[1]).toMatchObject({ updating: 1 });
    void s.mirror.stop('SIGKILL');
    await s.mirror.exited;
    const m2 = await startMirrorAt(s.data, 0, OPEN_ENROLMENT);
    expect(await status(s.data)).toEqual(before);
    for (const a of s.agents) a.url = m2.url;
    expect(await one.ask()).toMatchObject({ code: 'GO', wave: 1 });
    await m2.stop();
  });
});

describe('what the gate believes comes only from signed heartbeats of enrolled agents', () => {
  it('a forged failure report (wrong key) is refused and does not halt the rollout', async () => {
    const s = await site(STAGGERED, 5);
    const victim = s.agents[0]!;
    const impostor = await loadOrCreateIdentity(join(w.dir, 'impostor'));
    const hb = testHeartbeat(victim.agentId, 1000, {
      results: [
        { update: { outcome: 'failed', version: TARGET, reason: 'x', at: new Date().toISOString() } },
      ],
    });
    const before = await snapshotDir(join(s.data, 'rollout'));
    const r = await fetch(`${s.mirror.url}/v1/telemetry`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(signHeartbeat(hb, impostor.key)),
    });
    expect(r.status).toBe(400);
    expect(await r.json()).toMatchObject({ code: 'BAD_SIGNATURE' });
    expect(await snapshotDir(join(s.data, 'rollout'))).toEqual(before);
    expect((await status(s.data)).phase).toBe('running');
    await s.mirror.stop();
  });

  it('answers only enrolled, unrevoked agents', async () => {
    const s = await site(STAGGERED, 2);
    const unknown = await fetch(`${s.mirror.url}/v1/rollout/${'0'.repeat(32)}`);
    expect(unknown.status).toBe(404);
    expect(await unknown.json()).toMatchObject({ code: 'UNKNOWN_AGENT' });
    const bad = await fetch(`${s.mirror.url}/v1/rollout/not-an-id`);
    expect(bad.status).toBe(400);
    const rev = await runFerry(['mirror', 'agent', 'revoke', s.agents[1]!.agentId, '--data', s.data]);
    expect(rev.code, rev.stderr).toBe(0);
    const revoked = await fetch(`${s.mirror.url}/v1/rollout/${s.agents[1]!.agentId}`);
    expect(revoked.status).toBe(403);
    expect(await revoked.json()).toMatchObject({ code: 'AGENT_REVOKED' });
    await s.mirror.stop();
  });
});

describe('ferry mirror rollout without a serving mirror', () => {
  it('says the gate runs in the serving mirror (exit 1), changes nothing, and has --help', async () => {
    const data = join(w.dir, 'not-serving');
    const { volumes } = await buildBundle(w, join(w.dir, 'not-serving.ferry'), {});
    await importInto(data, volumes[0]!.path, w.rootPath);
    const before = await snapshotDir(data);
    for (const args of [
      ['rollout', 'status'],
      ['rollout', 'halt'],
      ['update-now', '--agent', '0'.repeat(32)],
    ]) {
      const r = await runFerry(['mirror', ...args, '--data', data]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/MIRROR_NOT_RUNNING/);
    }
    expect(await snapshotDir(data)).toEqual(before);
    const help = await runFerry(['mirror', 'rollout', 'abort', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout + help.stderr).toMatch(/--revert/);
    const usage = await runFerry(['mirror', 'rollout', 'approve']);
    expect(usage.code).toBe(2);
  });
});
