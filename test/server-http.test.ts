/**
 * `ferry server start` as a real process: POST /v1/telemetry answers 202 with
 * per-batch results once durable, 400 for bodies of the wrong shape; the read
 * routes show the fleet; a second owner of the data directory is refused; a
 * restart (SIGTERM, exit 0) keeps everything.
 */
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ferry, snapshotDir, tempDir } from './helpers/fixtures.js';
import { followLogs, killStrays, spawnFerry, type LoggedProc } from './helpers/mirror-proc.js';
import {
  batch,
  enrolment,
  heartbeat,
  makeAgent,
  makeMirror,
  writeExport,
  type TestMirror,
} from './helpers/server-fixtures.js';

let dir: string;
let cleanup: () => Promise<void>;
let m1: TestMirror;
let stranger: TestMirror;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('ferry-server-http-'));
  m1 = await makeMirror(dir, 'm1', 'plant-7');
  stranger = await makeMirror(dir, 'stranger', 'plant-7');
});
afterEach(() => killStrays());
afterAll(() => cleanup());

async function start(data: string): Promise<LoggedProc & { url: string }> {
  const p = followLogs(spawnFerry(['server', 'start', '--data', data, '--listen', '127.0.0.1:0']), 'server');
  const started = await p.waitForLog((l) => l.event === 'server.started');
  expect(started).toMatchObject({ crypto: 'sodium-native' });
  const url = String(started.url);
  // reads need a viewer: a bearer token for the admin the first start created
  const t = await ferry(['server', 'token', 'create', '--data', data, '--user', 'admin']);
  expect(t.code, t.stderr).toBe(0);
  tokens.set(url, t.stdout.trim());
  return { ...p, url };
}

const tokens = new Map<string, string>();
const auth = (url: string) => ({ headers: { authorization: `Bearer ${tokens.get(url)}` } });

