/**
 * The doctor's findings in the site's fleet view: each agent's failing and
 * warning checks from its latest report, carried by its signed heartbeats to a
 * real `ferry mirror serve`. Checked: `GET /v1/fleet` (per agent and in the
 * summary), the `doctor` filter, the doctor_failing alert naming its agents and
 * clearing once a later report is clean, a heartbeat without a report or with
 * an older one changing nothing, the status page's chip, `ferry mirror status
 * --agents`, /metrics, and the view surviving a restart and a kill -9. Attack:
 * a heartbeat whose check id is markup is refused whole and changes nothing.
 * End to end: a real agent whose key is made readable by others reports the
 * failing `key` check, the alert stands until `ferry agent doctor --fix` mends
 * it, then clears. The agent runs in a user and mount namespace the test makes,
 * where systemd/ferry-agent.service is installed and enabled on a tmpfs over
 * /etc/systemd/system, so that every check can pass; the network is the host's
 * loopback.
 */
import { spawn, spawnSync } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { enroll, loadOrCreateIdentity, type AgentIdentity } from '../agent/identity.js';
import { signEnvelope } from '../core/dsse.js';
import {
  HEARTBEAT_PAYLOAD_TYPE,
  signHeartbeat,
  type DoctorSummary,
  type Heartbeat,
} from '../core/heartbeat.js';
import { eventually, importInto, OPEN_ENROLMENT, startMirrorAt } from './helpers/agent-proc.js';
import { buildBundle, ferry, FERRY_BIN, REPO, snapshotDir } from './helpers/fixtures.js';
import { testHeartbeat } from './helpers/heartbeats.js';
import {
  followLogs,
  runFerry,
  startMirrorProc,
  type Exit,
  type FerryChild,
  type LoggedProc,
  type MirrorProc,
} from './helpers/mirror-proc.js';
import { haveProgram } from './helpers/system.js';
import { useWorld } from './helpers/world.js';

const w = useWorld();

interface Agent {
  id: AgentIdentity;
  counter: number;
}

interface DoctorView {
  at: string;
  failCount: number;
  warnCount: number;
  fail: string[];
  warn: string[];
}

interface FleetJson {
  summary: { agents: number; doctorFailing: number; failing: number };
  alerts: { kind: string; count: number; agents: { id: string; hostname: string; reason: string }[] }[];
  total: number;
  agents: { id: string; hostname: string; doctor?: DoctorView; doctorFailing: boolean }[];
}

async function newAgent(m: MirrorProc, hostname: string): Promise<Agent> {
  const id = await loadOrCreateIdentity(await mkdtemp(join(w.dir, 'agent-')));
  await enroll(m.url, id, { hostname, platform: 'linux-x64', groups: [] });
  return { id, counter: 0 };
}

