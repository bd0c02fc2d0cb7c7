/**
 * The mirror's bundle link to the server: a real `ferry server start`, real `ferry mirror serve
 * --upstream` processes. The server builds a site bundle, the mirror fetches it over its signed
 * link and serves it; a cut link resumes where it broke; a hostile server (another site's bundle,
 * a rollback, a tampered byte, an unknown signer) changes nothing in the mirror's store; the server
 * refuses unregistered, other-site, replayed and expired requests with a code; an upstream that is
 * a mirror answers 404 and the link stays quiet.
 */
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createConnection, createServer, type Socket } from 'node:net';
import { copyFile, mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LINK_AUTH_HEADER, signLinkRequest } from '../core/link-auth.js';
import { loadPrivateKey } from '../platform/keyfile.js';
import { buildBundle, ferry, makeKey, snapshotDir, tempDir, type RunResult } from './helpers/fixtures.js';
import { eventually } from './helpers/agent-proc.js';
import { startMirrorProc, type MirrorProc } from './helpers/mirror-proc.js';
import { startServerProc, type ServerProc } from './helpers/server-proc.js';
import { useWorld } from './helpers/world.js';

const w = useWorld();
let dir: string;
let cleanup: () => Promise<void>;
let serverData: string;
let server: ServerProc;
let mirrorData: string;
let mirrorId: string;
const procs: { stop(): Promise<unknown> }[] = [];

const ok = async (args: string[]): Promise<RunResult> => {
  const r = await ferry(args);
  expect(r.code, r.stdout + r.stderr).toBe(0);
  return r;
};

interface LinkStatus {
  state: string;
  lastCheckAt: string | null;
  lastError: { code: string } | null;
  lastImported: { sequence: number } | null;
}
async function status(data: string): Promise<{ active: { sequence: number } | null; link?: LinkStatus }> {
  const r = await ok(['mirror', 'status', '--data', data, '--json']);
  const j = JSON.parse(r.stdout) as {
    active: { sequence: number } | null;
    telemetry?: { upstreamBundles?: LinkStatus };
  };
  return { active: j.active, ...(j.telemetry?.upstreamBundles && { link: j.telemetry.upstreamBundles }) };
}

/** The store as a refusal must leave it, and the link's staging dir. */
async function storeOf(data: string) {
  return {
    blobs: await snapshotDir(join(data, 'blobs')),
    manifests: await snapshotDir(join(data, 'manifests')),
    state: createHash('sha256')
      .update(await readFile(join(data, 'state.json')))
      .digest('hex'),
    staging: await readdir(join(data, 'upstream/staging')).catch(() => []),
  };
}

async function release(version: string, fill: number, tools: number | Buffer = 300_000): Promise<void> {
  const d = join(dir, `rel-${version}`);
  await mkdir(d, { recursive: true });
  await writeFile(join(d, 'ferry-agent'), Buffer.alloc(40_000, fill));
  await writeFile(join(d, 'tools.tar'), typeof tools === 'number' ? randomBytes(tools) : tools);
  await writeFile(
    join(d, 'release.json'),
    JSON.stringify({
      name: 'fleet',
      version,
      artifacts: [
        { name: 'ferry-agent', kind: 'agent', version, platform: 'linux-x64', path: 'ferry-agent' },
        {
          name: 'tools',
          kind: 'file',
          version: typeof tools === 'number' ? version : 'shared',
          path: 'tools.tar',
        },
      ],
    }),
  );
  await ok(['server', 'release', 'add', '--data', serverData, '--spec', join(d, 'release.json')]);
}

const serverBundle = (rel: string, extra: string[] = ['--full']) =>
  ok([
    'server',
    'bundle',
    '--data',
    serverData,
    '--site',
    'plant-7',
    '--release',
    rel,
    '--strategy',
    'immediate',
    ...extra,
  ]);

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('ferry-upstream-'));
  serverData = join(dir, 'server');
  mirrorData = join(dir, 'mirror');
  await ok(['server', 'site', 'add', '--data', serverData, '--name', 'plant-7', '--publisher', 'acme-ops']);
  await mkdir(join(serverData, 'signing'), { recursive: true });
  await copyFile(join(w.keyDir, 'release.key'), join(serverData, 'signing/bundle.key'));
  await ok(['mirror', 'identity', '--data', mirrorData, '--out', join(dir, 'mirror.pub')]);
  const reg = await ok([
    'server',
    'register-mirror',
    '--data',
    serverData,
    '--site',
    'plant-7',
    '--pub',
    join(dir, 'mirror.pub'),
    '--json',
  ]);
  mirrorId = (JSON.parse(reg.stdout) as { mirror: string }).mirror;
  await release('1.0.0', 1);
  server = await startServerProc(serverData);
  procs.push(server);
}, 120_000);
afterAll(async () => {
  for (const p of procs.reverse()) await p.stop();
  await cleanup();
});

