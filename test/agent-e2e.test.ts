/**
 * `ferry agent` end to end, every party a real process: `ferry mirror serve`
 * children over data dirs filled by `ferry mirror import`, `ferry agent run`
 * polling them every second, and one-shot `ferry agent poll --now` and
 * `ferry agent status`. The bundle carries a script that appends a line to a
 * marker file, a managed file and the policy that binds them to this node.
 */
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { serializeEnvelope, signEnvelope, type Signer } from '../core/dsse.js';
import { MANIFEST_PAYLOAD_TYPE } from '../core/manifest.js';
import { isoUtc } from '../core/time.js';
import {
  agentStatus,
  eventually,
  importInto,
  makeToken,
  OPEN_ENROLMENT,
  readTelemetry,
  startAgent,
  startMirrorAt,
  type LoggedProc,
  type MirrorAt,
} from './helpers/agent-proc.js';
import { buildBundle, makeKey, snapshotDir, type ArtifactInput } from './helpers/fixtures.js';
import { useWorld } from './helpers/world.js';
import { runFerry, sha256, type LogLine } from './helpers/mirror-proc.js';

const w = useWorld();

const SCRIPT = '#!/bin/sh\necho "ran" >> "$1"\n';
const CONF = 'listen = 0.0.0.0:8080\nworkers = 4\n';

interface Case {
  dir: string;
  data: string;
  state: string;
  marker: string;
  conf: string;
}

/** A fresh directory for one case: mirror data, agent state, the marker and the managed file's home. */
async function newCase(name: string): Promise<Case> {
  const dir = join(w.dir, name);
  await mkdir(join(dir, 'etc'), { recursive: true });
  return {
    dir,
    data: join(dir, 'mirror'),
    state: join(dir, 'agent'),
    marker: join(dir, 'marker'),
    conf: join(dir, 'etc', 'app.conf'),
  };
}

/** The script, the managed file and the policy naming both, for case `c`. */
function artifacts(c: Case, schedule: string, conf = CONF): ArtifactInput[] {
  const policy = {
    type: 'ferry.policy/v1',
    scripts: [{ script: 'tick', groups: ['*'], schedule, args: [c.marker] }],
    files: [{ path: c.conf, artifact: 'app-conf', mode: '0640', enforce: true }],
  };
  return [
    { name: 'tick', kind: 'script', content: SCRIPT },
    { name: 'app-conf', kind: 'file', content: conf },
    { name: 'baseline', kind: 'policy', content: JSON.stringify(policy) },
  ];
}

let n = 0;
async function bundle(c: Case, sequence: number, schedule: string, conf = CONF) {
  const out = join(c.dir, `s${sequence}-${++n}.ferry`);
  const r = await buildBundle(w, out, { artifacts: artifacts(c, schedule, conf), spec: { sequence } });
  return { ...r, file: r.volumes[0]!.path };
}

const agentArgs = (c: Case, mirrors: string[], extra: string[] = []) => [
  '--state',
  c.state,
  '--mirror',
  mirrors.join(','),
  '--trust',
  w.rootPath,
  '--site',
  'plant-7',
  '--group',
  'web',
  '--interval',
  '1',
  ...extra,
];

const event =
  (name: string, fields: Record<string, unknown> = {}) =>
  (l: LogLine) =>
    l.event === name && Object.entries(fields).every(([k, v]) => l[k] === v);

const lines = async (p: string) => (await readFile(p, 'utf8')).split('\n').filter(Boolean);
const modeOf = async (p: string) => (await stat(p)).mode & 0o7777;
const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

/** Telemetry heartbeats of `agentId` in the mirror's log. */
async function heartbeatsOf(data: string, agentId: string) {
  return (await readTelemetry(data)).filter((h) => h.agentId === agentId);
}

