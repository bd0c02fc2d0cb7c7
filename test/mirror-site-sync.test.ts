/**
 * One site, several mirrors: real `ferry mirror serve` processes on loopback, each listing the others
 * in a peers file and their keys with --peer-key. Halts, resumes, approvals, enrolments and revocations
 * made at one reach the others through the site log (GET /v1/site-log), and an agent that fails over
 * gets the same answer. A hostile peer serving entries signed with a key no one listed changes nothing.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { mkdir, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { enroll, loadOrCreateIdentity, type AgentIdentity } from '../agent/identity.js';
import { keyIdOf } from '../core/ed25519.js';
import { signHeartbeat } from '../core/heartbeat.js';
import { LINK_AUTH_HEADER, signLinkRequest } from '../core/link-auth.js';
import { signSiteEntry, SITE_LOG_TYPE, type SiteLogBody } from '../core/site-log.js';
import { mirrorIdOf } from '../core/telemetry.js';
import { generateKeyFiles, loadPrivateKey } from '../platform/keyfile.js';
import { eventually, importInto, startMirrorAt, type MirrorAt } from './helpers/agent-proc.js';
import { buildBundle, snapshotDir } from './helpers/fixtures.js';
import { testHeartbeat } from './helpers/heartbeats.js';
import { runFerry } from './helpers/mirror-proc.js';
import { useWorld } from './helpers/world.js';

const w = useWorld();
const TARGET = '2.0.0';

interface Answer {
  rolloutId: string | null;
  may: boolean;
  code: string;
}

class SimAgent {
  counter = 0;
  version = '1.0.0';
  constructor(readonly id: AgentIdentity) {}
  get agentId() {
    return this.id.agentId;
  }
  async heartbeat(url: string, updates: { outcome: string; version: string }[] = []): Promise<number> {
    const hb = testHeartbeat(this.agentId, ++this.counter, {
      version: this.version,
      results: updates.map((u) => ({ update: { ...u, reason: u.outcome, at: new Date().toISOString() } })),
    });
    const r = await fetch(`${url}/v1/telemetry`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(signHeartbeat(hb, this.id.key)),
    });
    return r.status;
  }
  async ask(url: string): Promise<{ status: number; answer?: Answer; code?: string }> {
    const r = await fetch(`${url}/v1/rollout/${this.agentId}?peek=1`);
    const v = (await r.json()) as Answer & { code: string };
    return r.status === 200 ? { status: 200, answer: v } : { status: r.status, code: v.code };
  }
}

interface Peer {
  name: string;
  data: string;
  pub: string;
  peersFile: string;
  mirror: MirrorAt;
}

let sites = 0;
const agentArtifact = (version: string) => ({
  name: 'ferry-agent',
  kind: 'agent' as const,
  version,
  platform: 'linux-x64',
  content: randomBytes(2048),
});

/**
 * `names.length` mirrors of one site, each given the others' keys, peering through peers files (all
 * linked), serving 1.0.0; agents enrol at the first (open enrolment).
 */
async function site(names: string[], agents = 2, extraKeys: string[] = []) {
  const tag = `s${++sites}`;
  const first = await buildBundle(w, join(w.dir, `${tag}-1.ferry`), { artifacts: [agentArtifact('1.0.0')] });
  const dirs = names.map((n) => join(w.dir, tag, n));
  const pubs: string[] = [];
  for (const [i, d] of dirs.entries()) {
    await importInto(d, first.volumes[0]!.path, w.rootPath);
    const pub = join(w.dir, tag, `${names[i]}.pub`);
    const r = await runFerry(['mirror', 'identity', '--data', d, '--out', pub]);
    expect(r.code, r.stderr).toBe(0);
    pubs.push(pub);
  }
  const peers: Peer[] = [];
  for (const [i, d] of dirs.entries()) {
    const peersFile = join(w.dir, tag, `${names[i]}.peers`);
    await writeFile(peersFile, '');
    const keyArgs = [...pubs.filter((_, j) => j !== i), ...extraKeys].flatMap((k) => ['--peer-key', k]);
    const mirror = await startMirrorAt(d, 0, {
      openEnrolment: true,
      args: ['--peers', peersFile, '--peer-interval', '0.3', ...keyArgs],
    });
    peers.push({ name: names[i]!, data: d, pub: pubs[i]!, peersFile, mirror });
  }
  for (const p of peers)
    await link(
      p,
      peers.filter((q) => q !== p),
    );
  const sims: SimAgent[] = [];
  for (let i = 0; i < agents; i++) {
    const id = await loadOrCreateIdentity(join(w.dir, tag, 'agents', String(i)));
    await enroll(peers[0]!.mirror.url, id, { hostname: `n${i}`, platform: 'linux-x64', groups: [] });
    const a = new SimAgent(id);
    expect(await a.heartbeat(peers[0]!.mirror.url)).toBe(202);
    sims.push(a);
  }
  return { tag, peers, agents: sims };
}