describe("the mirror's bundle link to the server", () => {
  it('fetches the signed bundle the server built, serves it, and the server records the fetch', async () => {
    await serverBundle('fleet@1.0.0');
    const m: MirrorProc = await startMirrorProc({
      data: mirrorData,
      trust: w.rootPath,
      site: 'plant-7',
      args: ['--upstream', server.url, '--upstream-interval', '0.5'],
    });
    procs.push(m);
    const imported = await m.waitForLog((l) => l.event === 'upstream_bundles.imported', 60_000);
    expect(imported).toMatchObject({ sequence: 1, status: 'active' });
    const manifest = await fetch(`${m.url}/v1/manifest`);
    expect(manifest.status).toBe(200);
    const s = await status(mirrorData);
    expect(s.active?.sequence).toBe(1);
    expect(s.link).toMatchObject({ state: 'idle', lastError: null, lastImported: { sequence: 1 } });
    // the server: "fetched by mirror M at T" on the bundle and in the audit log
    const rec = await eventually('the fetch on the bundle record', async () => {
      const c = JSON.parse(await readFile(join(serverData, 'catalog.json'), 'utf8')) as {
        bundles: { sequence: number; fetches?: { mirror: string }[] }[];
      };
      return c.bundles.find((b) => b.sequence === 1 && b.fetches?.length);
    });
    expect(rec.fetches![0]!.mirror).toBe(mirrorId);
    expect(await readFile(join(serverData, 'audit/log.jsonl'), 'utf8')).toMatch(/"action":"bundle.fetched"/);
    // and on the bundles list of the API
    const token = (
      await ok(['server', 'token', 'create', '--data', serverData, '--user', 'admin'])
    ).stdout.trim();
    const listed = (await (
      await fetch(`${server.url}/v1/bundles`, { headers: { authorization: `Bearer ${token}` } })
    ).json()) as { bundles: { sequence: number; fetches?: { mirror: string; at: string }[] }[] };
    expect(listed.bundles.find((b) => b.sequence === 1)?.fetches?.[0]).toMatchObject({ mirror: mirrorId });

    // an unsigned bundle (waiting for the signing station) is never offered
    await serverBundle('fleet@1.0.0', ['--full', '--unsigned']);
    const t0 = new Date().toISOString();
    const later = await eventually('two more checks', async () => {
      const x = await status(mirrorData);
      return x.link?.lastCheckAt && x.link.lastCheckAt > t0 && x.link.state === 'idle' ? x : undefined;
    });
    expect(later.active?.sequence).toBe(1);
    await m.stop();
  }, 120_000);

  it('resumes a download the link broke, from where it broke', async () => {
    await release('1.1.0', 2, 6 * 1024 * 1024);
    await serverBundle('fleet@1.1.0');
    const link = await slowLink(server.url, 1024 * 1024);
    const m = await startMirrorProc({
      data: mirrorData,
      args: ['--upstream', link.url, '--upstream-interval', '0.5', '--retry-max', '1'],
    });
    procs.push(m);
    await link.cutAfter;
    await m.waitForLog((l) => l.event === 'upstream_bundles.failed', 60_000);
    link.restore();
    const done = await m.waitForLog((l) => l.event === 'upstream_bundles.downloaded', 60_000);
    expect(done.resumedFrom as number).toBeGreaterThan(0);
    expect(done.received as number).toBeLessThan(done.bytes as number);
    const imported = await m.waitForLog((l) => l.event === 'upstream_bundles.imported', 60_000);
    expect(imported).toMatchObject({ sequence: 3, status: 'active' });
    expect((await storeOf(mirrorData)).staging).toEqual([]);
    await m.stop();
    await link.close();
  }, 120_000);
});

