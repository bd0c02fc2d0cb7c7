/**
 * The site sees its fleet: a real `ferry mirror serve` with an active bundle
 * (agent 1.4.2 for the rollout, 1.3.9 pinned for group scada), agents enrolled
 * with real keys and sending signed heartbeats. Checked: who is behind, an
 * update_failed alert that appears with the agent's reason and clears when a
 * later update commits, an agent_silent alert that clears when the agent
 * speaks again, pagination and filters, the status page as HTML (escaped,
 * refreshing, no script), /metrics, `ferry mirror status`, and the fleet view
 * surviving a restart and a kill -9. Attacks: an agent reporting markup as its version; a
 * client from another address (with a forged X-Forwarded-For) asking for
 * per-agent detail under the default fleet view.
 */
import { mkdtemp } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { enroll, loadOrCreateIdentity, type AgentIdentity } from '../agent/identity.js';
import { signHeartbeat, type Heartbeat, type JsonObject } from '../core/heartbeat.js';
import { buildBundle, ferry, SAMPLE_ARTIFACTS } from './helpers/fixtures.js';
import { testHeartbeat } from './helpers/heartbeats.js';
import { startMirrorProc, type MirrorProc } from './helpers/mirror-proc.js';
import { useWorld } from './helpers/world.js';

const w = useWorld();

interface Agent {
  id: AgentIdentity;
  counter: number;
}

async function newAgent(m: MirrorProc, hostname: string, groups: string[]): Promise<Agent> {
  const id = await loadOrCreateIdentity(await mkdtemp(join(w.dir, 'agent-')));
  await enroll(m.url, id, { hostname, platform: 'linux-x64', groups });
  return { id, counter: 0 };
}

async function beat(m: MirrorProc, a: Agent, extra: Partial<Heartbeat> = {}): Promise<void> {
  a.counter++;
  const env = signHeartbeat(testHeartbeat(a.id.agentId, a.counter, extra), a.id.key);
  const res = await fetch(`${m.url}/v1/telemetry`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(env),
  });
  expect(res.status).toBe(202);
}

const updateResult = (outcome: string, version: string, reason: string): JsonObject => ({
  update: { outcome, version, reason, phase: 'health-checking', at: new Date().toISOString() },
});

interface FleetJson {
  summary: {
    agents: number;
    behind: number;
    failing: number;
    silent: number;
    byVersion: Record<string, number>;
  };
  alerts: { kind: string; count: number; agents: { id: string; hostname: string; reason: string }[] }[];
  page: number;
  pages: number;
  total: number;
  agents: { id: string; hostname: string; version?: string; behind: boolean; wanted: string | null }[];
}

async function fleet(m: MirrorProc, query = ''): Promise<FleetJson> {
  const res = await fetch(`${m.url}/v1/fleet${query}`);
  expect(res.status).toBe(200);
  return (await res.json()) as FleetJson;
}

