/**
 * `ferry mirror run-now` with real processes: a `ferry mirror serve` and real `ferry agent run` children
 * polling it every second. The policy's script runs on a 24 h schedule, so after its first run only a
 * run-now request makes it run again: once per request (also across an agent restart), only on the agents
 * the request targets, reported home as `forced`. A script the active manifest does not carry is refused
 * at the mirror, changing nothing on disk. A hostile mirror (a loopback proxy in front of the real one
 * that forges the rollout answer) gets nothing run outside the agent's signed policy, nor past its
 * interpreter allowlist.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { enroll, loadOrCreateIdentity } from '../agent/identity.js';
import {
  eventually,
  importInto,
  OPEN_ENROLMENT,
  readTelemetry,
  startAgent,
  startMirrorAt,
  type LoggedProc,
} from './helpers/agent-proc.js';
import { buildBundle, snapshotDir, type ArtifactInput } from './helpers/fixtures.js';
import { runFerry, type LogLine } from './helpers/mirror-proc.js';
import { useWorld } from './helpers/world.js';

const w = useWorld();

const SCRIPT = '#!/bin/sh\necho "ran" >> "$1"\n';

const event =
  (name: string, fields: Record<string, unknown> = {}) =>
  (l: LogLine) =>
    l.event === name && Object.entries(fields).every(([k, v]) => l[k] === v);

const lines = (p: string) =>
  readFile(p, 'utf8').then(
    (t) => t.split('\n').filter(Boolean),
    () => [] as string[],
  );

/** `tick` for every agent (24 h schedule, writes to `marker`), `other` only for group `db`. */
function artifacts(marker: string, otherMarker: string): ArtifactInput[] {
  const policy = {
    type: 'ferry.policy/v1',
    scripts: [
      { script: 'tick', groups: ['*'], schedule: 'every 24h', args: [marker] },
      { script: 'other', groups: ['db'], schedule: 'every 24h', args: [otherMarker] },
    ],
  };
  return [
    { name: 'tick', kind: 'script', content: SCRIPT },
    { name: 'other', kind: 'script', content: SCRIPT },
    { name: 'baseline', kind: 'policy', content: JSON.stringify(policy) },
  ];
}

async function setUp(name: string) {
  const dir = join(w.dir, name);
  await mkdir(dir, { recursive: true });
  const c = {
    dir,
    data: join(dir, 'mirror'),
    marker: join(dir, 'tick-marker'),
    otherMarker: join(dir, 'other-marker'),
  };
  const b = await buildBundle(w, join(dir, 'b.ferry'), { artifacts: artifacts(c.marker, c.otherMarker) });
  await importInto(c.data, b.volumes[0]!.path, w.rootPath);
  return c;
}

function agentArgs(state: string, mirror: string, group: string, extra: string[] = []): string[] {
  return [
    '--state',
    state,
    '--mirror',
    mirror,
    '--trust',
    w.rootPath,
    '--site',
    'plant-7',
    '--group',
    group,
    '--interval',
    '1',
    ...extra,
  ];
}

async function runNow(data: string, args: string[]) {
  const r = await runFerry(['mirror', 'run-now', '--data', data, '--actor', 'alice', ...args, '--json']);
  return { code: r.code, out: JSON.parse(r.stdout || '{}') as Record<string, unknown>, stderr: r.stderr };
}

/** Waits for `n` more complete cycles of `agent`. */
async function cycles(agent: LoggedProc, n: number) {
  for (let i = 0; i < n; i++) await agent.nextLog(event('agent.cycle'), 30_000);
}

const ran = (agent: LoggedProc, script = 'tick') => agent.logs.filter(event('script.ran', { script }));