describe('a delta over the link', () => {
  it('imports at the mirror that holds what it leaves out; a mirror lacking a blob refuses it, unchanged', async () => {
    // the mirror's inventory comes home by courier, and the next bundle leaves out what it holds
    const exp = join(dir, 'export-1.jsonl');
    await ok(['mirror', 'export-telemetry', '--data', mirrorData, '--out', exp]);
    await server.stop(); // the courier's import takes the data directory for itself
    const imp = await ok(['server', 'import-telemetry', exp, '--data', serverData, '--json']);
    expect(JSON.parse(imp.stdout)).toMatchObject({ inventory: { status: 'kept' } });
    server = await startServerProc(serverData);
    procs.push(server);
    const token = (
      await ok(['server', 'token', 'create', '--data', serverData, '--user', 'admin'])
    ).stdout.trim();
    const sites = (await (
      await fetch(`${server.url}/v1/sites`, { headers: { authorization: `Bearer ${token}` } })
    ).json()) as { sites: { name: string; inventory?: { mirror: string; active: number } }[] };
    expect(sites.sites.find((x) => x.name === 'plant-7')?.inventory).toMatchObject({
      mirror: mirrorId,
      active: 3,
    });
    await release('1.2.0', 3, await readFile(join(dir, 'rel-1.1.0/tools.tar')));
    const built = JSON.parse((await serverBundle('fleet@1.2.0', ['--json'])).stdout) as {
      bundle: { sequence: number; delta?: { omitted: number } };
    };
    expect(built.bundle.delta?.omitted, JSON.stringify(built)).toBe(1);
    // a mirror of the site that holds none of it (registered, so the server answers it)
    const bare = join(dir, 'bare');
    await ok(['mirror', 'identity', '--data', bare, '--out', join(dir, 'bare.pub')]);
    await ok([
      'server',
      'register-mirror',
      '--data',
      serverData,
      '--site',
      'plant-7',
      '--pub',
      join(dir, 'bare.pub'),
    ]);
    const b = await startMirrorProc({
      data: bare,
      trust: w.rootPath,
      site: 'plant-7',
      args: ['--upstream', server.url, '--upstream-interval', '0.5'],
    });
    procs.push(b);
    const before = await storeOf(bare);
    const refused = await b.waitForLog(
      (l) => l.event === 'upstream_bundles.failed' && l.code === 'DELTA_INCOMPLETE',
      60_000,
    );
    expect(String(refused.reason)).toMatch(/full/);
    expect(await storeOf(bare)).toEqual({ ...before, staging: [] });
    expect((await status(bare)).link?.lastError?.code).toBe('DELTA_INCOMPLETE');
    await b.stop();
    // the mirror whose inventory it was completes it
    const m = await startMirrorProc({
      data: mirrorData,
      args: ['--upstream', server.url, '--upstream-interval', '0.5'],
    });
    procs.push(m);
    const imported = await m.waitForLog((l) => l.event === 'upstream_bundles.imported', 60_000);
    expect(imported).toMatchObject({ sequence: built.bundle.sequence, status: 'active', missing: 0 });
    await m.stop();
  }, 120_000);
});

describe('a hostile server over the link', () => {
  it("changes nothing in the mirror's store: another site, a rollback, a tampered byte, an unknown signer", async () => {
    const data = join(dir, 'victim');
    const first = join(dir, 'good-2.ferry');
    await buildBundle(w, first, { spec: { sequence: 2 } });
    await ok(['mirror', 'import', first, '--data', data, '--trust', w.rootPath, '--site', 'plant-7']);
    const fake = await fakeServer();
    const m = await startMirrorProc({
      data,
      args: ['--upstream', fake.url, '--upstream-interval', '0.3', '--retry-max', '1'],
    });
    procs.push(m);
    const attack = async (file: string, code: RegExp, tamper?: (b: Buffer) => void) => {
      const bytes = await readFile(file);
      tamper?.(bytes);
      const before = await storeOf(data);
      fake.offer(bytes);
      const refused = await m.nextLog(
        (l) => l.event === 'upstream_bundles.failed' && code.test(String(l.code)),
        60_000,
      );
      fake.offer(null);
      expect(refused.code).toMatch(code);
      expect(await storeOf(data)).toEqual(before);
      const s = await status(data);
      expect(s.link?.lastError?.code).toMatch(code);
      expect(s.active?.sequence).toBe(2);
    };
    const other = join(dir, 'other-site.ferry');
    await buildBundle(w, other, { spec: { sequence: 9, sites: ['ship-3'] } });
    await attack(other, /SITE/);
    const older = join(dir, 'older.ferry');
    await buildBundle(w, older, { spec: { sequence: 1 } });
    await attack(older, /ROLLBACK|SEQUENCE/);
    const good = join(dir, 'good-3.ferry');
    await buildBundle(w, good, { spec: { sequence: 3 } });
    // the last byte of the last blob's content (just before its padding and the end blocks)
    await attack(good, /DIGEST/, (b) => {
      const at = b.lastIndexOf(Buffer.from('"type":"ferry.policy/v1"'));
      b[at + 2]! ^= 1;
    });
    const rogue = await makeKey(join(dir, 'rogue'), 'rogue');
    const unsigned = join(dir, 'rogue.ferry');
    await buildBundle(w, unsigned, { spec: { sequence: 4 }, signers: [rogue] });
    await attack(unsigned, /SIGNATURE|THRESHOLD/);
    // and the honest bundle still goes through the same link
    fake.offer(await readFile(good));
    await m.nextLog((l) => l.event === 'upstream_bundles.imported', 60_000);
    await m.stop();
    await fake.close();
  }, 180_000);
});

