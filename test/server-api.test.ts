/**
 * The server's JSON API with an admin's bearer token: the whole path (upload an artifact, register a
 * release and a site, pin, bulk-mark agents, build a bundle) works, and bad input on every route gets a
 * coded error and leaves the data directory as it was.
 */
import { copyFile, mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ferry, makeKey, snapshotDir, tempDir } from './helpers/fixtures.js';
import { killStrays } from './helpers/mirror-proc.js';
import {
  batch,
  enrolment,
  heartbeat,
  makeAgent,
  makeMirror,
  type TestAgent,
} from './helpers/server-fixtures.js';
import { api, startServerProc, type ServerProc } from './helpers/server-proc.js';
import { decodeBase64Strict } from '../core/encoding.js';
import type { Manifest } from '../core/manifest.js';
import { targetVersion } from '../agent/update/version-choice.js';

let dir: string;
let cleanup: () => Promise<void>;
let data: string;
let s: ServerProc;
let token: string;
let agent: TestAgent;

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('ferry-server-api-'));
  data = join(dir, 'server');
  const m = await makeMirror(dir, 'm1', 'plant-7');
  expect(
    (await ferry(['server', 'register-mirror', '--data', data, '--site', 'plant-7', '--pub', m.pubPath]))
      .code,
  ).toBe(0);
  await makeKey(join(dir, 'keys'), 'release');
  await mkdir(join(data, 'signing'), { recursive: true });
  await copyFile(join(dir, 'keys/release.key'), join(data, 'signing/bundle.key'));
  s = await startServerProc(data);
  token = (await ferry(['server', 'token', 'create', '--data', data, '--user', 'admin'])).stdout.trim();
  agent = makeAgent();
  const res = await fetch(`${s.url}/v1/telemetry`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ batches: [batch(m, 1, 2, [enrolment(agent, 1), heartbeat(agent, 2, 1)])] }),
  });
  expect(res.status).toBe(202);
}, 120_000);
afterAll(async () => {
  await s?.stop();
  await killStrays();
  await cleanup();
});