describe('ferry agent run against a real mirror', () => {
  let c: Case;
  let mirror: MirrorAt;
  let agent: LoggedProc;
  let agentId: string;

  it('enrols, fetches, runs a once script once, places the managed file and reports signed heartbeats', async () => {
    c = await newCase('full');
    const b = await bundle(c, 1, 'once');
    await importInto(c.data, b.file, w.rootPath);
    mirror = await startMirrorAt(c.data); // enrolment needs a token
    const { token, id: tokenId } = await makeToken(c.data, { groups: ['web'] }); // made while it serves
    const tokenFile = join(c.dir, 'enrol.token');
    await writeFile(tokenFile, `${token}\n`, { mode: 0o600 });
    agent = startAgent(agentArgs(c, [mirror.url], ['--token-file', tokenFile]));

    const enrolled = await agent.waitForLog(event('agent.enrolled'));
    agentId = String(enrolled.agentId);
    const record = JSON.parse(await readFile(join(c.data, 'agents', `${agentId}.json`), 'utf8')) as Record<
      string,
      unknown
    >;
    expect(record).toMatchObject({ groups: ['web'], tokenId });
    // the secret is in no log and nowhere in the mirror's data dir
    const secret = token.split(':').at(-1)!;
    expect(agent.stderr()).not.toContain(secret);
    expect(mirror.stderr()).not.toContain(secret);
    for (const f of Object.keys(await snapshotDir(c.data)))
      expect((await readFile(join(c.data, f)).catch(() => Buffer.alloc(0))).includes(secret)).toBe(false);
    await agent.waitForLog(event('sync.updated', { sequence: 1 }));
    await agent.waitForLog(event('script.ran', { script: 'tick', exitCode: 0 }));
    // a few more cycles: the once script must not run again
    const hbs = await eventually('three heartbeats at the mirror', async () => {
      const h = await heartbeatsOf(c.data, agentId);
      return h.length >= 4 ? h : undefined;
    });

    expect(await lines(c.marker)).toEqual(['ran']);
    expect(agent.logs.filter(event('script.ran'))).toHaveLength(1);
    expect(await readFile(c.conf, 'utf8')).toBe(CONF);
    expect(await modeOf(c.conf)).toBe(0o640);

    const counters = hbs.map((h) => h.counter);
    for (let i = 1; i < counters.length; i++) expect(counters[i]!).toBeGreaterThan(counters[i - 1]!);
    expect(counters[0]).toBe(1);
    for (const h of hbs) expect(h.payload.agentId).toBe(agentId);
    const ran = hbs.flatMap((h) => h.payload.results);
    expect(ran).toEqual([expect.objectContaining({ script: 'tick', exitCode: 0 })]);
    expect(hbs.at(-1)!.payload.manifestSequence).toBe(1);

    const status = await eventually('an empty outbox', async () => {
      const s = await agentStatus(c.state);
      return s.outbox === 0 ? s : undefined;
    });
    expect(status).toMatchObject({
      ok: true,
      agentId,
      site: 'plant-7',
      active: { publisher: 'acme-ops', sequence: 1 },
      disconnectedSec: 0,
      outbox: 0,
    });
    expect(status.scripts.tick).toMatchObject({ digest: sha256(Buffer.from(SCRIPT)), lastExit: 0 });
  });

  it('restores a managed file that drifted and reports the drift', async () => {
    const before = Math.max(...(await heartbeatsOf(c.data, agentId)).map((h) => h.counter));
    await writeFile(c.conf, 'listen = 0.0.0.0:6666\n');
    await chmod(c.conf, 0o666);

    await agent.nextLog(event('file.drift', { path: c.conf, action: 'restored' }));
    expect(await readFile(c.conf, 'utf8')).toBe(CONF);
    expect(await modeOf(c.conf)).toBe(0o640);
    const hb = await eventually('a heartbeat reporting the drift', async () =>
      (await heartbeatsOf(c.data, agentId)).find(
        (h) => h.counter > before && h.payload.drift.some((d) => d.action === 'restored'),
      ),
    );
    expect(hb.payload.drift).toEqual([
      { path: c.conf, artifact: 'app-conf', status: 'drift', action: 'restored' },
    ]);
    expect(await lines(c.marker)).toEqual(['ran']); // the drift changed nothing else

    expect(await agent.stop()).toEqual({ code: 0, signal: null });
    await mirror.stop();
  });
});