async function post(m: MirrorProc, body: unknown): Promise<Response> {
  return fetch(`${m.url}/v1/telemetry`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
}

async function beat(m: MirrorProc, a: Agent, extra: Partial<Heartbeat> = {}): Promise<void> {
  a.counter++;
  const res = await post(m, signHeartbeat(testHeartbeat(a.id.agentId, a.counter, extra), a.id.key));
  expect(res.status).toBe(202);
}

async function fleet(url: string, query = ''): Promise<FleetJson> {
  const res = await fetch(`${url}/v1/fleet${query}`);
  expect(res.status).toBe(200);
  return (await res.json()) as FleetJson;
}

const report = (at: string, problems: DoctorSummary['problems'], counts = {}): DoctorSummary => ({
  at,
  ok: 14,
  warn: problems.filter((p) => p.status === 'warn').length,
  fail: problems.filter((p) => p.status === 'fail').length,
  problems,
  ...counts,
});
const fail = (id: string) => ({ id, status: 'fail' as const, evidence: `${id} is broken` });
const warn = (id: string) => ({ id, status: 'warn' as const, evidence: `${id} looks odd` });

const alertOf = (f: FleetJson) => f.alerts.find((a) => a.kind === 'doctor_failing');
const doctorOf = (f: FleetJson, a: Agent) => f.agents.find((x) => x.id === a.id.agentId)?.doctor;

describe('the doctor in the fleet view', () => {
  it('shows failing and warning checks per agent, filters, alerts until a later clean report, survives restarts', async () => {
    const data = join(w.dir, 'data-doctor');
    const file = join(w.dir, 'doctor.ferry');
    await buildBundle(w, file);
    await importInto(data, file, w.rootPath);
    let m = await startMirrorProc({ data, openEnrolment: true });
    const sick = await newAgent(m, 'web-1');
    const odd = await newAgent(m, 'web-2');
    const many = await newAgent(m, 'db-1');
    const quiet = await newAgent(m, 'db-2');
    await beat(m, sick, { doctor: report('2026-11-29T10:00:00.000Z', [fail('key'), warn('temp')]) });
    await beat(m, odd, { doctor: report('2026-11-29T10:00:00.000Z', [warn('temp')]) });
    // five checks fail, the summary carried two of them: the count is exact, the ids are those sent
    await beat(m, many, {
      doctor: report('2026-11-29T10:00:00.000Z', [fail('clock'), fail('cache')], { fail: 5 }),
    });
    await beat(m, quiet);

    const f = await fleet(m.url);
    expect(f.summary).toMatchObject({ agents: 4, doctorFailing: 2, failing: 0 });
    expect(doctorOf(f, sick)).toEqual({
      at: '2026-11-29T10:00:00.000Z',
      failCount: 1,
      warnCount: 1,
      fail: ['key'],
      warn: ['temp'],
    });
    expect(doctorOf(f, odd)).toMatchObject({ failCount: 0, warnCount: 1, fail: [], warn: ['temp'] });
    expect(doctorOf(f, quiet)).toBeUndefined();
    const alert = alertOf(f)!;
    expect(alert).toMatchObject({ count: 2, message: '2 agent(s) report failing doctor checks' });
    expect(alert.agents).toEqual(
      expect.arrayContaining([
        { id: sick.id.agentId, hostname: 'web-1', reason: 'failing: key (checked 2026-11-29T10:00:00.000Z)' },
        {
          id: many.id.agentId,
          hostname: 'db-1',
          reason: 'failing: clock, cache and 3 more (checked 2026-11-29T10:00:00.000Z)',
        },
      ]),
    );
    const only = await fleet(m.url, '?filter=doctor');
    expect(only.total).toBe(2);
    expect(only.agents.map((a) => a.hostname).sort()).toEqual(['db-1', 'web-1']);

    const metrics = await (await fetch(`${m.url}/metrics`)).text();
    expect(metrics).toMatch(/^ferry_agents_doctor_failing 2$/m);
    expect(metrics).toMatch(/^ferry_alerts\{kind="doctor_failing"\} 1$/m);

    const page = await (await fetch(`${m.url}/?filter=doctor`)).text();
    expect(page).toContain('<span id="doctor-count">2</span>');
    expect(page).toMatch(/<span class="chip doctor" title="doctor at [^"]*">doctor ✗1: key<\/span>/);
    expect(page).toContain('doctor ✗5: clock, cache');
    expect(page).toMatch(/<li class="alert" data-kind="doctor_failing"><b>doctor_failing<\/b>/);
    const all = await (await fetch(`${m.url}/`)).text();
    expect(all).toContain('<span class="chip doctor-warn"');
    expect(all).toContain('doctor ⚠1: temp');

    const listed = await ferry(['mirror', 'status', '--data', data, '--agents', '--filter', 'doctor']);
    expect(listed.code, listed.stderr).toBe(0);
    expect(listed.stdout).toContain('2 with failing doctor checks');
    expect(listed.stdout).toContain('ALERT doctor_failing: 2 agent(s) report failing doctor checks');
    expect(listed.stdout).toMatch(/web-1 .* doctor fail 1 \(key\) warn 1 \(temp\) at 2026-11-29T10:00:00/);
    expect(listed.stdout).not.toMatch(/web-2 /);
    const bad = await ferry(['mirror', 'status', '--data', data, '--agents', '--filter', 'sick']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('behind, failing, silent, doctor');

    // A heartbeat with no report, and one with an older report, leave the latest standing.
    await beat(m, sick);
    await beat(m, sick, { doctor: report('2026-11-28T10:00:00.000Z', []) });
    expect(doctorOf(await fleet(m.url), sick)).toMatchObject({ fail: ['key'] });

    // Attack: a check id that is markup. The heartbeat is refused whole; nothing changes.
    const before = await snapshotDir(data);
    const hostile = testHeartbeat(sick.id.agentId, sick.counter + 1, {
      doctor: report('2026-11-30T10:00:00.000Z', [
        { id: '<img src=x onerror=alert(1)>', status: 'fail', evidence: 'x' },
      ]),
    });
    const env = signEnvelope(HEARTBEAT_PAYLOAD_TYPE, Buffer.from(JSON.stringify(hostile)), [sick.id.key]);
    const refused = await post(m, env);
    expect(refused.status).toBe(400);
    expect(await refused.text()).toContain('BAD_HEARTBEAT');
    expect(await snapshotDir(data)).toEqual(before);
    expect(doctorOf(await fleet(m.url), sick)).toMatchObject({ fail: ['key'] });
    expect(await (await fetch(`${m.url}/`)).text()).not.toContain('<img');

    // A clean stop and a restart: the doctor's findings are what they were.
    const kept = await fleet(m.url);
    expect(await m.stop()).toEqual({ code: 0, signal: null });
    m = await startMirrorProc({ data, openEnrolment: true });
    const again = await fleet(m.url);
    expect(again.agents).toEqual(kept.agents);
    expect(again.alerts).toEqual(kept.alerts);

    // A later clean report clears web-1 from the alert; kill -9 right after: replayed from the outbox.
    await beat(m, sick, { doctor: report('2026-11-30T10:00:00.000Z', []) });
    m.signal('SIGKILL');
    await m.exited;
    m = await startMirrorProc({ data, openEnrolment: true });
    const after = await fleet(m.url);
    expect(after.summary.doctorFailing).toBe(1);
    expect(doctorOf(after, sick)).toMatchObject({ failCount: 0, fail: [], at: '2026-11-30T10:00:00.000Z' });
    expect(alertOf(after)?.agents.map((a) => a.hostname)).toEqual(['db-1']);

    // The last failing agent reports clean: the alert is gone, the gauges say so.
    await beat(m, many, { doctor: report('2026-11-30T11:00:00.000Z', [warn('temp')]) });
    // the view may lag a heartbeat by up to a second (docs/mirror.md)
    const clear = await eventually('doctor_failing cleared', async () => {
      const f = await fleet(m.url);
      return alertOf(f) ? undefined : f;
    });
    expect(clear.summary.doctorFailing).toBe(0);
    expect((await fleet(m.url, '?filter=doctor')).total).toBe(0);
    const gauges = await (await fetch(`${m.url}/metrics`)).text();
    expect(gauges).toMatch(/^ferry_agents_doctor_failing 0$/m);
    expect(gauges).toMatch(/^ferry_alerts\{kind="doctor_failing"\} 0$/m);
    expect(await m.stop()).toEqual({ code: 0, signal: null });
  }, 120_000);
});

/** Installs and enables the agent's unit on a tmpfs over /etc/systemd/system, then runs "$@". */
const WITH_UNIT = [
  'set -e',
  'd=/etc/systemd/system',
  'mount -t tmpfs ferry-units "$d"',
  'mkdir "$d/multi-user.target.wants"',
  'cp "$FERRY_UNIT" "$d/ferry-agent.service"',
  'ln -s ../ferry-agent.service "$d/multi-user.target.wants/ferry-agent.service"',
  'exec "$@"',
].join('\n');
const NAMESPACE = ['--user', '--map-root-user', '--mount', 'sh', '-c', WITH_UNIT, 'sh'];

/** `ferry ARGS...` in a namespace of its own with the unit installed (the process is ferry's, by exec). */
function spawnWithUnit(args: string[]): FerryChild {
  const child = spawn('unshare', [...NAMESPACE, process.execPath, FERRY_BIN, ...args], {
    env: { ...process.env, FERRY_UNIT: join(REPO, 'systemd', 'ferry-agent.service') },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<Exit>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code, signal }));
  });
  return { child, exited, stdout: () => out, stderr: () => err };
}