async function upload(query: string, body: string | Buffer, type = 'application/octet-stream') {
  const res = await fetch(`${s.url}/v1/artifacts?${query}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': type },
    body,
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

/** The data directory less the server's own checkpoint, lock and upload scratch. */
async function durable() {
  const snap = await snapshotDir(data);
  for (const k of Object.keys(snap))
    if (k === 'state.json' || k === 'lock' || k.startsWith('tmp/')) delete snap[k];
  return snap;
}

describe('the JSON API', () => {
  it('uploads, registers, pins, marks and builds with an admin token', async () => {
    const up = await upload(
      'kind=agent&name=ferry-agent&version=2.0.0&platform=linux-x64',
      Buffer.alloc(10_000, 1),
    );
    expect(up.status).toBe(201);
    const rel = await api(s.url, 'POST', '/v1/releases', token, {
      name: 'fleet',
      version: '2.0.0',
      artifacts: ['agent:ferry-agent@2.0.0/linux-x64'],
    });
    expect(rel.status, JSON.stringify(rel.json)).toBe(201);
    expect((await api(s.url, 'POST', '/v1/sites', token, { name: 'ship-3', sequence: 7 })).status).toBe(201);
    expect(
      (await api(s.url, 'POST', '/v1/sites/plant-7/pins', token, { target: 'group:scada', version: '1.0.0' }))
        .status,
    ).toBe(200);
    const bulk = await api(s.url, 'POST', '/v1/agents/bulk', token, {
      action: 'update-now',
      agents: [agent.id],
    });
    expect(bulk.json).toEqual({ ok: true, agents: 1 });
    const b = await api(s.url, 'POST', '/v1/bundles', token, {
      site: 'plant-7',
      release: 'fleet@2.0.0',
      strategy: 'manual',
    });
    expect(b.status, JSON.stringify(b.json)).toBe(201);
    expect(b.json.bundle).toMatchObject({
      site: 'plant-7',
      sequence: 1,
      strategy: 'manual',
      status: 'signed',
    });
    const fleet = await api(s.url, 'GET', '/v1/fleet?site=plant-7&behind=1', token);
    expect(fleet.json).toMatchObject({ total: 1, agents: [{ id: agent.id, version: '1.0.0' }] });
    const sites = await api(s.url, 'GET', '/v1/sites', token);
    expect(sites.json.sites).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          name: 'plant-7',
          sequence: 1,
          pins: { 'group:scada': '1.0.0' },
          updateNow: [],
        }),
      ]),
    );
  });

  it('answers bad input on every route with a coded error and changes nothing', async () => {
    const before = await durable();
    const cases: [string, string, unknown, number, string][] = [
      ['POST', '/v1/releases', '{"name":"a","name":"b"}', 400, 'BAD_REQUEST'],
      ['POST', '/v1/releases', [], 400, 'BAD_INPUT'],
      [
        'POST',
        '/v1/releases',
        { name: 'fleet', version: '2.0.0', artifacts: ['agent:ferry-agent@2.0.0/linux-x64'] },
        409,
        'RELEASE_EXISTS',
      ],
      ['POST', '/v1/releases', { name: 'x', version: '1', artifacts: ['script:nope@1'] }, 400, 'BAD_INPUT'],
      ['POST', '/v1/releases', { name: 'x', version: '1', artifacts: [] }, 400, 'BAD_INPUT'],
      ['POST', '/v1/releases', { name: 'x', version: '1', artifacts: 'all' }, 400, 'BAD_INPUT'],
      ['POST', '/v1/releases', { name: 'x', version: '1', artifacts: [], more: 1 }, 400, 'BAD_INPUT'],
      ['POST', '/v1/sites', { name: '../x' }, 400, 'BAD_INPUT'],
      ['POST', '/v1/sites', { name: 'x', sequence: -1 }, 400, 'BAD_INPUT'],
      ['POST', '/v1/sites', { name: 'x', sequence: 1.5 }, 400, 'BAD_INPUT'],
      ['POST', '/v1/sites/plant-7/pins', { target: 'host:x', version: '1.0.0' }, 400, 'BAD_INPUT'],
      ['POST', '/v1/sites/plant-7/pins', { target: 'group:g', version: 'newest' }, 400, 'BAD_INPUT'],
      ['POST', '/v1/sites/atlantis/pins', { target: 'group:g', version: '1.0.0' }, 404, 'UNKNOWN_SITE'],
      ['POST', '/v1/agents/bulk', { action: 'reboot', agents: [agent.id] }, 400, 'BAD_INPUT'],
      ['POST', '/v1/agents/bulk', { action: 'pin', agents: [agent.id], value: 'x' }, 400, 'BAD_INPUT'],
      [
        'POST',
        '/v1/agents/bulk',
        { action: 'pin', agents: ['f'.repeat(32)], value: '1.0.0' },
        400,
        'BAD_INPUT',
      ],
      ['POST', '/v1/agents/bulk', { action: 'group', agents: [], value: 'g' }, 400, 'BAD_INPUT'],
      [
        'POST',
        '/v1/agents/bulk',
        { action: 'group', agents: [agent.id, '__proto__'], value: 'g' },
        400,
        'BAD_INPUT',
      ],
      ['POST', '/v1/bundles', { site: 'plant-7', release: 'fleet@9' }, 404, 'UNKNOWN_RELEASE'],
      ['POST', '/v1/bundles', { site: 'atlantis', release: 'fleet@2.0.0' }, 404, 'UNKNOWN_SITE'],
      [
        'POST',
        '/v1/bundles',
        { site: 'plant-7', release: 'fleet@2.0.0', strategy: 'yolo' },
        400,
        'BAD_INPUT',
      ],
      ['POST', '/v1/bundles', { site: 'plant-7', release: 'fleet@2.0.0', signed: 'yes' }, 400, 'BAD_INPUT'],
      ['GET', '/v1/fleet?limit=100000', undefined, 400, 'BAD_INPUT'],
      ['GET', '/v1/audit?offset=-1', undefined, 400, 'BAD_INPUT'],
    ];
    for (const [method, path, body, status, code] of cases) {
      const r = await api(s.url, method, path, token, body);
      expect({ path, body, status: r.status, code: r.json.code }).toEqual({ path, body, status, code });
      expect(typeof r.json.message).toBe('string');
    }
    for (const [query, bytes, type, status, code] of [
      [
        'kind=agent&name=ferry-agent&version=2.0.0&platform=linux-x64',
        Buffer.alloc(10, 2),
        'application/octet-stream',
        400,
        'BAD_INPUT',
      ],
      ['kind=rootkit&name=x&version=1', 'x', 'application/octet-stream', 400, 'BAD_INPUT'],
      ['kind=agent&name=x&version=latest', 'x', 'application/octet-stream', 400, 'BAD_INPUT'],
      [
        'kind=script&name=x&version=1&interpreter=/bin/sh%20-c',
        'x',
        'application/octet-stream',
        400,
        'BAD_INPUT',
      ],
      ['kind=script&name=x&version=1', 'x', 'text/plain', 415, 'UNSUPPORTED_MEDIA_TYPE'],
    ] as const) {
      const r = await upload(query, bytes, type);
      expect({ query, status: r.status, code: r.json.code }).toEqual({ query, status, code });
    }
    expect(await durable()).toEqual(before);
  });

  it('rolls a site back to an older release in a bundle its agents accept (API and CLI); bad input changes nothing', async () => {
    const up = await upload(
      'kind=agent&name=ferry-agent&version=1.0.0&platform=linux-x64',
      Buffer.alloc(10_000, 5),
    );
    expect(up.status).toBe(201);
    const rel = await api(s.url, 'POST', '/v1/releases', token, {
      name: 'fleet',
      version: '1.0.0',
      artifacts: ['agent:ferry-agent@1.0.0/linux-x64'],
    });
    expect(rel.status).toBe(201);
    const viewer = await ferry([
      'server',
      'user',
      'add',
      '--data',
      data,
      '--name',
      'vic',
      '--role',
      'viewer',
    ]);
    expect(viewer.code).toBe(0);
    const viewerToken = (
      await ferry(['server', 'token', 'create', '--data', data, '--user', 'vic'])
    ).stdout.trim();
    const before = await durable();
    const path = '/v1/sites/plant-7/rollback';
    for (const [who, p, body, status, code] of [
      [token, path, { release: 'fleet@2.0.0' }, 400, 'BAD_INPUT'], // not older than the site's 2.0.0
      [token, path, { release: 'fleet@0.9' }, 404, 'UNKNOWN_RELEASE'],
      [token, path, {}, 400, 'BAD_INPUT'],
      [token, path, { release: 'fleet@1.0.0', signed: 'yes' }, 400, 'BAD_INPUT'],
      [token, path, { release: 'fleet@1.0.0', strategy: 'manual' }, 400, 'BAD_INPUT'],
      [token, '/v1/sites/ship-3/rollback', { release: 'fleet@1.0.0' }, 400, 'BAD_INPUT'], // no rollout yet
      [token, '/v1/sites/atlantis/rollback', { release: 'fleet@1.0.0' }, 404, 'UNKNOWN_SITE'],
      [viewerToken, path, { release: 'fleet@1.0.0' }, 403, 'FORBIDDEN'],
      [undefined, path, { release: 'fleet@1.0.0' }, 401, 'UNAUTHENTICATED'],
    ] as const) {
      const r = await api(s.url, 'POST', p, who, body);
      expect({ p, body, status: r.status, code: r.json.code }).toEqual({ p, body, status, code });
    }
    const cli = await ferry([
      'server',
      'rollback',
      '--data',
      data,
      '--site',
      'plant-7',
      '--to-release',
      'fleet@2.0.0',
    ]);
    expect(cli.code).toBe(1);
    expect(cli.stderr).toMatch(/BAD_INPUT/);
    expect((await ferry(['server', 'rollback', '--data', data, '--to-release', 'fleet@1.0.0'])).code).toBe(2);
    expect(await durable()).toEqual(before);

    const r = await api(s.url, 'POST', path, token, { release: 'fleet@1.0.0' });
    expect(r.status, JSON.stringify(r.json)).toBe(201);
    expect(r.json.rollback).toEqual({ from: '2.0.0', to: '1.0.0', pins: { 'group:canary': '1.0.0' } });
    const bundle = r.json.bundle as { file: string; sequence: number; strategy: string; status: string };
    expect(bundle).toMatchObject({ sequence: 2, strategy: 'immediate', status: 'signed' });
    // the manifest an agent will verify: its own group pinned to the older build
    const bytes = await readFile(bundle.file);
    const size = parseInt(
      bytes
        .subarray(124, 136)
        .toString('latin1')
        .replace(/[\0 ]+$/, ''),
      8,
    );
    const env = JSON.parse(bytes.subarray(512, 512 + size).toString('utf8')) as { payload: string };
    const manifest = JSON.parse(decodeBase64Strict(env.payload, 'payload').toString('utf8')) as Manifest;
    expect(manifest.rollout).toMatchObject({ agent: '1.0.0', strategy: 'immediate' });
    expect(manifest.pins).toEqual({ 'group:scada': '1.0.0', 'group:canary': '1.0.0' });
    // what the agent decides, having committed 2.0.0: it goes back, because a signed pin names 1.0.0 …
    const input = {
      manifest,
      payloadDigest: 'x',
      platform: 'linux-x64',
      agentId: agent.id,
      groups: ['canary'],
      running: '2.0.0',
      highestCommitted: '2.0.0',
      badVersions: [],
    };
    expect(targetVersion(input)).toMatchObject({
      kind: 'update',
      version: '1.0.0',
      authorisedDowngrade: true,
    });
    // … and the same bundle without the pins would be refused as a downgrade
    const unpinned: Manifest = { ...manifest };
    delete unpinned.pins;
    expect(targetVersion({ ...input, manifest: unpinned })).toMatchObject({
      kind: 'refuse',
      code: 'DOWNGRADE_REFUSED',
    });

    // from the CLI, further back: the pins already at 1.0.0 are lowered with it
    expect(
      (await upload('kind=agent&name=ferry-agent&version=0.9.0&platform=linux-x64', Buffer.alloc(9_000, 6)))
        .status,
    ).toBe(201);
    expect(
      (
        await api(s.url, 'POST', '/v1/releases', token, {
          name: 'fleet',
          version: '0.9.0',
          artifacts: ['agent:ferry-agent@0.9.0/linux-x64'],
        })
      ).status,
    ).toBe(201);
    const args = ['server', 'rollback', '--data', data, '--site', 'plant-7', '--to-release', 'fleet@0.9.0'];
    const cli2 = await ferry([...args, '--unsigned', '--json']);
    expect(cli2.code, cli2.stderr).toBe(0);
    expect(JSON.parse(cli2.stdout)).toMatchObject({
      ok: true,
      bundle: { sequence: 3, status: 'unsigned', strategy: 'immediate' },
      rollback: { from: '1.0.0', to: '0.9.0', pins: { 'group:scada': '0.9.0', 'group:canary': '0.9.0' } },
    });
    // the site now targets 0.9.0: going there again is not a rollback
    const again = await ferry([...args, '--json']);
    expect(again.code).toBe(1);
    expect(JSON.parse(again.stdout)).toMatchObject({ ok: false, code: 'BAD_INPUT' });
    const audit = await api(s.url, 'GET', '/v1/audit?limit=5', token);
    expect(JSON.stringify(audit.json)).toContain('"action":"rollback"');
  });

  it('refuses a policy the agents would refuse, on upload and in a release, changing nothing', async () => {
    const ok = JSON.stringify({
      type: 'ferry.policy/v1',
      scripts: [{ script: 'harden-ssh', groups: ['web'], schedule: 'once' }],
    });
    expect((await upload('kind=policy&name=baseline&version=7', ok)).status).toBe(201);
    const before = await durable();
    for (const body of [
      '{"type":"ferry.policy/v1","files":[],"files":[]}',
      'not json',
      JSON.stringify({ type: 'ferry.policy/v2' }),
      JSON.stringify({
        type: 'ferry.policy/v1',
        scripts: [{ script: 'x', groups: ['*'], schedule: 'hourly' }],
      }),
      JSON.stringify({ type: 'ferry.policy/v1', agent: { pollIntervalSec: -1 } }),
    ]) {
      const r = await upload('kind=policy&name=baseline&version=8', body);
      expect({ body, status: r.status, code: r.json.code }).toEqual({
        body,
        status: 400,
        code: 'POLICY_INVALID',
      });
    }
    // valid alone, but it names a script the release does not carry
    const rel = await api(s.url, 'POST', '/v1/releases', token, {
      name: 'policies',
      version: '1',
      artifacts: ['policy:baseline@7'],
    });
    expect(rel.status).toBe(400);
    expect(rel.json.code).toBe('POLICY_INVALID');
    expect(rel.json.message).toMatch(/harden-ssh/);
    expect(await durable()).toEqual(before);
  });
});