describe('ferry agent run cut off from its only mirror', () => {
  it('keeps its schedule, queues telemetry, and delivers every counter exactly once when the mirror is back', async () => {
    const c = await newCase('cutoff');
    const b = await bundle(c, 1, 'every 10s');
    await importInto(c.data, b.file, w.rootPath);
    let mirror = await startMirrorAt(c.data, 0, OPEN_ENROLMENT);
    const port = mirror.port;
    const agent = startAgent(agentArgs(c, [mirror.url]));
    const agentId = String((await agent.waitForLog(event('agent.enrolled'))).agentId);
    await agent.waitForLog(event('script.ran', { script: 'tick' }));
    await eventually('a heartbeat at the mirror', async () =>
      (await heartbeatsOf(c.data, agentId)).length > 0 ? true : undefined,
    );

    expect(await mirror.stop('SIGKILL')).toEqual({ code: null, signal: 'SIGKILL' });
    const killedAt = Date.now();
    await agent.nextLog(event('agent.cycle', { sync: 'unreachable' }), 5_000);
    // the next run is due 10 s after the first, mirror or not
    await agent.nextLog(event('script.ran', { script: 'tick', exitCode: 0 }), 15_000);
    expect(await lines(c.marker)).toEqual(['ran', 'ran']);
    const cutOff = await agentStatus(c.state);
    expect(cutOff.outbox).toBeGreaterThan(0);
    expect(cutOff.disconnectedSec).toBeGreaterThan(0);
    expect(cutOff.active).toEqual({ publisher: 'acme-ops', sequence: 1 });
    expect(Date.now() - killedAt).toBeGreaterThan(cutOff.disconnectedSec * 1000 - 2_000);

    mirror = await startMirrorAt(c.data, port, OPEN_ENROLMENT);
    expect(mirror.url).toBe(`http://127.0.0.1:${port}`);
    await eventually(
      'the outbox to drain',
      async () => ((await agentStatus(c.state)).outbox === 0 ? true : undefined),
      15_000,
    );
    expect(await agent.stop()).toEqual({ code: 0, signal: null });

    const state = JSON.parse(await readFile(join(c.state, 'state.json'), 'utf8')) as { counter: number };
    expect((await agentStatus(c.state)).outbox).toBe(0);
    const hbs = await heartbeatsOf(c.data, agentId);
    expect(hbs.map((h) => h.counter)).toEqual(Array.from({ length: state.counter }, (_, i) => i + 1));
    // the gap is reported, and the run made while cut off arrived with it
    expect(hbs.some((h) => h.payload.disconnectedSec > 0)).toBe(true);
    expect(hbs.flatMap((h) => h.payload.results).filter((r) => r.script === 'tick')).toHaveLength(2);
    await mirror.stop();
  }, 60_000);
});

/** How many times a mirror has been asked for its manifest (its own request counter, all statuses). */
async function manifestRequests(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  let sum = 0;
  for (const m of text.matchAll(/^ferry_mirror_requests_total\{([^}]*)\} (\d+)$/gm))
    if (m[1]!.includes('route="/v1/manifest"')) sum += Number(m[2]);
  return sum;
}