/** Asks again until `pred` holds (the view follows heartbeats at once; silence follows the clock). */
async function until(m: MirrorProc, pred: (f: FleetJson) => boolean, timeoutMs = 30_000): Promise<FleetJson> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const f = await fleet(m);
    if (pred(f)) return f;
    if (Date.now() > end) throw new Error(`fleet never got there: ${JSON.stringify(f.alerts)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** GET from another loopback address than the mirror's own (127.0.0.2), as a host elsewhere on the site. */
function getFrom(
  url: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { localAddress: '127.0.0.2', headers }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function activeMirror(data: string, args: string[] = []): Promise<MirrorProc> {
  const file = join(w.dir, `fleet-${Math.random().toString(16).slice(2)}.ferry`);
  const pinned = {
    name: 'ferry-agent-old',
    kind: 'agent' as const,
    version: '1.3.9',
    platform: 'linux-x64',
    content: 'old',
  };
  await buildBundle(w, file, {
    artifacts: [...SAMPLE_ARTIFACTS, pinned],
    spec: { rollout: { agent: '1.4.2', waves: [{ percent: 100 }] }, pins: { 'group:scada': '1.3.9' } },
  });
  const r = await ferry([
    'mirror',
    'import',
    file,
    '--data',
    data,
    '--trust',
    w.rootPath,
    '--site',
    'plant-7',
  ]);
  expect(r.code, r.stderr).toBe(0);
  return startMirrorProc({ data, openEnrolment: true, args });
}

const HOSTILE = `<img src=x onerror=alert(1)>"'&`;

describe('the fleet at the site', () => {
  it('shows who is behind, raises update_failed with the reason, and clears it when the update commits', async () => {
    const data = join(w.dir, 'data-main');
    let m = await activeMirror(data);
    const upToDate = await newAgent(m, 'web-1', ['canary']);
    const behind = await newAgent(m, 'web-2', ['canary']);
    const failed = await newAgent(m, 'web-3', ['canary']);
    const pinned = await newAgent(m, 'plc-1', ['scada']);
    const hostile = await newAgent(m, 'web-4', ['canary']);
    await beat(m, upToDate, { version: '1.4.2' });
    await beat(m, behind, { version: '1.3.0', drift: [{ path: '/etc/a', status: 'changed' }] });
    await beat(m, failed, { version: '1.3.0' });
    await beat(m, failed, {
      version: '1.3.0',
      results: [updateResult('rolled-back', '1.4.2', 'health check failed: exit 3')],
    });
    await beat(m, pinned, { version: '1.3.9' });
    await beat(m, hostile, { version: HOSTILE }); // what an agent reports is shown, never run

    let f = await fleet(m);
    expect(f.summary).toMatchObject({ agents: 5, behind: 2, failing: 1, silent: 0 });
    expect(f.summary.byVersion).toEqual({ '1.4.2': 1, '1.3.0': 2, '1.3.9': 1, [HOSTILE]: 1 });
    const byHost = new Map(f.agents.map((a) => [a.hostname, a]));
    expect(byHost.get('web-2')).toMatchObject({ behind: true, wanted: '1.4.2' });
    expect(byHost.get('plc-1')).toMatchObject({ behind: false, wanted: null }); // held by its group's pin
    expect(byHost.get('web-2')).toMatchObject({ driftCount: 1 });
    // The update report carried no drift: what the previous heartbeat said still stands.
    expect(f.alerts).toEqual([
      {
        kind: 'update_failed',
        count: 1,
        agents: [
          {
            id: failed.id.agentId,
            hostname: 'web-3',
            reason: 'rolled-back 1.4.2: health check failed: exit 3',
          },
        ],
        message: '1 agent(s) failed to update',
      },
    ]);
    const metrics = await (await fetch(`${m.url}/metrics`)).text();
    expect(metrics).toMatch(/^ferry_agents 5$/m);
    expect(metrics).toMatch(/^ferry_agents_behind 2$/m);
    expect(metrics).toMatch(/^ferry_alerts\{kind="update_failed"\} 1$/m);
    expect(metrics).toMatch(/^ferry_alerts\{kind="agent_silent"\} 0$/m);

    // Filters and pages.
    const onlyBehind = await fleet(m, '?filter=behind');
    expect(onlyBehind.agents.map((a) => a.hostname).sort()).toEqual(['web-2', 'web-3']);
    const seen: string[] = [];
    for (let page = 1; page <= 3; page++) {
      const p = await fleet(m, `?size=2&page=${page}`);
      expect(p).toMatchObject({ page, pages: 3, total: 5 });
      seen.push(...p.agents.map((a) => a.id));
    }
    expect(seen).toEqual([...seen].sort());
    expect(new Set(seen).size).toBe(5);
    for (const bad of ['?filter=evil', '?page=0', '?size=9999', '?page=1&page=2', '?x=1']) {
      const res = await fetch(`${m.url}/v1/fleet${bad}`);
      expect(res.status, bad).toBe(400);
      expect(((await res.json()) as { code: string }).code).toBe('BAD_REQUEST');
    }

    // The status page: summary, alert naming the agent, table page, escaped markup, no script.
    const res = await fetch(`${m.url}/?filter=all&page=1`);
    expect(res.headers.get('content-security-policy')).toMatch(/default-src 'none'/);
    const page = await res.text();
    expect(page).toMatch(/<meta http-equiv="refresh" content="\d+" \/>/);
    expect(page).toContain('<b id="agents-count">5</b>');
    expect(page).toContain('<b id="behind-count">2</b>');
    expect(page).toMatch(/data-kind="update_failed"[\s\S]*web-3[\s\S]*health check failed: exit 3/);
    expect(page).toContain('&lt;img src=x onerror=alert(1)&gt;&quot;&#39;&amp;');
    expect(page).not.toContain('<img');
    expect(page).not.toMatch(/<script/i);
    const table = page.slice(
      page.indexOf('<table id="agents">'),
      page.indexOf('</table>', page.indexOf('<table id="agents">')),
    );
    expect(table.match(/<tr>/g)).toHaveLength(6); // header + 5 agents
    expect(table).toContain('behind → 1.4.2');

    // The failed agent tries again and commits: the alert resolves itself, one fewer behind.
    await beat(m, failed, { version: '1.4.2', results: [updateResult('committed', '1.4.2', 'healthy')] });
    // (the view may lag a change by up to a second: mirror/fleet-store.ts VIEW_FRESH_MS)
    f = await until(m, (x) => x.alerts.length === 0);
    expect(f.summary).toMatchObject({ behind: 1, failing: 0 });
    expect(await (await fetch(`${m.url}/metrics`)).text()).toMatch(
      /^ferry_alerts\{kind="update_failed"\} 0$/m,
    );

    // `ferry mirror status` asks the serving mirror.
    const st = await ferry(['mirror', 'status', '--data', data, '--json']);
    expect(st.code, st.stderr).toBe(0);
    expect((JSON.parse(st.stdout) as { fleet: FleetJson }).fleet.summary).toMatchObject({
      agents: 5,
      behind: 1,
    });
    const listed = await ferry(['mirror', 'status', '--data', data, '--agents', '--filter', 'behind']);
    expect(listed.code, listed.stderr).toBe(0);
    expect(listed.stdout).toContain('fleet: 5 agent(s), 1 behind');
    expect(listed.stdout).toMatch(/web-2 {2}1\.3\.0 .*BEHIND→1\.4\.2/);
    expect(listed.stdout).not.toContain('web-1');

    // A clean stop and a restart: the view is what it was.
    expect(await m.stop()).toEqual({ code: 0, signal: null });
    m = await startMirrorProc({ data, openEnrolment: true });
    const again = await fleet(m);
    expect(again.summary).toEqual(f.summary);
    expect(again.agents).toEqual(f.agents);

    // kill -9 right after a heartbeat was acknowledged: the next start replays it from the outbox.
    await beat(m, behind, { version: '1.4.2', results: [updateResult('failed', '1.5.0', 'disk full')] });
    m.signal('SIGKILL');
    await m.exited;
    m = await startMirrorProc({ data, openEnrolment: true });
    const after = await fleet(m);
    expect(after.summary).toMatchObject({ agents: 5, behind: 0, failing: 1 });
    expect(after.alerts[0]).toMatchObject({
      kind: 'update_failed',
      agents: [{ hostname: 'web-2', reason: 'failed 1.5.0: disk full' }],
    });
    expect(await m.stop()).toEqual({ code: 0, signal: null });
  }, 120_000);

  it('raises agent_silent past the threshold and clears it when the agent speaks again', async () => {
    const m = await activeMirror(join(w.dir, 'data-silent'), [
      '--silent-after',
      '3s',
      '--fleet-view',
      'site',
    ]);
    const quiet = await newAgent(m, 'quiet-1', ['canary']);
    await beat(m, quiet, { version: '1.4.2' });
    expect((await fleet(m)).alerts).toEqual([]);
    const silent = await until(m, (f) => f.alerts.some((a) => a.kind === 'agent_silent'));
    expect(silent.alerts).toEqual([
      expect.objectContaining({
        kind: 'agent_silent',
        count: 1,
        agents: [expect.objectContaining({ id: quiet.id.agentId, hostname: 'quiet-1' })],
      }),
    ]);
    expect(silent.summary.silent).toBe(1);
    expect(await (await fetch(`${m.url}/metrics`)).text()).toMatch(
      /^ferry_alerts\{kind="agent_silent"\} 1$/m,
    );
    await beat(m, quiet, { version: '1.4.2' });
    const back = await until(m, (x) => x.alerts.length === 0, 10_000);
    expect(back.summary.silent).toBe(0);
    // --fleet-view site: a host elsewhere on the site network sees the detail too.
    const remote = await getFrom(`${m.url}/v1/fleet`);
    expect(remote.status).toBe(200);
    expect(await m.stop()).toEqual({ code: 0, signal: null });
  }, 60_000);

  it('keeps per-agent detail from other hosts under the default fleet view, whatever X-Forwarded-For says', async () => {
    const m = await activeMirror(join(w.dir, 'data-local'));
    const a = await newAgent(m, 'secret-host-7', ['canary']);
    await beat(m, a, { version: '1.3.0' });
    for (const headers of [{}, { 'X-Forwarded-For': '127.0.0.1' }] as Record<string, string>[]) {
      const api = await getFrom(`${m.url}/v1/fleet`, headers);
      expect(api.status).toBe(403);
      expect(JSON.parse(api.body)).toMatchObject({ code: 'FLEET_VIEW_LOCAL' });
      const page = await getFrom(`${m.url}/`, headers);
      expect(page.status).toBe(200);
      expect(page.body).toContain('<b id="behind-count">1</b>'); // the counts are the site's
      expect(page.body).toContain('id="agents-hidden"');
      expect(page.body).not.toContain('secret-host-7');
      expect(page.body).not.toContain(a.id.agentId);
    }
    // The mirror's own host sees it all.
    expect((await fleet(m)).agents.map((x) => x.hostname)).toEqual(['secret-host-7']);
    // A revoked agent is shown as such and counts no more among the agents, behind or silent.
    const r = await ferry(['mirror', 'agent', 'revoke', a.id.agentId, '--data', join(w.dir, 'data-local')]);
    expect(r.code, r.stderr).toBe(0);
    const after = await until(m, (x) => x.summary.agents === 0);
    expect(after.summary).toMatchObject({ agents: 0, behind: 0, revoked: 1 });
    expect(after.agents).toEqual([
      expect.objectContaining({ hostname: 'secret-host-7', revoked: true, behind: false }),
    ]);
    expect(await m.stop()).toEqual({ code: 0, signal: null });
  }, 60_000);
});