/** Sets whom `p` pulls from (its peers file, re-read each round). */
async function link(p: Peer, to: Peer[]): Promise<void> {
  await writeFile(p.peersFile, to.map((q) => q.mirror.url + '\n').join(''));
}

/** Brings a rollout of TARGET to every mirror (each imports the same bundle). */
async function rollout(s: Awaited<ReturnType<typeof site>>, plan: Record<string, unknown>): Promise<string> {
  const second = await buildBundle(w, join(w.dir, `${s.tag}-2.ferry`), {
    spec: { sequence: 2, rollout: { agent: TARGET, ...plan } },
    artifacts: [agentArtifact(TARGET)],
  });
  for (const p of s.peers) await importInto(p.data, second.volumes[0]!.path, w.rootPath);
  let id = '';
  for (const p of s.peers)
    id = await eventually(`the rollout at ${p.name}`, async () => {
      const st = await status(p.data);
      return st ? String(st.id) : undefined;
    });
  return id;
}

async function status(
  data: string,
): Promise<(Record<string, unknown> & { phase: string; wave: number }) | null> {
  const r = await runFerry(['mirror', 'rollout', 'status', '--data', data, '--json']);
  expect(r.code, r.stderr).toBe(0);
  return (
    JSON.parse(r.stdout) as { rollout: (Record<string, unknown> & { phase: string; wave: number }) | null }
  ).rollout;
}

async function operator(data: string, ...args: string[]) {
  return runFerry(['mirror', 'rollout', ...args, '--data', data, '--actor', 'ops', '--json']);
}

const phaseIs = (p: Peer, phase: string) =>
  eventually(`${p.name} ${phase}`, async () => ((await status(p.data))?.phase === phase ? true : undefined));

const HELD = { strategy: 'staggered', waves: [{ percent: 100 }], maxFailureRate: 1 };

