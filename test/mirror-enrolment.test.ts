/**
 * Who may enrol at a mirror, against a real `ferry mirror serve` child: enrolment
 * needs a token made with `ferry mirror token create` (while the mirror serves);
 * missing, malformed, unknown, expired, exhausted, revoked and other-site tokens
 * are refused with their own codes and leave the data dir byte for byte as it
 * was; a flood of bad requests costs no disk; the last use of a token goes to
 * one agent; groups come from the token; open enrolment is explicit and says so.
 * Then `ferry mirror agent revoke`: the agent's heartbeats and re-enrolment are
 * refused, and the revocation reaches the server (`ferry server agents`). And
 * relaying: without pinned relay keys nothing is relayed; with them, a replayed
 * genuine batch is acknowledged and stored once.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { enrollRequest, type AgentIdentity } from '../agent/identity.js';
import { generateKeyPair, keyIdOf } from '../core/ed25519.js';
import { agentIdOf, signHeartbeat } from '../core/heartbeat.js';
import { BATCH_TYPE, signBatch } from '../core/telemetry.js';
import { loadPrivateKey } from '../platform/keyfile.js';
import { eventually, makeToken } from './helpers/agent-proc.js';
import { snapshotDir } from './helpers/fixtures.js';
import { testHeartbeat } from './helpers/heartbeats.js';
import { followLogs, runFerry, spawnFerry, startMirrorProc, type MirrorProc } from './helpers/mirror-proc.js';
import { useWorld } from './helpers/world.js';

const w = useWorld();
let n = 0;

/** An agent identity in memory: enrolment requests are signed with it, nothing is written. */
function newAgent(): AgentIdentity {
  const k = generateKeyPair();
  const keyid = keyIdOf(k.publicKey);
  return {
    keyPath: '',
    publicKey: k.publicKey,
    keyid,
    agentId: agentIdOf(k.publicKey),
    key: { keyid, publicKey: k.publicKey, seed: k.seed },
  };
}

const info = { hostname: 'node-1', platform: 'linux/amd64', groups: ['admin'] };

async function post(url: string, body: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const r = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: r.status, json: (await r.json()) as Record<string, unknown> };
}

const enrolAt = (m: MirrorProc, a: AgentIdentity, token?: string, groups = info.groups) =>
  post(`${m.url}/v1/enroll`, enrollRequest(a, { ...info, groups, ...(token !== undefined && { token }) }));

async function newMirror(
  extra: { openEnrolment?: boolean; site?: string } = {},
): Promise<{ data: string; m: MirrorProc }> {
  const data = join(w.dir, `enrol-${++n}`);
  await mkdir(data, { recursive: true });
  const m = await startMirrorProc({
    data,
    trust: w.rootPath,
    site: extra.site ?? 'plant-7',
    ...(extra.openEnrolment && { openEnrolment: true }),
  });
  return { data, m };
}

/** No file under `dir` holds `secret`, as it is or inside a base64 DSSE payload. */
async function expectSecretNowhere(dir: string, secret: string): Promise<void> {
  for (const f of Object.keys(await snapshotDir(dir))) {
    const text = (await readFile(join(dir, f)).catch(() => Buffer.alloc(0))).toString('utf8');
    expect(text.includes(secret), f).toBe(false);
    for (const m of text.matchAll(/"payload":\s*"([A-Za-z0-9+/=]+)"/g))
      expect(Buffer.from(m[1]!, 'base64').toString('utf8').includes(secret), f).toBe(false);
  }
}

