/**
 * Agent enrolment and signed heartbeats against a real mirror on a loopback
 * port: enrolment is idempotent, telemetry is in the log once 202 is answered,
 * and every refusal (tampered, forged, replayed, unknown, oversized) leaves
 * the log and the counters as they were.
 */
import { once } from 'node:events';
import { mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { enroll, enrollRequest, loadOrCreateIdentity, type AgentIdentity } from '../agent/identity.js';
import type { Envelope } from '../core/dsse.js';
import { signHeartbeat, type Heartbeat } from '../core/heartbeat.js';
import { createHandler } from '../mirror/http/app.js';
import { agentsFor } from '../mirror/agents.js';
import { MirrorOutbox } from '../mirror/outbox.js';
import { Store } from '../mirror/store.js';
import { makeWorld, snapshotDir, type World } from './helpers/fixtures.js';

let w: World;
let store: Store;
let base: string;
const servers: Server[] = [];

beforeAll(async () => {
  w = await makeWorld();
  const dir = await mkdtemp(join(w.dir, 'data-'));
  store = await Store.open(dir, { init: { rootBytes: await readFile(w.rootPath), site: 'plant-7' } });
  const server = createServer(createHandler({ store }));
  servers.push(server);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  for (const s of servers) await new Promise((r) => s.close(r));
  await w.cleanup();
});

const info = { hostname: 'node-1', platform: 'linux/amd64', groups: ['canary'] };

/** A one-use enrolment token of this mirror, admitting to `groups`. */
async function tokenFor(groups: string[] = ['canary']): Promise<string> {
  return (await agentsFor(store).tokens.create({ site: 'plant-7', ttlMs: 3600_000, groups })).token;
}

async function newAgent(): Promise<AgentIdentity> {
  return loadOrCreateIdentity(await mkdtemp(join(w.dir, 'agent-')));
}

function heartbeat(id: AgentIdentity, counter: number, extra: Partial<Heartbeat> = {}): Heartbeat {
  return {
    type: 'ferry.heartbeat/v1',
    agentId: id.agentId,
    counter,
    sentAt: new Date().toISOString(),
    version: '1.0.0',
    manifestSequence: 3,
    results: [{ name: 'ntp-check', ok: true }],
    drift: [],
    disconnectedSec: 0,
    resources: { rssBytes: 40_000_000, load1: 0.25 },
    ...extra,
  };
}

async function post(path: string, body: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(base + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

/** Every heartbeat record in the outbox, parsed. */
async function logged(): Promise<{ agentId: string; counter: number; envelope: Envelope }[]> {
  const dir = join(store.dir, 'telemetry', 'outbox');
  const out = [];
  for (const name of (await readdir(dir)).sort())
    for (const line of (await readFile(join(dir, name), 'utf8')).split('\n').filter(Boolean)) {
      const r = JSON.parse(line) as { kind: string; agentId: string; counter: number; envelope: Envelope };
      if (r.kind === 'heartbeat') out.push(r);
    }
  return out;
}

/** The highest counter the mirror holds for each agent, as its outbox reports them. */
const counters = async () => {
  const box = await agentsFor(store).outbox();
  return JSON.stringify((await logged()).map((r) => [r.agentId, box.lastCounter(r.agentId)]));
};

describe('POST /v1/enroll', () => {
  it('gives an id derived from the key, the same on re-enrolment, and records the groups of the token', async () => {
    const a = await newAgent();
    const token = await tokenFor(['canary', 'plant-7']);
    const id = await enroll(base, a, { ...info, groups: ['admin'], token }); // the agent's claim is not used
    expect(id).toBe(a.agentId);
    expect(id).toMatch(/^[0-9a-f]{32}$/);
    const tokenId = token.split(':')[2];
    const rec = JSON.parse(await readFile(join(store.dir, 'agents', `${id}.json`), 'utf8')) as Record<
      string,
      unknown
    >;
    expect(rec).toMatchObject({ id, keyid: a.keyid, groups: ['canary', 'plant-7'], tokenId });
    expect(rec.request).toBeUndefined(); // the signed request carries the token's secret: not kept
    const box = await agentsFor(store).outbox();
    const sent = (await box.read(1)).filter((r) => r.kind === 'enrolment' && r.agent.agentId === id);
    expect(sent).toHaveLength(1);
    expect(sent[0]).not.toHaveProperty('agent.request'); // nor sent home
    // enrolled: asking again needs no token (the token is spent) and changes nothing
    const snapshot = await snapshotDir(store.dir);
    expect(await enroll(base, a, { ...info, groups: ['other'] })).toBe(id);
    expect(await snapshotDir(store.dir)).toEqual(snapshot);
    // the identity survives a restart: same key, same id
    expect((await loadOrCreateIdentity(join(a.keyPath, '..', '..'))).agentId).toBe(id);
  });

  it('drops the token a record from before token checks kept as given', async () => {
    const a = await newAgent();
    const path = join(store.dir, 'agents', `${a.agentId}.json`);
    const legacy = {
      id: a.agentId,
      publicKey: Buffer.from(a.publicKey).toString('hex'),
      keyid: a.keyid,
      hostname: 'old',
      platform: 'linux/amd64',
      groups: [],
      enrolledAt: '2026-01-01T00:00:00.000Z',
      token: 't-legacy-secret',
    };
    await writeFile(path, JSON.stringify(legacy));
    expect(await agentsFor(store).get(a.agentId)).toMatchObject({ id: a.agentId, hostname: 'old' });
    const text = await readFile(path, 'utf8');
    expect(text).not.toContain('t-legacy-secret');
    expect(JSON.parse(text)).toMatchObject({ id: a.agentId, hostname: 'old', groups: [] });
  });

  it('refuses an enrolment not signed by the key it names, and records nothing', async () => {
    const a = await newAgent();
    const b = await newAgent();
    const env = enrollRequest(a, info);
    env.signatures = enrollRequest(b, info).signatures;
    const r = await post('/v1/enroll', env);
    expect(r).toMatchObject({ status: 400, json: { code: 'BAD_SIGNATURE' } });
    expect(await readdir(join(store.dir, 'agents'))).not.toContain(`${a.agentId}.json`);
  });

  it('refuses a stale enrolment and a body over 16 KiB', async () => {
    const a = await newAgent();
    const stale = enrollRequest(a, { ...info, now: () => Date.now() - 3600_000 });
    expect(await post('/v1/enroll', stale)).toMatchObject({ status: 400, json: { code: 'BAD_ENROLMENT' } });
    const big = await post('/v1/enroll', { pad: 'x'.repeat(17 * 1024) });
    expect(big).toMatchObject({ status: 413, json: { code: 'BODY_TOO_LARGE' } });
    expect(await readdir(join(store.dir, 'agents'))).not.toContain(`${a.agentId}.json`);
  });
});

describe('POST /v1/telemetry', () => {
  let a: AgentIdentity;
  beforeAll(async () => {
    a = await newAgent();
    await enroll(base, a, { ...info, token: await tokenFor() });
  });

  it('answers 202 only once the heartbeat is in the log', async () => {
    const env = signHeartbeat(heartbeat(a, 1), a.key);
    const r = await post('/v1/telemetry', env);
    expect(r).toEqual({ status: 202, json: { accepted: 1, rejected: [] } });
    const lines = (await logged()).filter((l) => l.agentId === a.agentId);
    expect(lines.map((l) => l.counter)).toEqual([1]);
    expect(lines[0]!.envelope).toEqual(env);
    // a batch: several heartbeats in one request
    const batch = [2, 3, 4].map((n) => signHeartbeat(heartbeat(a, n), a.key));
    expect(await post('/v1/telemetry', { envelopes: batch })).toMatchObject({
      status: 202,
      json: { accepted: 3 },
    });
    expect((await logged()).filter((l) => l.agentId === a.agentId).map((l) => l.counter)).toEqual([
      1, 2, 3, 4,
    ]);
  });

  it('answers 507 STORAGE_FULL when the disk is full, and stores nothing', async () => {
    await (await agentsFor(store).outbox()).checkpoint(); // nothing left for its timer to write
    const before = await snapshotDir(store.dir);
    const full = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    const spy = vi.spyOn(MirrorOutbox.prototype, 'appendHeartbeats').mockRejectedValueOnce(full);
    try {
      const r = await post('/v1/telemetry', signHeartbeat(heartbeat(a, 5), a.key));
      expect(r).toEqual({ status: 507, json: { code: 'STORAGE_FULL', message: 'mirror storage is full' } });
    } finally {
      spy.mockRestore();
    }
    expect(await snapshotDir(store.dir)).toEqual(before); // nothing changed on disk
    // the agent keeps it and sends it again: taken once there is room
    expect(await post('/v1/telemetry', signHeartbeat(heartbeat(a, 5), a.key))).toMatchObject({
      status: 202,
    });
  });

  it('groups concurrent requests and still refuses a counter seen in the same batch', async () => {
    const [x, y] = await Promise.all([
      post('/v1/telemetry', signHeartbeat(heartbeat(a, 10), a.key)),
      post('/v1/telemetry', signHeartbeat(heartbeat(a, 10), a.key)),
    ]);
    expect([x.status, y.status].sort()).toEqual([202, 400]);
    expect((await logged()).filter((l) => l.counter === 10)).toHaveLength(1);
  });

  it('refuses a tampered heartbeat (one payload byte changed) and stores nothing', async () => {
    const env = signHeartbeat(heartbeat(a, 5), a.key);
    const body = Buffer.from(env.payload, 'base64');
    const at = body.indexOf('"version":"1.0.0"') + '"version":"1.0.'.length;
    body[at] = '9'.charCodeAt(0);
    const before = [await logged(), await counters()];
    const r = await post('/v1/telemetry', { ...env, payload: body.toString('base64') });
    expect(r).toMatchObject({
      status: 400,
      json: { code: 'BAD_SIGNATURE', rejected: [{ index: 0, code: 'BAD_SIGNATURE' }] },
    });
    expect([await logged(), await counters()]).toEqual(before);
  });

  it('refuses an envelope carrying `payload` twice (a decoy first), whole, and stores nothing', async () => {
    const env = signHeartbeat(heartbeat(a, 25), a.key);
    const decoy = Buffer.from(JSON.stringify(heartbeat(a, 26, { version: '6.6.6' }))).toString('base64');
    // JSON.parse keeps the last of two equal keys and other parsers the first: the body is ambiguous
    const raw =
      `{"payloadType":${JSON.stringify(env.payloadType)},"payload":${JSON.stringify(decoy)},` +
      `"payload":${JSON.stringify(env.payload)},"signatures":${JSON.stringify(env.signatures)}}`;
    const before = await snapshotDir(store.dir);
    const r = await post('/v1/telemetry', raw);
    expect(r).toMatchObject({ status: 400, json: { code: 'BAD_REQUEST' } });
    expect(String(r.json.message)).toMatch(/duplicate key "payload"/);
    expect(await snapshotDir(store.dir)).toEqual(before);
    // the same heartbeat, sent unambiguously, is taken
    expect(await post('/v1/telemetry', env)).toMatchObject({ status: 202 });
  });

  it("refuses a heartbeat for this agent's id signed by another agent's key", async () => {
    const b = await newAgent();
    await enroll(base, b, { ...info, token: await tokenFor() });
    const before = [await logged(), await counters()];
    const r = await post('/v1/telemetry', signHeartbeat(heartbeat(a, 21), b.key));
    expect(r).toMatchObject({ status: 400, json: { code: 'BAD_SIGNATURE' } });
    expect([await logged(), await counters()]).toEqual(before);
  });

  it('refuses a replayed or lower counter', async () => {
    const before = [await logged(), await counters()];
    expect(await post('/v1/telemetry', signHeartbeat(heartbeat(a, 4), a.key))).toMatchObject({
      status: 400,
      json: { code: 'REPLAY' },
    });
    expect(await post('/v1/telemetry', signHeartbeat(heartbeat(a, 2), a.key))).toMatchObject({
      status: 400,
      json: { code: 'REPLAY' },
    });
    expect([await logged(), await counters()]).toEqual(before);
  });

  it('refuses an unknown agent, and reports per-item refusals next to accepted ones', async () => {
    const stranger = await newAgent();
    const r = await post('/v1/telemetry', {
      envelopes: [
        signHeartbeat(heartbeat(stranger, 1), stranger.key),
        signHeartbeat(heartbeat(a, 30), a.key),
        { payloadType: 'x' },
        signHeartbeat(heartbeat(a, 30), a.key),
      ],
    });
    expect(r).toEqual({
      status: 202,
      json: {
        accepted: 1,
        rejected: [
          { index: 0, code: 'UNKNOWN_AGENT' },
          { index: 2, code: 'BAD_ENVELOPE' },
          { index: 3, code: 'REPLAY' },
        ],
      },
    });
    expect((await logged()).filter((l) => l.agentId === stranger.agentId)).toHaveLength(0);
  });

  it('refuses a body over 1 MiB with 413 and stores nothing', async () => {
    const before = [await logged(), await counters()];
    // chunked (no Content-Length), so the route's own cap is what stops it
    const huge = 'x'.repeat(1024 * 1024 + 1);
    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(new TextEncoder().encode(`{"pad":"${huge}"}`));
        c.close();
      },
    });
    const res = await fetch(base + '/v1/telemetry', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: stream,
      duplex: 'half',
    });
    expect(res.status).toBe(413);
    expect(((await res.json()) as { code: string }).code).toBe('BODY_TOO_LARGE');
    const declared = await post('/v1/telemetry', { pad: huge });
    expect(declared).toMatchObject({ status: 413, json: { code: 'BODY_TOO_LARGE' } });
    expect([await logged(), await counters()]).toEqual(before);
  });
});
