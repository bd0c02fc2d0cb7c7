/**
 * The mirror's half of the telemetry path home, in process against real
 * files and real loopback HTTP: the outbox (durable, replay-checked, survives
 * reopen, trimmed only by an ack), relaying other mirrors' batches (LOOP,
 * NO_ROUTE), the forwarder (batches signed by the mirror, trimmed on 202,
 * retried with back-off, peer fallback), and the courier's export and ack.
 */
import { once } from 'node:events';
import { mkdtemp, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOrCreateIdentity, type AgentIdentity } from '../agent/identity.js';
import { signEnvelope } from '../core/dsse.js';
import { signHeartbeat } from '../core/heartbeat.js';
import { createLogger } from '../platform/log.js';
import {
  ACK_TYPE,
  BATCH_PAYLOAD_TYPE,
  BATCH_TYPE,
  signBatch,
  readExportHeader,
  sha256Hex,
  signAck,
  verifyBatch,
  verifyExportHeader,
  type CarriedBatch,
} from '../core/telemetry.js';
import { agentsFor, AgentsStore } from '../mirror/agents.js';
import { applyAck, exportTelemetry, importAck, serverKeyFor } from '../mirror/courier.js';
import { Forwarder } from '../mirror/forward.js';
import { createHandler } from '../mirror/http/app.js';
import { mirrorIdentity } from '../mirror/identity.js';
import { MirrorOutbox } from '../mirror/outbox.js';
import { Store } from '../mirror/store.js';
import { makeKey, makeWorld, snapshotDir, type World } from './helpers/fixtures.js';
import { testHeartbeat } from './helpers/heartbeats.js';

let w: World;
const servers: Server[] = [];
const quiet = createLogger({ component: 'test', write: () => undefined });

beforeAll(async () => {
  w = await makeWorld();
});
afterAll(async () => {
  for (const s of servers) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
  await w.cleanup();
});