describe('ferry mirror run-now through a real mirror and real agents', () => {
  it('runs the policy script once on the targeted agents only, reports it as forced, and refuses an unknown script', async () => {
    const c = await setUp('real');
    const mirror = await startMirrorAt(c.data, 0, OPEN_ENROLMENT);
    const webState = join(c.dir, 'web');
    let web = startAgent(agentArgs(webState, mirror.url, 'web'));
    const db = startAgent(agentArgs(join(c.dir, 'db'), mirror.url, 'db'));
    const webId = String((await web.waitForLog(event('agent.enrolled'))).agentId);
    const dbId = String((await db.waitForLog(event('agent.enrolled'))).agentId);
    await web.waitForLog(event('script.ran', { script: 'tick', reason: 'first-run' }), 30_000);
    await db.waitForLog(event('script.ran', { script: 'tick', reason: 'first-run' }), 30_000);
    await cycles(web, 2);
    await cycles(db, 2);
    expect(ran(web)).toHaveLength(1); // the 24 h schedule alone would not run it again
    expect(ran(db)).toHaveLength(1);

    // a group target reaches only that group's agents
    const g = await runNow(c.data, ['--script', 'tick', '--group', 'web', '--reason', 'check now']);
    expect(g.code).toBe(0);
    const request = g.out.request as { id: string; script: string; target: unknown; actor: string };
    expect(request).toMatchObject({ script: 'tick', target: { group: 'web' }, actor: 'alice' });
    expect(request.id).toMatch(/^[0-9a-f]{32}$/);
    await web.waitForLog(event('script.ran', { script: 'tick', reason: 'run-now' }), 30_000);
    await cycles(web, 3);
    await cycles(db, 3);
    expect(ran(web).map((l) => l.reason)).toEqual(['first-run', 'run-now']); // once, though still offered
    expect(ran(db)).toHaveLength(1);
    expect(await lines(c.marker)).toHaveLength(3);
    const stored = JSON.parse(await readFile(join(c.data, 'rollout', 'run-now.json'), 'utf8')) as {
      requests: { id: string; reason?: string }[];
    };
    expect(stored.requests).toEqual([expect.objectContaining({ id: request.id, reason: 'check now' })]);
    expect(mirror.logs.some(event('rollout.run_now', { id: request.id, actor: 'alice' }))).toBe(true);

    // the result goes home like a scheduled run, marked forced
    const forced = await eventually('a forced result at the mirror', async () =>
      (await readTelemetry(c.data))
        .filter((h) => h.agentId === webId)
        .flatMap((h) => h.payload.results as Record<string, unknown>[])
        .find((r) => r.forced === true),
    );
    expect(forced).toMatchObject({ script: 'tick', exitCode: 0, reason: 'run-now', runNowId: request.id });

    // the handled id is durable: a restarted agent does not run the still-pending request again
    expect(await web.stop()).toEqual({ code: 0, signal: null });
    web = startAgent(agentArgs(webState, mirror.url, 'web'));
    await cycles(web, 3);
    expect(ran(web)).toEqual([]);

    // one agent by id
    const a = await runNow(c.data, ['--script', 'tick', '--agent', dbId]);
    expect(a.code).toBe(0);
    await db.waitForLog(event('script.ran', { script: 'tick', reason: 'run-now' }), 30_000);
    await cycles(web, 2);
    expect(ran(web)).toEqual([]);
    expect(await lines(c.marker)).toHaveLength(4);

    // usage and refusals
    expect((await runNow(c.data, ['--script', 'tick', '--agent', dbId, '--group', 'web'])).code).toBe(2);
    const unknownAgent = await runNow(c.data, ['--script', 'tick', '--agent', 'f'.repeat(32)]);
    expect(unknownAgent).toMatchObject({ code: 1, out: { ok: false, code: 'UNKNOWN_AGENT' } });
    expect(await web.stop()).toEqual({ code: 0, signal: null });
    expect(await db.stop()).toEqual({ code: 0, signal: null });
    // The gate may refresh its own state file on a tick, and the fleet view writes its snapshot (and
    // the outbox's trim floor with it) up to 5 s after the agents' last heartbeats; everything else
    // must stay as it was.
    const settled = async () => {
      const v = await snapshotDir(c.data);
      for (const k of ['rollout/gate.json', 'fleet.json', 'telemetry/outbox.json']) delete v[k];
      return v;
    };
    const before = await settled();
    const refused = await runNow(c.data, ['--script', 'no-such-script', '--group', 'web']);
    expect(refused).toMatchObject({ code: 1, out: { ok: false, code: 'UNKNOWN_SCRIPT' } });
    const policyByName = await runNow(c.data, ['--script', 'baseline']); // an artifact, but not a script
    expect(policyByName).toMatchObject({ code: 1, out: { ok: false, code: 'UNKNOWN_SCRIPT' } });
    expect(await settled()).toEqual(before);

    await mirror.stop();
    const down = await runNow(c.data, ['--script', 'tick']);
    expect(down).toMatchObject({ code: 1, out: { ok: false, code: 'MIRROR_NOT_RUNNING' } });
  }, 180_000);
});

/**
 * A mirror that forges run-now requests: every request goes to the real mirror except the rollout answer,
 * which names `runNow` from `forged`.
 */
async function hostileProxy(upstream: string, forged: { id: string; script: string }[]) {
  const up = new URL(upstream);
  const server: Server = createServer((req, res) => {
    if (req.method === 'GET' && req.url?.startsWith('/v1/rollout/')) {
      const agentId = new URL(req.url, 'http://x').pathname.slice('/v1/rollout/'.length);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          agentId,
          rolloutId: null,
          version: null,
          wave: null,
          may: false,
          code: 'NO_ROLLOUT',
          reason: 'no rollout is under way',
          runNow: forged,
        }),
      );
      return;
    }
    const out = httpRequest(
      { host: up.hostname, port: up.port, method: req.method, path: req.url, headers: req.headers },
      (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      },
    );
    out.on('error', () => res.destroy());
    req.pipe(out);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