describe('the server answers only a registered mirror of the site', () => {
  const ask = async (
    key: Awaited<ReturnType<typeof loadPrivateKey>>,
    o: Partial<Parameters<typeof signLinkRequest>[0]> & { path?: string; send?: string } = {},
  ) => {
    const path = o.path ?? '/v1/link/bundles?after=0';
    const header = signLinkRequest(
      {
        mirror: o.mirror ?? mirrorId,
        site: o.site ?? 'plant-7',
        method: 'GET',
        path,
        nonce: o.nonce ?? randomBytes(16).toString('hex'),
        now: o.now ?? Date.now(),
      },
      key,
    );
    const res = await fetch(server.url + (o.send ?? path), { headers: { [LINK_AUTH_HEADER]: header } });
    return { status: res.status, body: (await res.json()) as { code?: string; bundle?: unknown }, header };
  };

  it('refuses unregistered, other-site, replayed, expired, forged and misdirected requests with a code', async () => {
    const catalog = () => readFile(join(serverData, 'catalog.json'), 'utf8');
    const before = await catalog();
    const key = await loadPrivateKey(join(mirrorData, 'identity/mirror.key'));
    const good = await ask(key);
    expect(good.status).toBe(200);
    expect(good.body.bundle).toMatchObject({ id: expect.stringMatching(/^plant-7-\d+$/) as string });
    // replayed: the same signed header again
    const again = await fetch(`${server.url}/v1/link/bundles?after=0`, {
      headers: { [LINK_AUTH_HEADER]: good.header },
    });
    expect(again.status).toBe(401);
    expect(((await again.json()) as { code: string }).code).toBe('REPLAY');
    // expired: made ten minutes ago
    expect((await ask(key, { now: Date.now() - 10 * 60_000 })).body.code).toBe('REQUEST_EXPIRED');
    // signed for one request, sent as another
    expect((await ask(key, { send: '/v1/link/bundles?after=2' })).body.code).toBe('LINK_AUTH_INVALID');
    // no header at all
    const none = await fetch(`${server.url}/v1/link/bundles?after=0`);
    expect(((await none.json()) as { code: string }).code).toBe('LINK_AUTH_MISSING');
    // an unregistered mirror
    await ok(['mirror', 'identity', '--data', join(dir, 'stranger')]);
    const stranger = await loadPrivateKey(join(dir, 'stranger/identity/mirror.key'));
    const sid = createHash('sha256').update(stranger.publicKey).digest('hex').slice(0, 32);
    expect((await ask(stranger, { mirror: sid })).body.code).toBe('UNKNOWN_MIRROR');
    // a registered mirror's id with another key's signature
    expect((await ask(stranger)).body.code).toBe('BAD_SIGNATURE');
    // another site's mirror: refused for this site, and offered none of this site's bundles
    await ok(['server', 'site', 'add', '--data', serverData, '--name', 'ship-3']);
    await ok(['mirror', 'identity', '--data', join(dir, 'ship'), '--out', join(dir, 'ship.pub')]);
    const reg = await ok([
      'server',
      'register-mirror',
      '--data',
      serverData,
      '--site',
      'ship-3',
      '--pub',
      join(dir, 'ship.pub'),
      '--json',
    ]);
    const shipId = (JSON.parse(reg.stdout) as { mirror: string }).mirror;
    const ship = await loadPrivateKey(join(dir, 'ship/identity/mirror.key'));
    expect((await ask(ship, { mirror: shipId })).body.code).toBe('WRONG_SITE');
    const own = await ask(ship, { mirror: shipId, site: 'ship-3' });
    expect(own.body).toEqual({ bundle: null });
    const steal = await ask(ship, { mirror: shipId, site: 'ship-3', path: '/v1/link/bundles/plant-7-1' });
    expect(steal.status).toBe(404);
    expect(steal.body.code).toBe('UNKNOWN_BUNDLE');
    // the bundle form of the API refuses bad delta options with a code
    const token = (
      await ok(['server', 'token', 'create', '--data', serverData, '--user', 'admin'])
    ).stdout.trim();
    const post = async (body: unknown) => {
      const res = await fetch(`${server.url}/v1/bundles`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      return { status: res.status, code: ((await res.json()) as { code?: string }).code };
    };
    const base = { site: 'plant-7', release: 'fleet@1.0.0' };
    expect(await post({ ...base, full: 'yes' })).toEqual({ status: 400, code: 'BAD_INPUT' });
    expect(await post({ ...base, volumeSize: '4G' })).toEqual({ status: 400, code: 'BAD_INPUT' });
    expect(await post({ ...base, volumeSize: 100 })).toEqual({ status: 400, code: 'BAD_INPUT' });
    // nothing of it was recorded
    const after = JSON.parse(await catalog()) as { bundles: unknown[] };
    expect(after.bundles).toEqual((JSON.parse(before) as { bundles: unknown[] }).bundles);
  });

  it('an upstream that is a mirror answers 404: the link says so, no error', async () => {
    const relay = await startMirrorProc({ data: join(dir, 'relay'), trust: w.rootPath, site: 'plant-7' });
    procs.push(relay);
    const m = await startMirrorProc({
      data: join(dir, 'leaf'),
      trust: w.rootPath,
      site: 'plant-7',
      args: ['--upstream', relay.url, '--upstream-interval', '0.5'],
    });
    procs.push(m);
    const s = await eventually('the link to find a mirror', async () => {
      const x = await status(join(dir, 'leaf'));
      return x.link?.state === 'not-a-server' ? x : undefined;
    });
    expect(s.link?.lastError).toBeNull();
    await m.stop();
    await relay.stop();
  }, 60_000);
});

/**
 * A TCP relay that forwards the server's answer at about 2 MB/s and cuts every connection once
 * `cutAt` bytes have passed (like a pulled cable), until `restore()`.
 */
async function slowLink(target: string, cutAt: number) {
  const t = new URL(target);
  const sockets = new Set<Socket>();
  let passed = 0;
  let cut = false;
  let onCut!: () => void;
  const cutAfter = new Promise<void>((r) => (onCut = r));
  const srv = createServer((client) => {
    if (cut) {
      client.destroy();
      return;
    }
    const up = createConnection({ host: t.hostname, port: Number(t.port) });
    sockets.add(client).add(up);
    const drop = () => {
      client.destroy();
      up.destroy();
    };
    client.on('error', drop).on('close', drop);
    up.on('error', drop).on('close', drop);
    client.pipe(up);
    up.on('data', (chunk: Buffer) => {
      up.pause();
      passed += chunk.length;
      client.write(chunk);
      if (!cut && passed >= cutAt) {
        cut = true;
        for (const s of sockets) s.destroy();
        sockets.clear();
        onCut();
        return;
      }
      setTimeout(() => up.resume(), Math.ceil(chunk.length / 2048));
    });
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const port = (srv.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}`,
    cutAfter,
    restore: () => {
      cut = false;
      passed = -Infinity; // never cut again
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => srv.close(r));
    },
  };
}

/** A server that speaks the link protocol and hands out whatever bundle bytes it is given. */
async function fakeServer() {
  let offer: Buffer | null = null;
  const srv: Server = createHttpServer((req, res) => {
    const send = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (req.url?.startsWith('/v1/link/bundles?')) {
      if (!offer) return send(200, { bundle: null });
      return send(200, {
        bundle: {
          id: 'plant-7-99',
          sequence: 99,
          bytes: offer.length,
          sha256: createHash('sha256').update(offer).digest('hex'),
        },
      });
    }
    if (req.url === '/v1/link/bundles/plant-7-99' && offer) {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': offer.length });
      return res.end(offer);
    }
    send(404, { code: 'NOT_FOUND', message: 'no' });
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  return {
    url: `http://127.0.0.1:${(srv.address() as { port: number }).port}`,
    offer: (b: Buffer | null) => (offer = b),
    close: () => new Promise((r) => srv.close(r)),
  };
}