async function post(url: string, body: unknown, type = 'application/json') {
  const res = await fetch(`${url}/v1/telemetry`, {
    method: 'POST',
    headers: { 'content-type': type },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

const get = async (url: string, path: string) =>
  (await fetch(url + path, { headers: { authorization: `Bearer ${tokens.get(url)}` } }).then((r) =>
    r.json(),
  )) as Record<string, unknown>;

describe('ferry server start', () => {
  it('takes batches (202 per-batch results), refuses bad bodies (400), keeps everything over a restart', async () => {
    const data = join(dir, 'data');
    expect(
      (await ferry(['server', 'register-mirror', '--data', data, '--site', 'plant-7', '--pub', m1.pubPath]))
        .code,
    ).toBe(0);
    let s = await start(data);
    const a = makeAgent();
    const good = batch(m1, 1, 3, [enrolment(a, 1), heartbeat(a, 2, 1), heartbeat(a, 3, 2)]);
    const hb = heartbeat(a, 4, 2); // counter 2 again: a replay
    const r = await post(s.url, {
      batches: [good, batch(stranger, 1, 1, [enrolment(a, 1)]), good, batch(m1, 4, 4, [hb])],
    });
    expect(r.status).toBe(202);
    expect(r.json.results).toEqual([
      { index: 0, status: 'stored', stored: 2, enrolments: 1, duplicates: 0, parked: 0, rejected: [] },
      expect.objectContaining({ index: 1, status: 'rejected', code: 'UNKNOWN_MIRROR' }),
      expect.objectContaining({ index: 2, status: 'duplicate', stored: 0, duplicates: 3 }),
      expect.objectContaining({
        index: 3,
        status: 'stored',
        stored: 0,
        rejected: [{ seq: 4, code: 'REPLAY' }],
      }),
    ]);

    for (const bad of [
      '{"batches":[',
      { envelopes: [] },
      { batches: [] },
      { batches: Array.from({ length: 65 }, () => good) },
      [good],
    ]) {
      const x = await post(s.url, bad);
      expect(x.status, JSON.stringify(bad).slice(0, 40)).toBe(400);
      expect(x.json).toMatchObject({ code: 'BAD_REQUEST' });
    }
    expect((await post(s.url, { batches: [good] }, 'text/plain')).status).toBe(415);

    // a second owner of the data directory is refused while this one runs
    const e = join(dir, 'export.jsonl');
    await writeExport(e, m1, { number: 1, prev: null, from: 5, to: 5, records: [heartbeat(a, 5, 3)] });
    const locked = await ferry(['server', 'import-telemetry', e, '--data', data]);
    expect(locked.code).toBe(1);
    expect(locked.stderr).toMatch(/STORE_LOCKED/);

    const agents = await get(s.url, '/v1/agents');
    expect(agents.agents).toEqual([
      expect.objectContaining({ id: a.id, site: 'plant-7', heartbeats: 2, version: '1.0.0' }),
    ]);
    expect(await get(s.url, `/v1/agents/${a.id}`)).toMatchObject({ agent: { id: a.id, lastCounter: 2 } });
    expect((await fetch(`${s.url}/v1/agents/nope`, auth(s.url))).status).toBe(404);
    const { unauthenticated, ...rej } = await get(s.url, '/v1/rejections?limit=5');
    // the unregistered sender's batch is counted, not journaled
    expect(rej).toMatchObject({ total: 1, byCode: { REPLAY: 1 } });
    expect(unauthenticated).toEqual({ UNKNOWN_MIRROR: 1 });
    expect(await get(s.url, '/v1/mirrors')).toMatchObject({
      mirrors: [{ id: m1.id, coverage: ['1–4'], gaps: [] }],
    });
    const metrics = await fetch(`${s.url}/metrics`).then((x) => x.text());
    expect(metrics).toMatch(/ferry_server_heartbeats_stored 2/);
    expect(metrics).toMatch(/ferry_server_rejections\{code="REPLAY"\} 1/);
    expect(metrics).toMatch(/ferry_server_unauthenticated_rejections\{code="UNKNOWN_MIRROR"\} 1/);
    expect(await get(s.url, '/healthz')).toMatchObject({ ok: true });

    expect(await s.stop('SIGTERM')).toEqual({ code: 0, signal: null });
    s = await start(data);
    expect((await get(s.url, '/v1/agents')).agents).toEqual(agents.agents);
    expect(await get(s.url, '/v1/rejections?limit=5')).toEqual({ ...rej, unauthenticated: {} }); // counts restart
    expect(await s.stop('SIGINT')).toEqual({ code: 0, signal: null });
    const offline = await ferry(['server', 'agents', '--data', data, '--json']);
    expect(JSON.parse(offline.stdout)).toMatchObject({ agents: [{ id: a.id, heartbeats: 2 }] });
  });
});

describe('ferry server start under a flood from anyone', () => {
  it('counts garbage and unregistered batches without storing them: the data dir stays byte-identical', async () => {
    const data = join(dir, 'flood');
    expect(
      (await ferry(['server', 'register-mirror', '--data', data, '--site', 'plant-7', '--pub', m1.pubPath]))
        .code,
    ).toBe(0);
    const s = await start(data);
    const a = makeAgent();
    // one genuine delivery first, so the journal and checkpoint exist
    expect(
      (await post(s.url, { batches: [batch(m1, 1, 2, [enrolment(a, 1), heartbeat(a, 2, 1)])] })).status,
    ).toBe(202);
    await new Promise((r) => setTimeout(r, 1500)); // its checkpoint is written
    const files = async () =>
      Object.fromEntries(Object.entries(await snapshotDir(data)).filter(([k]) => k !== 'lock'));
    const before = await files();
    const junk = {
      envelope: { payloadType: 'x', payload: 'AAAA', signatures: [{ sig: 'AAAA' }] },
      via: [m1.id],
    };
    const pad = 'A'.repeat(8000);
    for (let i = 0; i < 100; i++) {
      const batches =
        i % 3 === 0
          ? [batch(stranger, 1, 1, [enrolment(a, 1)])] // an unregistered mirror
          : i % 3 === 1
            ? [batch(m1, 10 + i, 10 + i, [enrolment(a, 10 + i)], stranger.key)] // a registered one's name, forged
            : [{ ...junk, envelope: { ...junk.envelope, payload: pad } }]; // garbage
      const r = await post(s.url, { batches });
      expect(r.status).toBe(202);
      expect((r.json.results as { status: string }[])[0]!.status).toBe('rejected');
    }
    await new Promise((r) => setTimeout(r, 1500)); // a checkpoint would have been written by now
    expect(await files()).toEqual(before);
    const rej = await get(s.url, '/v1/rejections');
    expect(rej).toMatchObject({ total: 0, unauthenticated: { UNKNOWN_MIRROR: 34, BAD_SIGNATURE: 33 } });
    const metrics = await fetch(`${s.url}/metrics`).then((x) => x.text());
    expect(metrics).toMatch(/ferry_server_unauthenticated_rejections\{code="UNKNOWN_MIRROR"\} 34/);
    expect(await s.stop('SIGTERM')).toEqual({ code: 0, signal: null });
    expect(await files()).toEqual(before);
  });

  it('answers look-ups by names of object properties with 404, never 500', async () => {
    const data = join(dir, 'proto');
    const s = await start(data);
    for (const name of ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf']) {
      const r = await fetch(`${s.url}/v1/agents/${name}`, auth(s.url));
      expect({ name, status: r.status }).toEqual({ name, status: 404 });
      expect(await r.json()).toMatchObject({ code: 'UNKNOWN_AGENT' });
    }
    expect(await s.stop('SIGTERM')).toEqual({ code: 0, signal: null });
  });
});