describe('ferry agent run with two mirrors, the first serving a tampered blob', () => {
  it('fails over for the blob, runs the genuine script and caches only verified bytes', async () => {
    const c = await newCase('failover');
    const b = await bundle(c, 1, 'once');
    const dataA = join(c.dir, 'mirror-a');
    const dataB = join(c.dir, 'mirror-b');
    await importInto(dataA, b.file, w.rootPath);
    await importInto(dataB, b.file, w.rootPath);
    const hex = sha256(Buffer.from(SCRIPT));
    const blobA = join(dataA, 'blobs', 'sha256', hex);
    const evil = SCRIPT.replace('ran', 'BAD'); // same size, different bytes
    expect(evil.length).toBe(SCRIPT.length);
    await chmod(blobA, 0o644);
    await writeFile(blobA, evil);

    const a = await startMirrorAt(dataA, 0, OPEN_ENROLMENT);
    const bm = await startMirrorAt(dataB, 0, OPEN_ENROLMENT);
    const agent = startAgent(agentArgs(c, [a.url, bm.url]));
    await agent.waitForLog(event('sync.updated', { sequence: 1 }));
    await agent.waitForLog(event('script.ran', { script: 'tick', exitCode: 0 }));
    const bad = await agent.waitForLog(event('blob.bad_bytes', { mirror: a.url }));
    expect(bad.code).toBe('BLOB_DIGEST_MISMATCH');
    const fetched = await agent.waitForLog(event('blob.fetched', { blob: hex }));
    expect(fetched.mirror).toBe(bm.url);

    expect(await lines(c.marker)).toEqual(['ran']);
    expect((await agentStatus(c.state)).active).toEqual({ publisher: 'acme-ops', sequence: 1 });
    const cache = await snapshotDir(join(c.state, 'cache'));
    const blobs = Object.entries(cache).filter(([p]) => p.startsWith('blobs/sha256/'));
    expect(blobs.length).toBe(3);
    for (const [p, modeHash] of blobs) expect(modeHash.split(':')[1]).toBe(p.slice('blobs/sha256/'.length));
    expect(Object.keys(cache).filter((p) => !p.startsWith('blobs/'))).toEqual([]); // no partial download left

    // A served bad bytes, so it stays backed off (the agent's first back-off is 5 s) and the next
    // cycles ask B. (Fails today: syncOnce's markGood after a successful sync with A clears the
    // back-off that fetchBlob had just set for A's bad blob.)
    await agent.waitForLog(event('agent.cycle', { sync: 'updated' }));
    const fromA = await manifestRequests(a.url);
    const fromB = await manifestRequests(bm.url);
    await agent.nextLog(event('agent.cycle'));
    await agent.nextLog(event('agent.cycle'));
    expect(await manifestRequests(bm.url)).toBeGreaterThan(fromB);
    expect(await manifestRequests(a.url)).toBe(fromA);
    expect(await agent.stop()).toEqual({ code: 0, signal: null });
    await a.stop();
    await bm.stop();
  });
});

/** A mirror under an attacker's control: the real root chain, and whatever manifest the test sets. */
async function hostileMirror(rootPath: string) {
  const root = JSON.parse(await readFile(rootPath, 'utf8')) as unknown;
  let manifest = Buffer.alloc(0);
  const requests: string[] = [];
  const server: Server = createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    req.resume();
    if (req.method === 'GET' && req.url === '/v1/root') {
      res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify([root]));
    } else if (req.method === 'GET' && req.url === '/v1/manifest') {
      res.writeHead(200, { 'Content-Type': 'application/json' }).end(manifest);
    } else {
      res.writeHead(404, { 'Content-Type': 'application/json' }).end('{"code":"NOT_FOUND","message":"no"}');
    }
  });
  server.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    serve: (bytes: Buffer | string) => {
      manifest = Buffer.from(bytes);
    },
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