async function ok(args: string[]): Promise<string> {
  const r = await runFerry(args);
  if (r.code !== 0) throw new Error(`ferry ${args.join(' ')} → ${r.code}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

describe('POST /v1/enroll needs a token', () => {
  it('refuses missing, malformed, unknown, expired, exhausted, revoked and other-site tokens, each with its code, and stores nothing', async () => {
    const { data, m } = await newMirror();
    const good = await makeToken(data, { groups: ['web'] });
    const spent = await makeToken(data, { uses: 1 });
    expect((await enrolAt(m, newAgent(), spent.token)).status).toBe(200);
    const revoked = await makeToken(data);
    const rv = JSON.parse(await ok(['mirror', 'token', 'revoke', revoked.id, '--data', data, '--json'])) as {
      record: { state: string };
    };
    expect(rv.record.state).toBe('revoked');
    const shortLived = await makeToken(data, { ttl: '1s' });
    // the other site's mirror makes a token of its own
    const elsewhere = await newMirror({ site: 'plant-8' });
    const foreign = await makeToken(elsewhere.data);
    await elsewhere.m.stop();
    await new Promise((r) => setTimeout(r, 1100)); // shortLived expires
    const [, site, id, secret] = good.token.split(':');
    const forged = `ferry-enrol:${site}:${id}:${'A'.repeat(43)}`; // a known id, a guessed secret
    const unknown = `ferry-enrol:${site}:0123456789abcdef:${secret}`;
    const before = await snapshotDir(data);
    const cases: [string | undefined, number, string][] = [
      [undefined, 401, 'TOKEN_MISSING'],
      ['hello', 400, 'TOKEN_MALFORMED'],
      [good.token.slice(0, -1), 400, 'TOKEN_MALFORMED'],
      [forged, 403, 'TOKEN_UNKNOWN'],
      [unknown, 403, 'TOKEN_UNKNOWN'],
      [shortLived.token, 403, 'TOKEN_EXPIRED'],
      [spent.token, 403, 'TOKEN_EXHAUSTED'],
      [revoked.token, 403, 'TOKEN_REVOKED'],
      [foreign.token, 403, 'TOKEN_WRONG_SITE'],
      [good.token.replace(':plant-7:', ':plant-8:'), 403, 'TOKEN_WRONG_SITE'],
    ];
    for (const [token, status, code] of cases) {
      const r = await enrolAt(m, newAgent(), token);
      expect({ token, ...r }).toMatchObject({ token, status, json: { code } });
      expect(String(r.json.message)).not.toContain(secret); // a refusal never echoes a secret
    }
    expect(await snapshotDir(data)).toEqual(before); // every refusal left the data dir as it was
    // the good token still works, and the groups are the token's, not the agent's claim
    const a = newAgent();
    expect(await enrolAt(m, a, good.token)).toMatchObject({
      status: 200,
      json: { agentId: a.agentId, groups: ['web'] },
    });
    const rec = JSON.parse(await readFile(join(data, 'agents', `${a.agentId}.json`), 'utf8')) as Record<
      string,
      unknown
    >;
    expect(rec).toMatchObject({ groups: ['web'], tokenId: good.id });
    await expectSecretNowhere(data, secret!);
    // the log names tokens by id and never holds a secret
    expect(m.stderr()).toContain(good.id);
    for (const t of [good, spent, revoked, shortLived])
      expect(m.stderr()).not.toContain(t.token.split(':')[3]);
    const listed = JSON.parse(await ok(['mirror', 'token', 'list', '--data', data, '--json'])) as {
      tokens: { id: string; state: string; used: number; usedBy: string[] }[];
    };
    const byId = new Map(listed.tokens.map((t) => [t.id, t]));
    expect(byId.get(good.id)).toMatchObject({ state: 'exhausted', used: 1, usedBy: [a.agentId] });
    expect(byId.get(revoked.id)?.state).toBe('revoked');
    expect(byId.get(shortLived.id)?.state).toBe('expired');
    expect(JSON.stringify(listed)).not.toContain(secret);
    await m.stop();
  });

  it('a flood of enrolments without a valid token costs no disk', async () => {
    const { data, m } = await newMirror();
    const { token } = await makeToken(data);
    const [, site, id] = token.split(':');
    const before = await snapshotDir(data);
    const bad = [undefined, 'garbage', `ferry-enrol:${site}:${id}:${'x'.repeat(43)}`];
    let refused = 0;
    for (let round = 0; round < 20; round++) {
      const answers = await Promise.all(
        Array.from({ length: 30 }, (_, i) => enrolAt(m, newAgent(), bad[i % bad.length])),
      );
      refused += answers.filter((r) => r.status >= 400).length;
    }
    expect(refused).toBe(600);
    expect(await snapshotDir(data)).toEqual(before);
    await m.stop();
  });

  it('two agents racing for the last use: exactly one wins', async () => {
    const { data, m } = await newMirror();
    for (let round = 0; round < 3; round++) {
      const { token } = await makeToken(data, { uses: 2 });
      const agents = Array.from({ length: 8 }, () => newAgent());
      const answers = await Promise.all(agents.map((a) => enrolAt(m, a, token)));
      expect(answers.filter((r) => r.status === 200)).toHaveLength(2);
      expect(answers.filter((r) => r.json.code === 'TOKEN_EXHAUSTED')).toHaveLength(6);
    }
    await m.stop();
  });

  it('open enrolment is explicit: --open-enrolment admits any agent with its claim, and says so on / and in the log', async () => {
    const closed = await newMirror();
    expect(await (await fetch(`${closed.m.url}/`)).text()).toContain('enrolment needs a token');
    expect(closed.m.logs.find((l) => l.event === 'mirror.started')).toMatchObject({ enrolment: 'token' });
    await closed.m.stop();
    const { data, m } = await newMirror({ openEnrolment: true });
    expect(m.logs.find((l) => l.event === 'mirror.open_enrolment')).toBeDefined();
    expect(m.logs.find((l) => l.event === 'mirror.started')).toMatchObject({ enrolment: 'open' });
    expect(await (await fetch(`${m.url}/`)).text()).toContain('OPEN ENROLMENT');
    const a = newAgent();
    expect(await enrolAt(m, a)).toMatchObject({
      status: 200,
      json: { agentId: a.agentId, groups: ['admin'] },
    });
    expect(JSON.parse(await readFile(join(data, 'agents', `${a.agentId}.json`), 'utf8'))).toMatchObject({
      groups: ['admin'],
    });
    await m.stop();
  });
});

describe('ferry mirror agent revoke', () => {
  it("refuses the agent's heartbeats and re-enrolment, and the server learns it", async () => {
    const S = join(w.dir, 'revoke-server');
    const data = join(w.dir, 'revoke-mirror');
    await mkdir(data, { recursive: true });
    const pub = join(w.dir, 'revoke-mirror.pub');
    await ok(['mirror', 'identity', '--data', data, '--out', pub]);
    await ok(['server', 'register-mirror', '--data', S, '--site', 'plant-7', '--pub', pub]);
    const server = followLogs(
      spawnFerry(['server', 'start', '--data', S, '--listen', '127.0.0.1:0']),
      'server',
    );
    const serverUrl = String((await server.waitForLog((l) => l.event === 'server.started')).url);
    const m = await startMirrorProc({
      data,
      trust: w.rootPath,
      site: 'plant-7',
      args: ['--upstream', serverUrl, '--retry-max', '1'],
    });
    const a = newAgent();
    const b = newAgent();
    for (const x of [a, b]) expect((await enrolAt(m, x, (await makeToken(data)).token)).status).toBe(200);
    const beat = (x: AgentIdentity, c: number) =>
      post(`${m.url}/v1/telemetry`, signHeartbeat(testHeartbeat(x.agentId, c), x.key));
    expect((await beat(a, 1)).status).toBe(202);

    const out = JSON.parse(
      await ok([
        'mirror',
        'agent',
        'revoke',
        a.agentId,
        '--data',
        data,
        '--reason',
        'stolen laptop',
        '--json',
      ]),
    ) as { agent: { id: string; revokedAt: string | null } };
    expect(out.agent).toMatchObject({ id: a.agentId, revokedAt: expect.any(String) as unknown });
    // the server hears of it through the outbox
    await eventually(
      'the server to mark the agent revoked',
      async () => {
        const f = JSON.parse(await ok(['server', 'agents', '--data', S, '--json'])) as {
          agents: { id: string; revoked: { by: string; reason: string } | null }[];
        };
        return f.agents.find((x) => x.id === a.agentId)?.revoked ?? undefined;
      },
      30_000,
    ).then((r) => expect(r).toMatchObject({ reason: 'stolen laptop' }));
    const text = await ok(['server', 'agents', '--data', S]);
    expect(text).toMatch(new RegExp(`${a.agentId} .*REVOKED`));
    expect(text).not.toMatch(new RegExp(`${b.agentId} .*REVOKED`));

    // from now on: its heartbeats and its enrolment are refused, and they change nothing on disk
    await eventually('the outbox to drain', async () => {
      const s = JSON.parse(await ok(['mirror', 'status', '--data', data, '--json'])) as {
        telemetry: { depth: number };
      };
      return s.telemetry.depth === 0 ? true : undefined;
    });
    // the fleet view's snapshot of earlier, accepted heartbeats (and the outbox's trim floor with it)
    // is written up to 5 s later, whatever happens now: not part of what a refusal may change
    const snap = async () => {
      const v = await snapshotDir(data);
      for (const k of ['fleet.json', 'telemetry/outbox.json']) delete v[k];
      return v;
    };
    const before = await snap();
    expect(await beat(a, 2)).toMatchObject({ status: 400, json: { code: 'AGENT_REVOKED' } });
    expect(await enrolAt(m, a, (await makeToken(data)).token)).toMatchObject({
      status: 403,
      json: { code: 'AGENT_REVOKED' },
    });
    const afterToken = await snap(); // the token made just now is the only change
    expect(await beat(a, 3)).toMatchObject({ status: 400, json: { code: 'AGENT_REVOKED' } });
    expect(await snap()).toEqual(afterToken);
    expect(Object.keys(afterToken).filter((k) => before[k] !== afterToken[k])).toEqual([
      'enrolment/tokens.json',
    ]);
    // the other agent is unaffected
    expect((await beat(b, 1)).status).toBe(202);
    // listing shows it; revoking again changes nothing
    expect(await ok(['mirror', 'agent', 'list', '--data', data])).toMatch(
      new RegExp(`${a.agentId} +REVOKED`),
    );
    expect(await ok(['mirror', 'agent', 'revoke', a.agentId, '--data', data])).toContain('already revoked');
    const unknown = await runFerry(['mirror', 'agent', 'revoke', '0'.repeat(32), '--data', data, '--json']);
    expect(unknown.code).toBe(1);
    expect(JSON.parse(unknown.stdout)).toMatchObject({ ok: false, code: 'UNKNOWN_AGENT' });
    await m.stop();
    await server.stop();
  });
});

describe('relaying, against a real mirror', () => {
  it('relays nothing without pinned keys; with them, a replayed genuine batch is acknowledged and stored once', async () => {
    const dataA = join(w.dir, 'relay-a');
    const dataB = join(w.dir, 'relay-b');
    await mkdir(dataA, { recursive: true });
    await mkdir(dataB, { recursive: true });
    const pubA = join(w.dir, 'relay-a.pub');
    const idA = (
      JSON.parse(await ok(['mirror', 'identity', '--data', dataA, '--out', pubA, '--json'])) as {
        mirror: string;
      }
    ).mirror;
    const keyA = await loadPrivateKey(join(dataA, 'identity', 'mirror.key'));
    const genuine = (from: number, to: number) => ({
      envelope: signBatch(
        {
          type: BATCH_TYPE,
          mirror: idA,
          site: 'plant-7',
          createdAt: new Date().toISOString(),
          from,
          to,
          records: [],
        },
        keyA,
      ),
      via: [idA],
    });
    const relay = async (url: string, batches: unknown[]) => {
      const r = await fetch(`${url}/v1/telemetry`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'ferry-relay': 'upstream' },
        body: JSON.stringify({ batches }),
      });
      return { status: r.status, json: (await r.json()) as Record<string, unknown> };
    };
    // no --relay-key: a well-formed, genuinely signed batch is refused all the same, five times over
    let b = await startMirrorProc({ data: dataB, trust: w.rootPath, site: 'plant-7' });
    expect(b.logs.find((l) => l.event === 'mirror.started')).toMatchObject({ relayFrom: [] });
    const big = Array.from({ length: 64 }, (_, i) => genuine(i + 1, i + 1));
    const untouched = await snapshotDir(dataB);
    for (let i = 0; i < 5; i++)
      expect(await relay(b.url, big)).toMatchObject({ status: 403, json: { code: 'RELAY_UNTRUSTED' } });
    expect(await snapshotDir(dataB)).toEqual(untouched);
    await b.stop();
    // A pinned: its batch is carried once; replays are acknowledged and stored no more, across a restart
    b = await startMirrorProc({ data: dataB, relayKeys: [pubA] });
    expect(await relay(b.url, [genuine(1, 5)])).toMatchObject({
      status: 202,
      json: { stored: 1, duplicates: 0 },
    });
    const once = await snapshotDir(dataB);
    for (let i = 0; i < 5; i++)
      expect(await relay(b.url, [genuine(1, 5)])).toMatchObject({
        status: 202,
        json: { stored: 0, duplicates: 1 },
      });
    expect(await snapshotDir(dataB)).toEqual(once);
    await b.stop();
    b = await startMirrorProc({ data: dataB, relayKeys: [pubA] });
    const restarted = await snapshotDir(dataB);
    expect(await relay(b.url, [genuine(2, 3)])).toMatchObject({
      status: 202,
      json: { stored: 0, duplicates: 1 },
    });
    expect(await snapshotDir(dataB)).toEqual(restarted);
    await b.stop();
  });
});