async function runWithUnit(args: string[]): Promise<Exit & { stdout: string; stderr: string }> {
  const c = spawnWithUnit(args);
  const exit = await c.exited;
  return { ...exit, stdout: c.stdout(), stderr: c.stderr() };
}

/** Whether this host lets an unprivileged process make a user and mount namespace and mount a tmpfs. */
function namespacesWork(): boolean {
  if (!haveProgram('unshare')) return false;
  const r = spawnSync('unshare', [...NAMESPACE, 'true'], {
    env: { ...process.env, FERRY_UNIT: join(REPO, 'systemd', 'ferry-agent.service') },
    stdio: 'ignore',
  });
  if (r.status === 0) return true;
  if (process.env.FERRY_REQUIRE_ALL === '1')
    throw new Error('user and mount namespaces are required (FERRY_REQUIRE_ALL=1) but unshare failed');
  console.warn('skipping the end-to-end doctor test: this host refuses unprivileged user namespaces');
  return false;
}

describe.runIf(namespacesWork())('end to end with a real agent', () => {
  it('a key made readable by others raises doctor_failing; `ferry agent doctor --fix` mends it and the alert clears', async () => {
    const bundle = join(w.dir, 'e2e.ferry');
    await buildBundle(w, bundle);
    const data = join(w.dir, 'e2e-mirror');
    await importInto(data, bundle, w.rootPath);
    const mirror = await startMirrorAt(data, 0, OPEN_ENROLMENT);
    const state = join(w.dir, 'e2e-agent');
    await mkdir(state, { recursive: true, mode: 0o700 });
    const args = [
      '--state',
      state,
      '--mirror',
      mirror.url,
      '--trust',
      w.rootPath,
      '--site',
      'plant-7',
      '--interval',
      '1',
      '--doctor-interval',
      '1',
    ];
    const start = (): LoggedProc => followLogs(spawnWithUnit(['agent', 'run', ...args]), 'agent');
    let agent = start();
    try {
      await agent.waitForLog((l) => l.event === 'doctor.ran', 60_000);
      const agentId = (JSON.parse(await readFile(join(state, 'state.json'), 'utf8')) as { agentId: string })
        .agentId;
      const seen = await eventually(
        'the agent in the fleet view with a doctor report',
        async () => {
          const f = await fleet(mirror.url);
          return f.agents.find((a) => a.id === agentId && a.doctor) ?? undefined;
        },
        60_000,
      );
      expect(seen.doctor!.fail).toEqual([]); // a fresh node fails no check

      // The key becomes readable by others while the agent runs (it holds the key in memory).
      const key = join(state, 'keys', 'agent.key');
      await chmod(key, 0o644);
      const raised = await eventually(
        'doctor_failing naming the agent',
        async () => {
          const a = alertOf(await fleet(mirror.url));
          return a?.agents.some((x) => x.id === agentId) ? a : undefined;
        },
        60_000,
      );
      expect(raised.agents.find((x) => x.id === agentId)!.reason).toMatch(/^failing: key \(checked /);
      const home = await runFerry(['mirror', 'doctor', agentId, '--data', data, '--json']);
      const v = JSON.parse(home.stdout) as { problems: { id: string; status: string; evidence: string }[] };
      expect(v.problems).toContainEqual({
        id: 'key',
        status: 'fail',
        evidence: expect.stringContaining('mode 0644') as string,
      });
      const page = await (await fetch(`${mirror.url}/?filter=doctor`)).text();
      expect(page).toContain('doctor ✗1: key');

      // --fix runs with the agent stopped (it never fixes under the agent's lock).
      await agent.stop();
      const fixed = await runWithUnit(['agent', 'doctor', '--fix', '--state', state, '--json']);
      expect(fixed.code, fixed.stdout + fixed.stderr).toBe(0);
      expect((await stat(key)).mode & 0o777).toBe(0o600);
      agent = start();
      const cleared = await eventually(
        'doctor_failing cleared',
        async () => {
          const f = await fleet(mirror.url);
          const mine = f.agents.find((a) => a.id === agentId);
          return mine?.doctor?.failCount === 0 && !alertOf(f) ? f : undefined;
        },
        60_000,
      );
      expect(cleared.summary.doctorFailing).toBe(0);
      expect((await fleet(mirror.url, '?filter=doctor')).total).toBe(0);
    } finally {
      await agent.stop();
      await mirror.stop();
    }
  }, 180_000);
});