describe('ferry agent poll --now against a hostile mirror', () => {
  it('refuses rollback, expired, foreign-site and unauthorised manifests and changes nothing', async () => {
    const c = await newCase('hostile');
    const b1 = await bundle(c, 1, 'once');
    const b2 = await bundle(c, 2, 'once', `${CONF}# release 2\n`);
    await importInto(c.data, b1.file, w.rootPath);
    await importInto(c.data, b2.file, w.rootPath);
    const good = await startMirrorAt(c.data, 0, OPEN_ENROLMENT);
    const first = await runFerry([
      'agent',
      'poll',
      '--now',
      ...agentArgs(c, [good.url]).filter((a) => a !== '--interval' && a !== '1'),
      '--json',
    ]);
    expect(first.code, first.stderr).toBe(0);
    expect(JSON.parse(first.stdout)).toMatchObject({
      ok: true,
      sync: { kind: 'updated', sequence: 2 },
      sequence: 2,
    });
    await good.stop();
    expect(await lines(c.marker)).toEqual(['ran']);
    expect(await readFile(c.conf, 'utf8')).toBe(`${CONF}# release 2\n`);

    const stateNow = async () => {
      const s = JSON.parse(await readFile(join(c.state, 'state.json'), 'utf8')) as {
        active: unknown;
        roots: unknown;
        etag: unknown;
        scripts: unknown;
        trust: unknown;
      };
      return {
        active: s.active,
        roots: s.roots,
        etag: s.etag,
        scripts: s.scripts,
        trust: s.trust, // the one sequence mark and the signed time seen
      };
    };
    const files = async () => ({
      marker: await readFile(c.marker),
      conf: await readFile(c.conf),
      confMode: await modeOf(c.conf),
      cache: await snapshotDir(join(c.state, 'cache')),
    });
    const before = { state: await stateNow(), files: await files() };

    const stranger = await makeKey(join(c.dir, 'keys'), 'stranger');
    const m2 = b2.manifest;
    const craft = (over: Record<string, unknown>, signers: Signer[] = [w.bundleKey]) =>
      serializeEnvelope(
        signEnvelope(MANIFEST_PAYLOAD_TYPE, Buffer.from(JSON.stringify({ ...m2, ...over })), signers),
      );
    const day = 86_400_000;
    const cases: [string, string | Buffer, string][] = [
      ['sequence 1, genuinely signed', b1.envelopeBytes, 'SEQUENCE_ROLLBACK'],
      // one sequence space: a new publisher label does not start a new count
      [
        'sequence 1 naming a new publisher',
        craft({ publisher: 'new-ops', sequence: 1 }),
        'SEQUENCE_ROLLBACK',
      ],
      [
        'expired sequence 3',
        craft({ sequence: 3, created: isoUtc(Date.now() - 2 * day), expires: isoUtc(Date.now() - day) }),
        'MANIFEST_EXPIRED',
      ],
      ['sequence 3 for ship-3', craft({ sequence: 3, sites: ['ship-3'] }), 'SITE_MISMATCH'],
      ['sequence 3 signed by a stranger', craft({ sequence: 3 }, [stranger]), 'SIGNATURE_THRESHOLD'],
      [
        'a different sequence 2, genuinely signed',
        craft({ publisher: m2.publisher, pins: { 'group:web': '9.9.9' } }),
        'EQUIVOCATION',
      ],
    ];

    const hostile = await hostileMirror(w.rootPath);
    try {
      for (const [what, bytes, code] of cases) {
        hostile.serve(bytes);
        const served = hostile.requests.length;
        const r = await runFerry([
          'agent',
          'poll',
          '--now',
          '--state',
          c.state,
          '--mirror',
          hostile.url,
          '--json',
        ]);
        expect(r.code, `${what}: a refused update exits 1 (${r.stderr})`).toBe(1);
        const out = JSON.parse(r.stdout) as {
          ok: boolean;
          sync: { kind: string; code?: string };
          sequence: number;
        };
        expect(out, what).toMatchObject({ ok: false, code, sync: { kind: 'refused', code }, sequence: 2 });
        expect(hostile.requests.slice(served), what).toContain('GET /v1/manifest');
        expect({ state: await stateNow(), files: await files() }, what).toEqual(before);
      }
    } finally {
      await hostile.close();
    }
  });
});

describe('ferry agent run with an interpreter allowlist that leaves out sh', () => {
  it('refuses the sh script, never runs it, and reports the refusal', async () => {
    const c = await newCase('allowlist');
    const b = await bundle(c, 1, 'once');
    await importInto(c.data, b.file, w.rootPath);
    const mirror = await startMirrorAt(c.data, 0, OPEN_ENROLMENT);
    const agent = startAgent(agentArgs(c, [mirror.url], ['--allow-interpreter', 'bash']));
    const agentId = String((await agent.waitForLog(event('agent.enrolled'))).agentId);
    const refused = await agent.waitForLog(event('script.refused', { script: 'tick' }));
    expect(refused.code).toBe('INTERPRETER_NOT_ALLOWED');
    const hb = await eventually('a heartbeat carrying the refusal', async () =>
      (await heartbeatsOf(c.data, agentId)).find((h) => h.payload.results.length > 0),
    );
    expect(hb.payload.results).toEqual([
      expect.objectContaining({
        script: 'tick',
        exitCode: null,
        refused: expect.objectContaining({ code: 'INTERPRETER_NOT_ALLOWED' }) as unknown,
      }),
    ]);
    await agent.nextLog(event('agent.cycle'));
    await agent.nextLog(event('agent.cycle'));
    expect(await agent.stop()).toEqual({ code: 0, signal: null });
    expect(await exists(c.marker)).toBe(false);
    expect(agent.logs.filter(event('script.ran'))).toEqual([]);
    expect(agent.logs.filter(event('script.refused'))).toHaveLength(1); // a refused once script is not retried
    // the rest of the policy still applies
    expect(await readFile(c.conf, 'utf8')).toBe(CONF);
    await mirror.stop();
  });
});