describe('run-now from a hostile mirror', () => {
  it('runs nothing outside the signed policy, and nothing past the interpreter allowlist', async () => {
    const c = await setUp('hostile');
    const mirror = await startMirrorAt(c.data, 0, OPEN_ENROLMENT);
    const id = (n: number) => n.toString(16).padStart(32, '0');
    const proxy = await hostileProxy(mirror.url, [
      { id: id(1), script: 'other' }, // in the manifest, but the policy gives it only to group db
      { id: id(2), script: 'no-such-script' },
      { id: id(3), script: '../../../bin/sh' },
    ]);
    // a web agent: its policy runs `tick` only
    const web = startAgent(agentArgs(join(c.dir, 'web'), proxy.url, 'web'));
    await web.waitForLog(event('script.ran', { script: 'tick', reason: 'first-run' }), 30_000);
    await web.waitForLog(event('script.run_now_ignored', { script: 'other' }), 30_000);
    await cycles(web, 3);
    expect(web.logs.filter(event('script.run_now_ignored')).map((l) => l.script)).toEqual([
      'other',
      'no-such-script',
      '../../../bin/sh',
    ]); // each forged id considered once, none run
    expect(ran(web, 'other')).toEqual([]);
    expect(await lines(c.otherMarker)).toEqual([]);
    expect(ran(web)).toHaveLength(1);
    expect(await web.stop()).toEqual({ code: 0, signal: null });
    await proxy.close();

    // a db agent that allows only bash: a forged request for its own sh script is refused like a scheduled run
    const forged: { id: string; script: string }[] = [];
    const proxy2 = await hostileProxy(mirror.url, forged);
    const db = startAgent(agentArgs(join(c.dir, 'db'), proxy2.url, 'db', ['--allow-interpreter', 'bash']));
    await db.waitForLog(
      event('script.refused', { script: 'other', code: 'INTERPRETER_NOT_ALLOWED' }),
      30_000,
    );
    forged.push({ id: id(4), script: 'other' }); // after the scheduled refusal: only the request makes it due
    const forcedRefusal = await db.nextLog(
      event('script.refused', { script: 'other', code: 'INTERPRETER_NOT_ALLOWED' }),
      30_000,
    );
    expect(forcedRefusal).toBeDefined();
    await cycles(db, 2);
    expect(db.logs.filter(event('script.ran'))).toEqual([]);
    expect(await lines(c.otherMarker)).toEqual([]);
    expect(await lines(c.marker)).toEqual(['ran']); // only the web agent's scheduled run
    expect(await db.stop()).toEqual({ code: 0, signal: null });
    await proxy2.close();
    await mirror.stop();
  }, 180_000);
});

describe('run-now requests in the rollout answer', () => {
  it('are offered to the targeted agent; asking for them with ?peek=1 is not taken as the start of an update', async () => {
    const dir = join(w.dir, 'peek');
    const data = join(dir, 'mirror');
    await mkdir(dir, { recursive: true });
    const b = await buildBundle(w, join(dir, 'b.ferry'), {
      spec: { rollout: { agent: '2.0.0', strategy: 'immediate', waves: [{ percent: 100 }] } },
      artifacts: [
        ...artifacts(join(dir, 'm1'), join(dir, 'm2')),
        {
          name: 'ferry-agent',
          kind: 'agent',
          version: '2.0.0',
          platform: 'linux-x64',
          content: randomBytes(4096),
        },
      ],
    });
    await importInto(data, b.volumes[0]!.path, w.rootPath);
    const mirror = await startMirrorAt(data, 0, OPEN_ENROLMENT);
    const id = await loadOrCreateIdentity(join(dir, 'agent'));
    await enroll(mirror.url, id, { hostname: 'n1', platform: 'linux-x64', groups: ['web'] });
    const ask = async (q = '') => {
      const r = await fetch(`${mirror.url}/v1/rollout/${id.agentId}${q}`);
      expect(r.status).toBe(200);
      return (await r.json()) as Record<string, unknown>;
    };
    const updating = async () => {
      const r = await runFerry(['mirror', 'rollout', 'status', '--data', data, '--json']);
      const v = JSON.parse(r.stdout) as { rollout: { perWave: { updating: number }[] } };
      return v.rollout.perWave.reduce((n, c) => n + c.updating, 0);
    };

    const peeked = await ask('?peek=1');
    expect(peeked).toMatchObject({ may: true, code: 'GO' });
    expect(peeked.runNow).toBeUndefined();
    expect(await updating()).toBe(0);

    const other = await runNow(data, ['--script', 'tick', '--group', 'db']);
    expect(other.code).toBe(0);
    expect((await ask('?peek=1')).runNow).toBeUndefined(); // another group's request
    const mine = await runNow(data, ['--script', 'tick', '--agent', id.agentId]);
    const all = await runNow(data, ['--script', 'other']);
    const ids = [mine, all].map((r) => (r.out.request as { id: string }).id);
    expect((await ask('?peek=1')).runNow).toEqual([
      { id: ids[0], script: 'tick' },
      { id: ids[1], script: 'other' },
    ]);
    expect(await updating()).toBe(0);

    // the agent's own update question is remembered as its start, as before
    expect(await ask()).toMatchObject({ may: true, code: 'GO' });
    expect(await updating()).toBe(1);
    await mirror.stop();
  }, 120_000);
});