async function listen(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<string> {
  const s = createServer(handler);
  servers.push(s);
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  return `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
}

async function newStore(): Promise<Store> {
  const dir = await mkdtemp(join(w.dir, 'data-'));
  return Store.open(dir, { init: { rootBytes: await readFile(w.rootPath), site: 'plant-7' } });
}

async function newAgent(): Promise<AgentIdentity> {
  return loadOrCreateIdentity(await mkdtemp(join(w.dir, 'agent-')));
}

const heartbeat = (id: AgentIdentity, counter: number) => testHeartbeat(id.agentId, counter);

async function enrolled(agents: AgentsStore, a: AgentIdentity): Promise<void> {
  await agents.enroll({
    type: 'ferry.enroll/v1',
    publicKey: Buffer.from(a.publicKey).toString('hex'),
    hostname: 'node-1',
    platform: 'linux/amd64',
    groups: ['canary'],
    at: new Date().toISOString(),
  });
}

const accept = (agents: AgentsStore, a: AgentIdentity, counters: number[]) =>
  agents.commit(
    counters.map((c) => ({ heartbeat: heartbeat(a, c), envelope: signHeartbeat(heartbeat(a, c), a.key) })),
  );

/** A stand-in upstream that records what it is sent and answers as told. */
async function fakeUpstream(answer: () => number = () => 202) {
  const got: { headers: IncomingMessage['headers']; body: { batches: CarriedBatch[] } }[] = [];
  const url = await listen((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const status = answer();
      if (status === 202)
        got.push({
          headers: req.headers,
          body: JSON.parse(Buffer.concat(chunks).toString()) as { batches: CarriedBatch[] },
        });
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(status === 202 ? { results: [] } : { code: 'DOWN', message: 'down' }));
    });
  });
  return { url, got };
}

const until = async (ok: () => boolean | Promise<boolean>, ms = 10_000) => {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
};

describe('outbox', () => {
  it('keeps counters across reopen from checkpoint plus journal, refuses replays, and trims only what was acked', async () => {
    const store = await newStore();
    let agents = new AgentsStore(store.dir, store.now);
    const a = await newAgent();
    await enrolled(agents, a);
    expect(await accept(agents, a, [1, 2, 2, 0, 3])).toEqual([
      'accepted',
      'accepted',
      'REPLAY',
      'REPLAY',
      'accepted',
    ]);
    const box = await agents.outbox();
    expect(box.head).toBe(4); // enrolment + 3 heartbeats
    await agents.close(); // checkpoint
    agents = new AgentsStore(store.dir, store.now);
    expect(await agents.lastCounter(a.agentId)).toBe(3);
    expect(await accept(agents, a, [4])).toEqual(['accepted']);
    // a crash: no checkpoint after this append; reopen replays the journal
    const again = new AgentsStore(store.dir, store.now);
    expect(await again.lastCounter(a.agentId)).toBe(4);
    expect(await accept(again, a, [4])).toEqual(['REPLAY']);
    const box2 = await again.outbox();
    expect(box2.depth).toBe(5);
    await box2.ack(3);
    expect(box2.depth).toBe(2);
    expect((await box2.read(1)).map((e) => e.seq)).toEqual([1, 2, 3, 4, 5]); // one segment: kept until all of it is acked
    await box2.ack(5);
    expect(await box2.read(1)).toEqual([]);
    expect(await readdir(join(store.dir, 'telemetry', 'outbox'))).toEqual(['0000000000000006.jsonl']);
    await again.close();
    await agents.close();
  });

  it('knows its bytes on disk and since when its oldest record waits, across acks and reopen', async () => {
    const store = await newStore();
    let t = Date.parse('2026-03-01T00:00:00Z');
    const clock = { now: () => t };
    let box = await MirrorOutbox.open(store.dir, clock);
    expect(box.figures()).toEqual({ depth: 0, acked: 0, head: 0, bytes: 0 });
    const a = await newAgent();
    const beat = (c: number) => ({
      heartbeat: heartbeat(a, c),
      envelope: signHeartbeat(heartbeat(a, c), a.key),
    });
    await box.appendHeartbeats([beat(1)]); // seq 1 at t0
    t += 3_600_000;
    await box.appendHeartbeats([beat(2), beat(3)]); // seqs 2, 3 an hour later
    t += 86_400_000;
    await box.appendHeartbeats([beat(4)]); // seq 4 a day later
    const onDisk = async () => {
      const dir = join(store.dir, 'telemetry', 'outbox');
      let n = 0;
      for (const f of await readdir(dir)) n += (await stat(join(dir, f))).size;
      return n;
    };
    expect(box.figures()).toEqual({
      depth: 4,
      acked: 0,
      head: 4,
      bytes: await onDisk(),
      oldestAt: '2026-03-01T00:00:00.000Z',
    });
    await box.ack(1);
    expect(box.figures().oldestAt).toBe('2026-03-01T01:00:00.000Z');
    await box.close();
    box = await MirrorOutbox.open(store.dir, clock); // looked up again from the journal
    expect(box.figures()).toMatchObject({ depth: 3, oldestAt: '2026-03-01T01:00:00.000Z' });
    await box.ack(3);
    expect(box.oldestWaitingAt).toBe(Date.parse('2026-03-02T01:00:00Z'));
    await box.ack(4);
    expect(box.figures()).toEqual({ depth: 0, acked: 4, head: 4, bytes: 0 });
    await box.close();
  });

  it("moves a data dir's old day logs and counters into the outbox, enrolments first", async () => {
    const store = await newStore();
    const a = await newAgent();
    let agents = new AgentsStore(store.dir, store.now);
    await enrolled(agents, a);
    await agents.close();
    // make it look like the layout before the outbox
    await import('node:fs/promises').then((fs) => fs.rm(join(store.dir, 'telemetry'), { recursive: true }));
    const { mkdir } = await import('node:fs/promises');
    await mkdir(join(store.dir, 'telemetry'));
    const lines = [5, 6].map(
      (c) =>
        JSON.stringify({
          receivedAt: new Date().toISOString(),
          agentId: a.agentId,
          counter: c,
          envelope: signHeartbeat(heartbeat(a, c), a.key),
        }) + '\n',
    );
    await writeFile(join(store.dir, 'telemetry', '2026-11-01.jsonl'), lines.join('') + '{"torn');
    await writeFile(join(store.dir, 'agents', 'counters.json'), JSON.stringify({ [a.agentId]: 6 }));
    agents = new AgentsStore(store.dir, store.now);
    expect(await agents.lastCounter(a.agentId)).toBe(6);
    const kinds = (await (await agents.outbox()).read(1)).map((e) => e.kind);
    expect(kinds).toEqual(['enrolment', 'heartbeat', 'heartbeat']);
    expect((await readdir(join(store.dir, 'telemetry'))).sort()).toEqual(['outbox', 'outbox.json']);
    await agents.close();
  });
});

describe('relaying batches over HTTP', () => {
  const batchFrom = (mirror: string, signer: Parameters<typeof signBatch>[1], from = 1, to = from) => ({
    envelope: signBatch(
      {
        type: BATCH_TYPE,
        mirror,
        site: 'plant-7',
        createdAt: new Date().toISOString(),
        from,
        to,
        records: [],
      },
      signer,
    ),
    via: [mirror],
  });
  const poster = (url: string) => async (body: unknown, relay: string) => {
    const r = await fetch(url + '/v1/telemetry', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'ferry-relay': relay },
      body: JSON.stringify(body),
    });
    return { status: r.status, json: (await r.json()) as Record<string, unknown> };
  };

  it('takes batches from a pinned mirror, refuses loops, and a peer while it has no route', async () => {
    const store = await newStore();
    const me = await mirrorIdentity(store.dir);
    const other = await mirrorIdentity(await mkdtemp(join(w.dir, 'mirror-o-')));
    let route = false;
    const agents = agentsFor(store);
    const trusted = new Map([[other.id, other.key.publicKey]]);
    const url = await listen(
      createHandler({ store, agents, relay: { selfId: me.id, hasRoute: () => route, trusted } }),
    );
    const post = poster(url);
    const b1 = batchFrom(other.id, other.key, 1);
    const box = await agents.outbox();
    const before = box.head;
    expect(await post({ batches: [b1] }, 'upstream')).toMatchObject({
      status: 202,
      json: { stored: 1, duplicates: 0 },
    });
    expect(box.head).toBe(before + 1);
    expect(
      await post({ batches: [{ ...batchFrom(other.id, other.key, 2), via: [other.id, me.id] }] }, 'upstream'),
    ).toMatchObject({
      status: 409,
      json: { code: 'LOOP' },
    });
    expect(await post({ batches: [batchFrom(other.id, other.key, 2)] }, 'peer')).toMatchObject({
      status: 503,
      json: { code: 'NO_ROUTE' },
    });
    route = true;
    expect((await post({ batches: [batchFrom(other.id, other.key, 2)] }, 'peer')).status).toBe(202);
    expect(
      await post(
        { batches: [{ envelope: { ...b1.envelope, payloadType: 'x' }, via: [other.id] }] },
        'upstream',
      ),
    ).toMatchObject({
      status: 400,
      json: { code: 'BAD_BATCH' },
    });
    expect((await post({ envelopes: [] }, 'upstream')).status).toBe(400);
    expect(box.head).toBe(before + 2); // refusals stored nothing
    const rec = (await box.read(before + 1)).at(0)!;
    expect(rec).toMatchObject({ kind: 'batch', via: [other.id] });
  });

  it('with no pinned relay keys relays nothing: RELAY_UNTRUSTED, and the data dir is unchanged', async () => {
    const store = await newStore();
    const me = await mirrorIdentity(store.dir);
    const other = await mirrorIdentity(await mkdtemp(join(w.dir, 'mirror-o-')));
    const agents = agentsFor(store);
    const url = await listen(
      createHandler({ store, agents, relay: { selfId: me.id, hasRoute: () => true, trusted: new Map() } }),
    );
    await agents.outbox();
    const snapshot = await snapshotDir(store.dir);
    const post = poster(url);
    for (const relay of ['upstream', 'peer'])
      for (let i = 1; i <= 5; i++)
        expect(await post({ batches: [batchFrom(other.id, other.key, i)] }, relay)).toMatchObject({
          status: 403,
          json: { code: 'RELAY_UNTRUSTED', message: expect.stringContaining('--relay-key') as unknown },
        });
    expect(await snapshotDir(store.dir)).toEqual(snapshot);
  });

  it('recognises a replayed genuine batch: acknowledged, stored once, also after a restart', async () => {
    const store = await newStore();
    const me = await mirrorIdentity(store.dir);
    const other = await mirrorIdentity(await mkdtemp(join(w.dir, 'mirror-o-')));
    const trusted = new Map([[other.id, other.key.publicKey]]);
    const agents = agentsFor(store);
    const url = await listen(
      createHandler({ store, agents, relay: { selfId: me.id, hasRoute: () => true, trusted } }),
    );
    const post = poster(url);
    const genuine = batchFrom(other.id, other.key, 1, 3);
    expect(await post({ batches: [genuine] }, 'upstream')).toMatchObject({
      status: 202,
      json: { stored: 1, duplicates: 0 },
    });
    const box = await agents.outbox();
    const head = box.head;
    const snapshot = await snapshotDir(store.dir);
    // the same batch again, alone, twice in one request, and as part of a range already held
    expect(await post({ batches: [genuine] }, 'upstream')).toMatchObject({
      status: 202,
      json: { stored: 0, duplicates: 1 },
    });
    expect(await post({ batches: [genuine, genuine] }, 'peer')).toMatchObject({
      status: 202,
      json: { stored: 0, duplicates: 2 },
    });
    expect((await post({ batches: [batchFrom(other.id, other.key, 2, 2)] }, 'upstream')).json).toMatchObject({
      stored: 0,
      duplicates: 1,
    });
    expect(box.head).toBe(head);
    expect(await snapshotDir(store.dir)).toEqual(snapshot);
    // a fresh process over the same data dir remembers
    const reopened = await Store.open(store.dir);
    const agents2 = new AgentsStore(reopened.dir, reopened.now);
    const url2 = await listen(
      createHandler({
        store: reopened,
        agents: agents2,
        relay: { selfId: me.id, hasRoute: () => true, trusted },
      }),
    );
    await agents.close();
    expect((await poster(url2)({ batches: [genuine] }, 'upstream')).json).toMatchObject({
      stored: 0,
      duplicates: 1,
    });
    // the next batch of that mirror is new
    expect(
      (await poster(url2)({ batches: [batchFrom(other.id, other.key, 4)] }, 'upstream')).json,
    ).toMatchObject({
      stored: 1,
      duplicates: 0,
    });
    await agents2.close();
  });
});

describe('relaying with pinned relay keys', () => {
  it('carries only batches signed by the pinned mirrors they name; refusals store nothing', async () => {
    const store = await newStore();
    const me = await mirrorIdentity(store.dir);
    const a = await mirrorIdentity(await mkdtemp(join(w.dir, 'mirror-a-')));
    const c = await mirrorIdentity(await mkdtemp(join(w.dir, 'mirror-c-')));
    const agents = agentsFor(store);
    const trusted = new Map([[a.id, a.key.publicKey]]);
    const url = await listen(
      createHandler({ store, agents, relay: { selfId: me.id, hasRoute: () => true, trusted } }),
    );
    const batchOf = (mirror: string, signer: typeof a.key) => ({
      envelope: signBatch(
        {
          type: BATCH_TYPE,
          mirror,
          site: 'plant-7',
          createdAt: new Date().toISOString(),
          from: 1,
          to: 1,
          records: [],
        },
        signer,
      ),
      via: [mirror],
    });
    const post = async (batches: unknown[]) => {
      const r = await fetch(url + '/v1/telemetry', {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'ferry-relay': 'peer' },
        body: JSON.stringify({ batches }),
      });
      return { status: r.status, json: (await r.json()) as Record<string, unknown> };
    };
    const box = await agents.outbox();
    const before = box.head;
    const snapshot = await snapshotDir(store.dir);
    const good = batchOf(a.id, a.key);
    // from a mirror that is not pinned
    expect(await post([batchOf(c.id, c.key)])).toMatchObject({
      status: 403,
      json: { code: 'RELAY_UNTRUSTED', message: expect.stringContaining(`mirror ${c.id}`) as unknown },
    });
    // naming the pinned mirror, signed by another key
    expect(await post([batchOf(a.id, c.key)])).toMatchObject({
      status: 403,
      json: { code: 'RELAY_UNTRUSTED', message: expect.stringContaining('does not verify') as unknown },
    });
    // one bad batch refuses the whole request
    expect((await post([good, batchOf(c.id, c.key)])).status).toBe(403);
    // a payload that does not name a mirror
    const junk = { envelope: signEnvelope(BATCH_PAYLOAD_TYPE, Buffer.from('[]'), [a.key]), via: [a.id] };
    expect(await post([junk])).toMatchObject({ status: 400, json: { code: 'BAD_BATCH' } });
    // a pinned mirror's batch that claims to have started elsewhere
    expect(await post([{ ...good, via: [c.id, a.id] }])).toMatchObject({
      status: 400,
      json: { code: 'BAD_BATCH', message: expect.stringContaining('via[0]') as unknown },
    });
    expect(await snapshotDir(store.dir)).toEqual(snapshot); // refusals change nothing on disk
    expect(await post([good])).toMatchObject({ status: 202, json: { stored: 1 } });
    expect(box.head).toBe(before + 1);
  });
});

describe('forwarder', () => {
  it('sends signed batches covering the outbox, trims on 202, backs off on failure and falls back to a peer', async () => {
    const store = await newStore();
    const agents = new AgentsStore(store.dir, store.now);
    const a = await newAgent();
    await enrolled(agents, a);
    await accept(agents, a, [1, 2, 3]);
    const outbox = await agents.outbox();
    const identity = await mirrorIdentity(store.dir);
    let upstreamUp = false;
    const up = await fakeUpstream(() => (upstreamUp ? 202 : 503));
    const peer = await fakeUpstream();
    const f = new Forwarder({
      outbox,
      identity,
      site: 'plant-7',
      upstream: up.url,
      peers: [peer.url],
      log: quiet,
      retryBaseMs: 50,
      retryMaxMs: 200,
      lingerMs: 10,
      maxRecords: 2,
    });
    f.start();
    // upstream down: the peer gets everything, in order, as relay requests
    await until(() => outbox.depth === 0);
    expect(up.got).toEqual([]);
    expect(peer.got.every((g) => g.headers['ferry-relay'] === 'peer')).toBe(true);
    const batches = peer.got.map((g) => verifyBatch(g.body.batches[0]!.envelope, identity.key.publicKey));
    expect(batches.map((b) => [b.from, b.to])).toEqual([
      [1, 2],
      [3, 4],
    ]);
    expect(batches.flatMap((b) => b.records.map((r) => r.kind))).toEqual([
      'enrolment',
      'heartbeat',
      'heartbeat',
      'heartbeat',
    ]);
    expect(f.hasRoute()).toBe(false);
    // upstream back: new records go there (once its back-off ends)
    upstreamUp = true;
    await new Promise((r) => setTimeout(r, 250)); // the upstream's back-off (at most 200 ms) runs out
    await accept(agents, a, [4]);
    await until(() => up.got.length === 1 && outbox.depth === 0);
    expect(up.got[0]!.headers['ferry-relay']).toBe('upstream');
    expect(verifyBatch(up.got[0]!.body.batches[0]!.envelope, identity.key.publicKey)).toMatchObject({
      from: 5,
      to: 5,
    });
    await until(() => f.hasRoute()); // state settles just after the ack
    await f.stop();
    await agents.close();
  });

  it('gives up on an upstream that trickles its answer at the request deadline and hands the records to a peer', async () => {
    const store = await newStore();
    const agents = new AgentsStore(store.dir, store.now);
    const a = await newAgent();
    await enrolled(agents, a);
    await accept(agents, a, [1, 2]);
    const outbox = await agents.outbox();
    const identity = await mirrorIdentity(store.dir);
    let trickled = 0;
    // reads the request, then answers 202 a byte at a time: never silent long enough for an idle timeout
    const slow = await listen((req, res) => {
      req.resume();
      req.on('end', () => {
        trickled++;
        res.writeHead(202, { 'content-type': 'application/json', 'content-length': 1000 });
        const t = setInterval(() => res.write(' '), 50);
        res.on('close', () => clearInterval(t));
      });
    });
    const peer = await fakeUpstream();
    const f = new Forwarder({
      outbox,
      identity,
      site: 'plant-7',
      upstream: slow,
      peers: [peer.url],
      log: quiet,
      retryBaseMs: 60_000, // once given up, the upstream waits: the peer must take the records
      lingerMs: 5,
      requestTimeoutMs: 5_000,
      requestDeadlineMs: 400,
    });
    const t0 = Date.now();
    f.start();
    await until(() => outbox.depth === 0);
    expect(Date.now() - t0).toBeLessThan(4_000);
    expect(trickled).toBe(1);
    expect(peer.got.length).toBeGreaterThanOrEqual(1);
    const up = f.status().targets.find((t) => t.kind === 'upstream')!;
    expect(up).toMatchObject({ ok: false, failures: 1 });
    expect(up.lastError).toMatch(/HTTP_DEADLINE|not done within 400 ms/);
    await f.stop();
    await agents.close();
  });

  it('passes relayed batches on as signed, adding itself to via', async () => {
    const store = await newStore();
    const agents = new AgentsStore(store.dir, store.now);
    const outbox = await agents.outbox();
    const other = await makeKey(w.dir, `o2-${Date.now()}`);
    const { mirrorIdOf } = await import('../core/telemetry.js');
    const env = signEnvelope(BATCH_PAYLOAD_TYPE, Buffer.from('{"x":1}'), [other]);
    await outbox.appendRelayed([{ envelope: env, via: [mirrorIdOf(other.publicKey)] }]);
    const identity = await mirrorIdentity(store.dir);
    const up = await fakeUpstream();
    const f = new Forwarder({ outbox, identity, site: 'plant-7', upstream: up.url, log: quiet, lingerMs: 5 });
    f.start();
    await until(() => outbox.depth === 0);
    await f.stop();
    const sent = up.got[0]!.body.batches;
    expect(sent).toHaveLength(2);
    expect(sent[1]).toEqual({ envelope: env, via: [mirrorIdOf(other.publicKey), identity.id] });
    // its own batch covers the relayed record's seq, with no records of its own
    expect(verifyBatch(sent[0]!.envelope, identity.key.publicKey)).toMatchObject({
      from: 1,
      to: 1,
      records: [],
    });
    await agents.close();
  });
});

describe('courier export and ack', () => {
  it('writes a signed, hash-chained export of what is unacknowledged; a matching server ack trims it', async () => {
    const store = await newStore();
    const agents = new AgentsStore(store.dir, store.now);
    const a = await newAgent();
    await enrolled(agents, a);
    await accept(agents, a, [1, 2]);
    const outbox = await agents.outbox();
    const identity = await mirrorIdentity(store.dir);
    const out1 = join(store.dir, '..', `export-${Date.now()}-1.ferrytelemetry`);
    const s1 = await exportTelemetry(outbox, identity, 'plant-7', out1);
    expect(s1).toMatchObject({
      number: 1,
      prev: null,
      from: 1,
      to: 3,
      records: 3,
      heartbeats: 2,
      enrolments: 1,
    });
    const text = await readFile(out1, 'utf8');
    const nl = text.indexOf('\n');
    const { envelope, header, hash } = readExportHeader(text.slice(0, nl));
    verifyExportHeader(envelope, header, identity.key.publicKey);
    expect(header.sha256).toBe(sha256Hex(Buffer.from(text.slice(nl + 1))));
    expect(
      text
        .slice(nl + 1)
        .split('\n')
        .filter(Boolean),
    ).toHaveLength(3);
    expect(hash).toBe(s1.hash);

    await accept(agents, a, [3]);
    const out2 = out1.replace('-1.', '-2.');
    const s2 = await exportTelemetry(outbox, identity, 'plant-7', out2);
    expect(s2).toMatchObject({ number: 2, prev: s1.hash, from: 1, to: 4, records: 4 }); // nothing acked yet

    // the server's ack, signed with its key, pinned at the mirror on first use
    const serverKey = await makeKey(w.dir, `server-${Date.now()}`);
    const pubPath = join(w.dir, `${serverKey.keyid.slice(0, 8)}.pub`);
    await writeFile(
      pubPath,
      JSON.stringify({
        type: 'ferry.pub/v1',
        keytype: 'ed25519',
        keyid: serverKey.keyid,
        public: Buffer.from(serverKey.publicKey).toString('hex'),
      }),
    );
    const ack = (number: number, hash: string, upTo: number, k = serverKey, mirror = identity.id) =>
      signAck({ type: ACK_TYPE, mirror, number, hash, upTo, createdAt: new Date().toISOString() }, k);
    const intruderName = `intruder-${Date.now()}`;
    const intruder = await makeKey(w.dir, intruderName);
    // first use: a refused ack pins nothing — the data dir is as it was
    const before = await snapshotDir(store.dir);
    await expect(
      applyAck(outbox, identity, store.dir, ack(1, s1.hash, 3, intruder), pubPath),
    ).rejects.toMatchObject({ code: 'BAD_SIGNATURE' });
    await expect(applyAck(outbox, identity, store.dir, ack(1, s1.hash, 3))).rejects.toMatchObject({
      code: 'SERVER_KEY_MISSING',
    });
    expect(await snapshotDir(store.dir)).toEqual(before);
    const { key } = await serverKeyFor(store.dir, pubPath);
    const beforeMismatches = await snapshotDir(store.dir);
    await expect(importAck(outbox, identity, ack(1, s1.hash, 3, intruder), key)).rejects.toMatchObject({
      code: 'BAD_SIGNATURE',
    });
    await expect(importAck(outbox, identity, ack(1, s2.hash, 3), key)).rejects.toMatchObject({
      code: 'ACK_MISMATCH',
    });
    await expect(importAck(outbox, identity, ack(1, s1.hash, 4), key)).rejects.toMatchObject({
      code: 'ACK_MISMATCH',
    });
    await expect(
      importAck(outbox, identity, ack(1, s1.hash, 3, serverKey, 'f'.repeat(32)), key),
    ).rejects.toMatchObject({
      code: 'ACK_MISMATCH',
    });
    expect(outbox.acked).toBe(0);
    expect(await snapshotDir(store.dir)).toEqual(beforeMismatches); // refused acks change nothing on disk
    expect(await applyAck(outbox, identity, store.dir, ack(1, s1.hash, 3), pubPath)).toMatchObject({
      trimmed: 3,
      alreadyApplied: false,
      depth: 1,
    });
    expect(await importAck(outbox, identity, ack(1, s1.hash, 3), key)).toMatchObject({
      trimmed: 0,
      alreadyApplied: true,
    });
    const s3 = await exportTelemetry(outbox, identity, 'plant-7', out1.replace('-1.', '-3.'));
    expect(s3).toMatchObject({ number: 3, prev: s2.hash, from: 4, to: 4, records: 1 });
    // a different server key is not accepted in place of the pinned one, and changes nothing
    const beforeKeyMismatch = await snapshotDir(store.dir);
    await expect(
      applyAck(outbox, identity, store.dir, ack(3, s3.hash, 4, intruder), join(w.dir, `${intruderName}.pub`)),
    ).rejects.toMatchObject({ code: 'SERVER_KEY_MISMATCH' });
    expect(await snapshotDir(store.dir)).toEqual(beforeKeyMismatch);
    expect((await serverKeyFor(store.dir)).key).toEqual(serverKey.publicKey); // pinned by the good ack
    await agents.close();
  });
});