describe('one site, several mirrors: the site log', () => {
  it('halt at A reaches B; resume at B reaches A; a resume never lifts a halt its mirror had not heard of', async () => {
    const s = await site(['a', 'b']);
    const [A, B] = s.peers as [Peer, Peer];
    await rollout(s, HELD);
    const agent = s.agents[0]!;
    expect((await agent.ask(B.mirror.url)).answer).toMatchObject({ code: 'GO' });

    expect((await operator(A.data, 'halt', '--reason', 'smoke at line 3')).code).toBe(0);
    await eventually('B answers HALTED', async () =>
      (await agent.ask(B.mirror.url)).answer?.code === 'HALTED' ? true : undefined,
    );
    expect((await status(B.data))?.haltReason).toBe('smoke at line 3');

    const resumed = await operator(B.data, 'resume');
    expect(resumed.code, resumed.stderr).toBe(0);
    await phaseIs(A, 'running');
    expect((await agent.ask(A.mirror.url)).answer?.code).toBe('GO');

    // Cut apart, each halts; B's operator resumes B's own halt, never having heard of A's.
    await link(A, []);
    await link(B, []);
    await eventually('the links are cut', async () => {
      const st = await mirrorStatus(A.data);
      return st.siteLog.peers.length === 0 ? true : undefined;
    });
    expect((await operator(A.data, 'halt', '--reason', 'A saw a fault')).code).toBe(0);
    expect((await operator(B.data, 'halt', '--reason', 'B saw a fault')).code).toBe(0);
    expect((await operator(B.data, 'resume')).code).toBe(0);
    expect((await status(B.data))?.phase).toBe('running');
    await link(A, [B]);
    await link(B, [A]);
    // Together again: A's halt still stands, at both.
    await phaseIs(B, 'halted');
    expect((await status(B.data))?.haltReason).toBe('A saw a fault');
    expect((await status(A.data))?.phase).toBe('halted');
    expect((await agent.ask(B.mirror.url)).answer?.code).toBe('HALTED');
    const st = await mirrorStatus(B.data);
    expect(st.siteLog.peers[0]).toMatchObject({ url: A.mirror.url, link: 'up', refused: 0 });
    const text = await runFerry(['mirror', 'status', '--data', B.data]);
    expect(text.stdout).toMatch(/site log: \d+ entries held/);
    expect(text.stdout).toContain(`site peer ${A.mirror.url}: link up`);
    const page = await (await fetch(`${B.mirror.url}/`)).text();
    expect(page).toContain('id="site-log"');
    expect(page).toContain(A.mirror.url);
    for (const p of s.peers) await p.mirror.stop();
  });

  it('approve at B opens the wave at A; enrolled at A, an agent fails over to B; revoked at A, B refuses it', async () => {
    const s = await site(['a', 'b'], 3);
    const [A, B] = s.peers as [Peer, Peer];
    const id = await rollout(s, {
      strategy: 'manual',
      waves: [{ percent: 50 }, { percent: 100 }],
      maxFailureRate: 1,
    });
    // Enrolled at A only: B serves it the same answer, takes its heartbeats and serves the manifest.
    for (const a of s.agents)
      await eventually('B knows the agent', async () =>
        (await a.ask(B.mirror.url)).status === 200 ? true : undefined,
      );
    for (const a of s.agents) {
      const [atA, atB] = [await a.ask(A.mirror.url), await a.ask(B.mirror.url)];
      expect(atA.status).toBe(200);
      expect(atB).toEqual(atA);
      expect(atB.answer?.rolloutId).toBe(id);
    }
    expect((await fetch(`${B.mirror.url}/v1/manifest`)).status).toBe(200);
    // The canary's agents update; both mirrors hear it, so both come to await approval.
    const { waveOf } = await import('../core/rollout/wave.js');
    for (const a of s.agents.filter(
      (x) => waveOf(id, x.agentId, [{ percent: 50 }, { percent: 100 }]) === 0,
    )) {
      a.version = TARGET;
      for (const p of s.peers)
        expect(await a.heartbeat(p.mirror.url, [{ outcome: 'committed', version: TARGET }])).toBe(202);
    }
    for (const a of s.agents) expect(await a.heartbeat(B.mirror.url)).toBe(202);
    await phaseIs(A, 'awaiting-approval');
    await phaseIs(B, 'awaiting-approval');
    const ok = await operator(B.data, 'approve', '--reason', 'canary fine');
    expect(ok.code, ok.stderr).toBe(0);
    await eventually('A opens wave 1', async () => ((await status(A.data))?.wave === 1 ? true : undefined));

    const victim = s.agents[0]!;
    const revoked = await runFerry([
      'mirror',
      'agent',
      'revoke',
      victim.agentId,
      '--data',
      A.data,
      '--reason',
      'stolen',
    ]);
    expect(revoked.code, revoked.stderr).toBe(0);
    await eventually('B refuses the revoked agent', async () =>
      (await victim.ask(B.mirror.url)).status === 403 ? true : undefined,
    );
    expect((await victim.ask(B.mirror.url)).code).toBe('AGENT_REVOKED');
    // Its heartbeats are refused at B as at A (the telemetry route answers 400 AGENT_REVOKED per batch).
    expect(await victim.heartbeat(B.mirror.url)).toBe(400);
    expect(await victim.heartbeat(A.mirror.url)).toBe(400);
    expect((await s.agents[1]!.ask(B.mirror.url)).status).toBe(200);
    for (const p of s.peers) await p.mirror.stop();
  });
});

describe('a chain of three mirrors', () => {
  it('a halt at A reaches C through B; C, given the rollout by bundle sync from B, is halted by it', async () => {
    const s = await site(['a', 'b', 'c'], 1);
    const [A, B, C] = s.peers as [Peer, Peer, Peer];
    // A and C each hear only B.
    await link(A, [B]);
    await link(C, [B]);
    const agent = s.agents[0]!;
    await eventually('C knows the agent enrolled at A', async () =>
      (await agent.ask(C.mirror.url)).status === 200 ? true : undefined,
    );
    // The rollout reaches A and B; A halts it.
    const second = await buildBundle(w, join(w.dir, `${s.tag}-2.ferry`), {
      spec: { sequence: 2, rollout: { agent: TARGET, ...HELD } },
      artifacts: [agentArtifact(TARGET)],
    });
    for (const p of [A, B]) await importInto(p.data, second.volumes[0]!.path, w.rootPath);
    await eventually('A runs the rollout', async () => ((await status(A.data)) ? true : undefined));
    expect((await operator(A.data, 'halt', '--reason', 'hold everything')).code).toBe(0);
    // C gets the rollout from B (bundle sync) and the halt from B (site log), in whichever order:
    // a halt of a rollout C does not run yet waits in its log.
    await phaseIs(C, 'halted');
    expect((await status(C.data))?.haltReason).toBe('hold everything');
    expect((await agent.ask(C.mirror.url)).answer?.code).toBe('HALTED');
    for (const p of s.peers) await p.mirror.stop();
  });
});

