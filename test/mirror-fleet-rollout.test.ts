/**
 * The fleet view shows the current rollout as the rollout gate reports it
 * (mirror/fleet.ts RolloutSource): per-wave progress bars on the status page
 * and in `GET /v1/fleet`, and a `rollout_halted` alert carrying the halt's
 * reason that resolves itself when the rollout resumes. The gate here is a
 * stub whose summary the test sets; the mirror app, its fleet service and
 * the agent's enrolment and heartbeats are real, on a loopback port.
 */
import { once } from 'node:events';
import { mkdtemp, readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enroll, loadOrCreateIdentity } from '../agent/identity.js';
import { signHeartbeat } from '../core/heartbeat.js';
import type { RolloutCounts } from '../core/telemetry.js';
import { silentLogger } from '../platform/log.js';
import { agentsFor } from '../mirror/agents.js';
import { FleetService } from '../mirror/fleet-store.js';
import type { RolloutSummary } from '../mirror/fleet.js';
import { createHandler } from '../mirror/http/app.js';
import { Store } from '../mirror/store.js';
import { makeWorld, type World } from './helpers/fixtures.js';
import { testHeartbeat } from './helpers/heartbeats.js';

let w: World;
let base: string;
let service: FleetService;
let summary: RolloutSummary | null = null;
let close: () => Promise<void>;

const counts = (c: Partial<RolloutCounts>): RolloutCounts => ({
  agents: 0,
  pending: 0,
  updating: 0,
  committed: 0,
  failed: 0,
  rolledBack: 0,
  silent: 0,
  ...c,
});

beforeAll(async () => {
  w = await makeWorld();
  const dir = await mkdtemp(join(w.dir, 'data-'));
  const store = await Store.open(dir, { init: { rootBytes: await readFile(w.rootPath), site: 'plant-7' } });
  const agents = agentsFor(store);
  agents.openEnrolment = true;
  const outbox = await agents.outbox();
  service = await FleetService.open({
    dataDir: dir,
    agents,
    outbox,
    now: Date.now,
    log: silentLogger,
    rollout: { rolloutSummary: () => summary },
  });
  const server = createServer(createHandler({ store, agents, fleet: { service, mode: 'local' } }));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  close = async () => {
    await new Promise((r) => server.close(r));
    await service.close();
    await agents.close();
  };
});

afterAll(async () => {
  await close();
  await w.cleanup();
});

async function fleetJson(): Promise<{ alerts: { kind: string; message: string }[]; rollout: unknown }> {
  const res = await fetch(`${base}/v1/fleet`);
  expect(res.status).toBe(200);
  return (await res.json()) as { alerts: { kind: string; message: string }[]; rollout: unknown };
}

describe('the rollout on the fleet view', () => {
  it('shows each wave as a stacked bar and raises rollout_halted until the rollout resumes', async () => {
    const id = await loadOrCreateIdentity(await mkdtemp(join(w.dir, 'agent-')));
    await enroll(base, id, { hostname: 'web-1', platform: 'linux-x64', groups: ['canary'] });
    const res = await fetch(`${base}/v1/telemetry`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(signHeartbeat(testHeartbeat(id.agentId, 1, { version: '1.4.2' }), id.key)),
    });
    expect(res.status).toBe(202);

    expect((await fleetJson()).rollout).toBeNull();
    expect(await (await fetch(`${base}/`)).text()).toContain('no rollout under way');

    summary = {
      rolloutId: 'a'.repeat(64),
      version: '1.4.2',
      strategy: 'staggered',
      state: 'halted',
      wave: 0,
      waves: [
        { percent: 5, counts: counts({ agents: 4, committed: 2, failed: 1, rolledBack: 1 }) },
        { percent: 100, counts: counts({ agents: 76, pending: 76 }) },
      ],
      haltReason: 'failure rate 0.5 crossed maxFailureRate 0.1',
    };
    const halted = await fleetJson();
    expect(halted.rollout).toEqual(summary);
    expect(halted.alerts).toEqual([
      expect.objectContaining({
        kind: 'rollout_halted',
        message: expect.stringContaining('failure rate 0.5 crossed maxFailureRate 0.1') as string,
      }),
    ]);
    const page = await (await fetch(`${base}/`)).text();
    expect(page).toContain('<b id="rollout-state">halted</b>');
    expect(page).toMatch(/data-kind="rollout_halted"/);
    // Wave 1: 2 committed, 1 failed, 1 rolled back of 4, as parts of one bar.
    expect(page).toMatch(/class="s-committed"\s+style="width:50\.00%"/);
    expect(page).toMatch(/class="s-failed"\s+style="width:25\.00%"/);
    expect(page).toMatch(/class="s-rolledBack"\s+style="width:25\.00%"/);
    expect(page).toMatch(/class="s-pending"\s+style="width:100\.00%"/);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toMatch(/^ferry_alerts\{kind="rollout_halted"\} 1$/m);

    summary = { ...summary, state: 'running' };
    delete summary.haltReason;
    expect((await fleetJson()).alerts).toEqual([]);
    expect(await (await fetch(`${base}/metrics`)).text()).toMatch(
      /^ferry_alerts\{kind="rollout_halted"\} 0$/m,
    );
  }, 30_000);
});