interface MirrorStatusJson {
  siteLog: {
    entries: number;
    peers: {
      url: string;
      link: string;
      accepted: number;
      refused: number;
      lastRefusal: { code: string } | null;
    }[];
  };
}

async function mirrorStatus(data: string): Promise<MirrorStatusJson> {
  const r = await runFerry(['mirror', 'status', '--data', data, '--json']);
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { telemetry: MirrorStatusJson }).telemetry;
}

/** A peer that serves whatever site log it is given, as a hostile mirror would. */
async function hostilePeer(entries: unknown[]): Promise<{ url: string; server: Server }> {
  const server = createServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    if (req.url?.startsWith('/v1/site-log')) {
      const after = Number(new URL(req.url, 'http://x').searchParams.get('after') ?? 0);
      res.end(
        JSON.stringify({ entries: after === 0 ? entries : [], next: entries.length, head: entries.length }),
      );
    } else {
      res.statusCode = 404;
      res.end(JSON.stringify({ code: 'NOT_FOUND', message: 'no' }));
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

describe('attack: a hostile peer serves forged decisions', () => {
  it('halt, resume, approve, abort, enrolment and revocation signed by an unlisted key, or another site, are refused and change nothing', async () => {
    const s = await site(['a', 'b'], 2);
    const [A, B] = s.peers as [Peer, Peer];
    const id = await rollout(s, HELD);
    const hostileDir = join(w.dir, s.tag, 'hostile');
    await mkdir(hostileDir, { recursive: true });
    await generateKeyFiles(hostileDir, 'mirror');
    const hostile = await loadPrivateKey(join(hostileDir, 'mirror.key'));
    const bKey = await loadPrivateKey(join(B.data, 'identity', 'mirror.key'));
    const signer = (k: typeof hostile) => ({ keyid: keyIdOf(k.publicKey), seed: k.seed });
    const sign = (body: SiteLogBody, k = hostile, o: { site?: string; as?: string } = {}) =>
      signSiteEntry(
        {
          ...body,
          type: SITE_LOG_TYPE,
          site: o.site ?? 'plant-7',
          mirror: o.as ?? mirrorIdOf(k.publicKey),
          at: Date.now(),
        },
        signer(k),
      ).envelope;
    const stranger = await loadOrCreateIdentity(join(w.dir, s.tag, 'stranger'));
    const halt: SiteLogBody = {
      kind: 'rollout',
      rolloutId: id,
      action: 'halt',
      actor: 'evil',
      reason: 'forged',
    };
    const forged = [
      sign(halt),
      sign({ kind: 'rollout', rolloutId: id, action: 'abort', actor: 'evil', reason: '', revert: true }),
      sign({ kind: 'rollout', rolloutId: id, action: 'approve', actor: 'evil', reason: '', wave: 1 }),
      sign({ kind: 'rollout', rolloutId: id, action: 'resume', actor: 'evil', reason: '', lifts: [] }),
      sign({
        kind: 'enrol',
        agentId: stranger.agentId,
        publicKey: Buffer.from(stranger.key.publicKey).toString('hex'),
        hostname: 'evil',
        platform: 'linux-x64',
        groups: ['scada'],
        enrolledAt: new Date().toISOString(),
      }),
      sign({
        kind: 'revoke',
        agentId: s.agents[0]!.agentId,
        revokedAt: new Date().toISOString(),
        reason: 'forged',
      }),
      // Names B, signed by the hostile key.
      sign(halt, hostile, { as: mirrorIdOf(bKey.publicKey) }),
      // B's real key, for another site.
      sign(halt, bKey, { site: 'elsewhere' }),
    ];
    const h = await hostilePeer(forged);
    // B is cut off so that A's log holds only what A itself decided and what the hostile peer serves.
    await link(B, []);
    await link(A, []);
    await eventually('A has no peers', async () =>
      (await mirrorStatus(A.data)).siteLog.peers.length === 0 ? true : undefined,
    );
    const before = {
      agents: await snapshotDir(join(A.data, 'agents')),
      log: await snapshotDir(join(A.data, 'site-log')),
    };
    const phase = await status(A.data);
    await writeFile(A.peersFile, `${h.url}\n`);
    const seen = await eventually('A pulls from the hostile peer', async () => {
      const p = (await mirrorStatus(A.data)).siteLog.peers.find((x) => x.url === h.url);
      return p && p.refused >= forged.length ? p : undefined;
    });
    expect(seen).toMatchObject({ accepted: 0, refused: forged.length });
    expect(after(await status(A.data))).toEqual(after(phase));
    expect(await snapshotDir(join(A.data, 'agents'))).toEqual(before.agents);
    expect(await snapshotDir(join(A.data, 'site-log'))).toEqual(before.log);
    expect((await stranger_ask(A.mirror.url, stranger.agentId)).status).toBe(404);
    expect((await s.agents[0]!.ask(A.mirror.url)).answer?.code).toBe('GO');
    const codes = A.mirror.logs.filter((l) => l.event === 'site.entry_refused').map((l) => l.code);
    expect(new Set(codes)).toEqual(
      new Set(['SITE_LOG_UNKNOWN_MIRROR', 'SITE_LOG_BAD_SIGNATURE', 'SITE_LOG_WRONG_SITE']),
    );
    h.server.close();
    for (const p of s.peers) await p.mirror.stop();
  });
});

describe('attack: a stranger reads the site log', () => {
  it('only a listed mirror of the site, with a fresh signed request, reads it; the rest get coded refusals', async () => {
    const s = await site(['a', 'b'], 1);
    const [A, B] = s.peers as [Peer, Peer];
    const bKey = await loadPrivateKey(join(B.data, 'identity', 'mirror.key'));
    const strangerDir = join(w.dir, s.tag, 'reader');
    await mkdir(strangerDir, { recursive: true });
    await generateKeyFiles(strangerDir, 'mirror');
    const stranger = await loadPrivateKey(join(strangerDir, 'mirror.key'));
    const path = '/v1/site-log?after=0';
    const header = (k: typeof bKey, o: { site?: string; path?: string; at?: number } = {}) =>
      signLinkRequest(
        {
          mirror: mirrorIdOf(k.publicKey),
          site: o.site ?? 'plant-7',
          method: 'GET',
          path: o.path ?? path,
          nonce: randomBytes(16).toString('hex'),
          now: o.at ?? Date.now(),
        },
        { keyid: keyIdOf(k.publicKey), seed: k.seed },
      );
    const get = async (h?: string) => {
      const r = await fetch(`${A.mirror.url}${path}`, { headers: h ? { [LINK_AUTH_HEADER]: h } : {} });
      return { status: r.status, body: (await r.json()) as { code?: string; entries?: unknown[] } };
    };
    // B is listed at A: it reads A's enrolment of the agent.
    const ok = await get(header(bKey));
    expect(ok.status).toBe(200);
    expect(ok.body.entries?.length).toBeGreaterThan(0);
    expect(await get()).toMatchObject({ status: 401, body: { code: 'LINK_AUTH_MISSING' } });
    expect(await get(header(stranger))).toMatchObject({ status: 403, body: { code: 'UNKNOWN_MIRROR' } });
    expect(await get(header(bKey, { site: 'elsewhere' }))).toMatchObject({
      status: 403,
      body: { code: 'WRONG_SITE' },
    });
    expect(await get(header(bKey, { path: '/v1/site-log?after=5' }))).toMatchObject({
      status: 400,
      body: { code: 'LINK_AUTH_INVALID' },
    });
    expect(await get(header(bKey, { at: Date.now() - 10 * 60_000 }))).toMatchObject({
      status: 401,
      body: { code: 'REQUEST_EXPIRED' },
    });
    const once = header(bKey);
    expect((await get(once)).status).toBe(200);
    expect(await get(once)).toMatchObject({ status: 401, body: { code: 'REPLAY' } });
    for (const p of s.peers) await p.mirror.stop();
  });
});

const after = (st: Awaited<ReturnType<typeof status>>) => ({
  phase: st?.phase,
  wave: st?.wave,
  revert: st?.revert,
});

async function stranger_ask(url: string, agentId: string) {
  return fetch(`${url}/v1/rollout/${agentId}`);
}
