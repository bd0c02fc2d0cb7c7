/**
 * Bundle sync between peer mirrors, in process against real stores and real
 * loopback HTTP: honest peers are the mirror's own HTTP app over a store;
 * hostile peers are plain servers that serve what a compromised mirror could
 * (an older or equivocating manifest, one for another site or signed by a key
 * the root does not know, an expired one, a tampered blob, a body that never
 * ends, a trickle). Each refusal must back the peer off and leave the
 * syncing mirror's data directory exactly as it was.
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createReadStream } from 'node:fs';
import { mkdtemp, readFile, readdir, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readBundle } from '../core/bundle/reader.js';
import { createHandler } from '../mirror/http/app.js';
import { offerSource } from '../mirror/bundle-source.js';
import { importBundle, importFrom } from '../mirror/import.js';
import { PeerSync, type PeerSyncOptions } from '../mirror/peers.js';
import { parsePeersFile, peerList } from '../mirror/peer-list.js';
import { Store } from '../mirror/store.js';
import { fileSource } from '../platform/fsx.js';
import { nodeTransport } from '../platform/http/transport.js';
import { throttledTransport } from '../platform/http/throttle.js';
import { createLogger } from '../platform/log.js';
import {
  buildBundle,
  ferry,
  makeKey,
  makeWorld,
  SAMPLE_ARTIFACTS,
  snapshotDir,
  type ArtifactInput,
  type World,
} from './helpers/fixtures.js';
import { killStrays, sha256, sha256File, startMirrorProc } from './helpers/mirror-proc.js';

let w: World;
const servers: Server[] = [];
const quiet = createLogger({ component: 'test', write: () => undefined });
const transport = nodeTransport({ maxSockets: 8 });

/** Bundles every test draws from: seq 1, seq 2 (with a 3 MiB artifact), and hostile variants. */
const b: Record<string, string> = {};
const BIG = randomBytes(3 * 1024 * 1024);
const RELEASE_2: ArtifactInput[] = [
  ...SAMPLE_ARTIFACTS,
  { name: 'big-data', kind: 'file', content: BIG },
  { name: 'small-1', kind: 'file', content: randomBytes(200_000) },
  { name: 'small-2', kind: 'file', content: randomBytes(300_000) },
];

beforeAll(async () => {
  w = await makeWorld();
  const out = (n: string) => join(w.dir, `${n}.ferry`);
  await buildBundle(w, (b.seq1 = out('seq1')), { spec: { sequence: 1 } });
  await buildBundle(w, (b.seq2 = out('seq2')), { spec: { sequence: 2 }, artifacts: RELEASE_2 });
  await buildBundle(w, (b.seq3 = out('seq3')), {
    spec: { sequence: 3 },
    artifacts: [...RELEASE_2, { name: 'small-3', kind: 'file', content: randomBytes(1000) }],
  });
  await buildBundle(w, (b.equivocal = out('equivocal')), {
    spec: { sequence: 2, publisher: 'someone-else' },
  });
  await buildBundle(w, (b.otherSite = out('other-site')), { spec: { sequence: 3, sites: ['plant-9'] } });
  const stranger = await makeKey(join(w.dir, 'stranger'), 'stranger');
  await buildBundle(w, (b.unknownSigner = out('unknown-signer')), {
    spec: { sequence: 3 },
    signers: [stranger],
  });
  await buildBundle(w, (b.expired = out('expired')), {
    spec: { sequence: 3, expires: '1d' },
    now: Date.now() - 3 * 86_400_000,
  });
}, 60_000);

afterAll(async () => {
  for (const s of servers) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
  await transport.close();
  await killStrays();
  await w.cleanup();
});

async function listen(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<string> {
  const s = createServer(handler);
  servers.push(s);
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  return `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
}

async function newStore(...bundles: string[]): Promise<Store> {
  const dir = await mkdtemp(join(w.dir, 'data-'));
  const store = await Store.open(dir, { init: { rootBytes: await readFile(w.rootPath), site: 'plant-7' } });
  for (const f of bundles) expect((await importBundle(store, f)).ok).toBe(true);
  return store;
}

/** An honest peer: the mirror's own HTTP app over a store holding `bundles`. */
async function honestPeer(...bundles: string[]): Promise<{ url: string; store: Store }> {
  const store = await newStore(...bundles);
  return { url: await listen(createHandler({ store })), store };
}

type BlobMode = 'honest' | 'tamper' | 'endless' | 'trickle';

/**
 * A hostile peer serving one bundle file's manifest (exact bytes, whatever it
 * is), the trust root, an inventory naming every blob, and blobs as `mode` says.
 */
async function hostilePeer(bundle: string, mode: BlobMode = 'honest') {
  const blobs = new Map<string, Buffer>();
  const parts = new Map<string, Buffer[]>();
  const c = await readBundle(fileSource(bundle), {
    openBlob: (d) => {
      parts.set(d, []);
      return Promise.resolve({
        write: (x: Buffer) => void parts.get(d)!.push(Buffer.from(x)),
        commit: () => Promise.resolve(void blobs.set(d, Buffer.concat(parts.get(d)!))),
        abort: () => Promise.resolve(),
      });
    },
  });
  const rootEnv: unknown = JSON.parse(await readFile(w.rootPath, 'utf8'));
  const seen = { blobRequests: 0 };
  const url = await listen((req, res) => {
    const path = req.url ?? '';
    if (path === '/v1/manifest') {
      res.writeHead(200, { etag: `"${sha256(c.envelopeBytes)}"`, 'content-type': 'application/json' });
      return res.end(c.envelopeBytes);
    }
    if (path === '/v1/root') return res.end(JSON.stringify([rootEnv]));
    if (path === '/v1/inventory') return res.end(JSON.stringify({ blobs: [...blobs.keys()] }));
    const m = /^\/v1\/blobs\/sha256\/([0-9a-f]{64})$/.exec(path);
    const body = m && blobs.get(m[1]!);
    if (!body) return res.writeHead(404).end();
    seen.blobRequests++;
    if (mode === 'tamper') {
      const bad = Buffer.from(body);
      bad.writeUInt8(bad.readUInt8(bad.length >> 1) ^ 0xff, bad.length >> 1);
      res.writeHead(200, { 'content-length': bad.length });
      return res.end(bad);
    }
    if (mode === 'endless') {
      res.writeHead(200); // chunked, no declared length: the right bytes, then more, forever
      res.write(body);
      const more = () => {
        if (!res.destroyed && res.write(Buffer.alloc(64 * 1024))) setImmediate(more);
        else if (!res.destroyed) res.once('drain', more);
      };
      return more();
    }
    if (mode === 'trickle') {
      res.writeHead(200, { 'content-length': body.length });
      let i = 0;
      const t = setInterval(() => {
        if (res.destroyed || i >= body.length) return clearInterval(t);
        res.write(body.subarray(i, i + 16));
        i += 16;
      }, 50);
      return;
    }
    res.writeHead(200, { 'content-length': body.length });
    res.end(body);
  });
  return { url, seen };
}

function sync(store: Store, peers: string[], more: Partial<PeerSyncOptions> = {}): PeerSync {
  return new PeerSync({
    store,
    peers: () => Promise.resolve(peers),
    transport,
    log: quiet,
    backoffBaseMs: 60_000,
    backoffMaxMs: 60_000,
    ...more,
  });
}

/** Every blob file is named by its own digest. */
async function blobsAreSound(store: Store): Promise<number> {
  const names = await readdir(store.paths.blobs);
  for (const n of names) expect(await sha256File(join(store.paths.blobs, n))).toBe(n);
  return names.length;
}

const activeBytes = async (s: Store) => s.readManifestBytes((await s.readState()).active!);

describe('bundle sync from an honest peer', () => {
  it('adopts a newer manifest with every blob it names, byte for byte, through the import', async () => {
    const a = await honestPeer(b.seq1!, b.seq2!);
    const mine = await newStore(b.seq1!);
    const r = await sync(mine, [a.url]).round();
    expect(r).toMatchObject({ ok: true, sequence: 2, status: 'active', file: `peer ${a.url}` });
    expect(await activeBytes(mine)).toEqual(await activeBytes(a.store));
    expect(await blobsAreSound(mine)).toBe(RELEASE_2.length);
    // Recorded as an import like any other, and nothing left in tmp/.
    expect((await mine.readState()).imports.at(-1)).toMatchObject({ file: `peer ${a.url}`, sequence: 2 });
    expect(await readdir(mine.paths.peerPulls)).toEqual([]);
  });

  it('asks an unchanged peer with If-None-Match and pulls nothing more', async () => {
    const a = await honestPeer(b.seq2!);
    const mine = await newStore();
    const s = sync(mine, [a.url]);
    expect(await s.round()).toMatchObject({ ok: true, sequence: 2 });
    const before = await snapshotDir(mine.dir);
    expect(await s.round()).toBeUndefined();
    expect(s.status()[0]).toMatchObject({ link: 'up', sequence: 2, offer: 'same', backoffUntil: null });
    expect(await snapshotDir(mine.dir)).toEqual(before);
  });

  it('pulls different blobs from different peers at once, least busy first', async () => {
    const a1 = await honestPeer(b.seq2!);
    const a2 = await honestPeer(b.seq2!);
    const mine = await newStore();
    const s = sync(mine, [a1.url, a2.url], { parallel: 4 });
    expect(await s.round()).toMatchObject({ ok: true, status: 'active' });
    const [p1, p2] = s.status();
    expect(p1!.received).toBeGreaterThan(0);
    expect(p2!.received).toBeGreaterThan(0);
    await blobsAreSound(mine);
  });
});

describe('a peer can never make a mirror accept what its own root refuses', () => {
  const cases: [string, () => string, string][] = [
    ['the same sequence with other content (equivocation)', () => b.equivocal!, 'EQUIVOCATION'],
    ['a manifest for another site', () => b.otherSite!, 'SITE_MISMATCH'],
    ['a manifest signed by a key the root does not know', () => b.unknownSigner!, 'SIGNATURE_THRESHOLD'],
    ['an expired manifest', () => b.expired!, 'MANIFEST_EXPIRED'],
  ];
  for (const [what, bundle, code] of cases)
    it(`refuses ${what} before asking for a blob, backs the peer off, changes nothing`, async () => {
      const mine = await newStore(b.seq1!, b.seq2!);
      const evil = await hostilePeer(bundle());
      const before = await snapshotDir(mine.dir);
      const s = sync(mine, [evil.url]);
      expect(await s.round()).toBeUndefined();
      const st = s.status()[0]!;
      expect(st.lastError?.code).toBe(code);
      expect(st.offer).toBe('refused');
      expect(st.backoffUntil).not.toBeNull();
      expect(evil.seen.blobRequests).toBe(0);
      expect(await snapshotDir(mine.dir)).toEqual(before);
      // Backed off: the next round does not ask it at all.
      expect(await s.round()).toBeUndefined();
      expect(s.status()[0]!.failures).toBe(1);
    });
});

describe('a peer that is only behind', () => {
  it('is reported behind, not backed off, and the blobs it holds are still pulled from it', async () => {
    // This mirror knows sequence 3 (its manifest, none of its blobs yet); the lagging peer is at 2.
    const mine = await newStore(b.seq1!);
    const head = (await readBundle(fileSource(b.seq3!))).envelopeBytes;
    const known = await importFrom(mine, {
      label: 'manifest only',
      open: () => offerSource({ envelopeBytes: head, roots: [], blobs: [] }),
      quarantine: false,
    });
    expect(known).toMatchObject({ ok: true, sequence: 3, status: 'pending' });
    const lagging = await honestPeer(b.seq2!);
    const current = await honestPeer(b.seq3!);
    // Ranges for BIG: both peers hold it, so both are asked.
    const s = sync(mine, [lagging.url, current.url], { rangeMinBytes: 1024 * 1024, rangeBytes: 256 * 1024 });
    expect(await s.round()).toMatchObject({ ok: true, sequence: 3, status: 'active' });
    const [l, c] = s.status();
    expect(l).toMatchObject({
      offer: 'behind',
      sequence: 2,
      failures: 0,
      backoffUntil: null,
      lastError: null,
    });
    expect(l!.received).toBeGreaterThan(0);
    expect(c).toMatchObject({ offer: 'same', sequence: 3, failures: 0 });
    await blobsAreSound(mine);
    // Asked again next round, still without back-off.
    expect(await s.round()).toBeUndefined();
    expect(s.status()[0]).toMatchObject({ offer: 'behind', failures: 0, backoffUntil: null });
  }, 30_000);

  it('an equivocating peer at the same sequence stays hostile: refused and backed off', async () => {
    const mine = await newStore(b.seq1!, b.seq2!);
    const evil = await hostilePeer(b.equivocal!);
    const s = sync(mine, [evil.url]);
    expect(await s.round()).toBeUndefined();
    expect(s.status()[0]).toMatchObject({ offer: 'refused', failures: 1 });
    expect(s.status()[0]!.lastError?.code).toBe('EQUIVOCATION');
  });
});

describe('transfers', () => {
  const hostileBlob: [BlobMode, string][] = [
    ['tamper', 'BLOB_DIGEST_MISMATCH'],
    ['endless', 'BLOB_SIZE_MISMATCH'],
    ['trickle', 'HTTP_DEADLINE'],
  ];
  for (const [mode, code] of hostileBlob)
    it(`a peer serving a ${mode === 'tamper' ? 'tampered blob' : mode === 'endless' ? 'never-ending body' : 'trickle'} is backed off (${code}) and the blob comes from another peer`, async () => {
      const evil = await hostilePeer(b.seq2!, mode);
      const a = await honestPeer(b.seq2!);
      const mine = await newStore(b.seq1!);
      // The hostile peer is listed first: with both idle, it is asked first.
      const s = sync(mine, [evil.url, a.url], {
        parallel: 1,
        limits: { minDeadlineMs: 1500, floorBytesPerSec: 1024 * 1024 },
      });
      expect(await s.round()).toMatchObject({ ok: true, sequence: 2, status: 'active' });
      const [e, h] = s.status();
      expect(evil.seen.blobRequests).toBeGreaterThan(0);
      expect(e!.lastError?.code).toBe(code);
      expect(e!.backoffUntil).not.toBeNull();
      expect(h!.failures).toBe(0);
      await blobsAreSound(mine);
      expect(await activeBytes(mine)).toEqual(await activeBytes(a.store));
      expect(await readdir(mine.paths.peerPulls)).toEqual([]);
    }, 30_000);

  it('resumes a blob across a broken link with Range, from the verified prefix', async () => {
    const a = await honestPeer(b.seq2!);
    const real = createHandler({ store: a.store });
    const bigDigest = sha256(BIG);
    const ranges: (string | undefined)[] = [];
    let cut = false;
    const flaky = await listen((req, res) => {
      if (req.url !== `/v1/blobs/sha256/${bigDigest}`) return real(req, res);
      ranges.push(req.headers.range);
      if (cut) return real(req, res);
      cut = true; // the first answer breaks off after 1 MiB, as a pulled cable would
      res.writeHead(200, { 'content-length': BIG.length });
      const s = createReadStream(a.store.blobPath(bigDigest), { end: 1024 * 1024 - 1 });
      s.pipe(res, { end: false });
      s.on('end', () => res.socket?.destroy());
    });
    const mine = await newStore(b.seq1!);
    expect(await sync(mine, [flaky]).round()).toMatchObject({ ok: true, status: 'active' });
    expect(ranges[0]).toBeUndefined();
    const resumed = /^bytes=(\d+)-$/.exec(ranges[1] ?? '');
    expect(Number(resumed?.[1])).toBeGreaterThan(0);
    expect(await sha256File(mine.blobPath(bigDigest))).toBe(bigDigest);
  }, 30_000);

  it('--peer-rate: a peer is read no faster than its cap', async () => {
    const a = await honestPeer(b.seq2!);
    const mine = await newStore(b.seq1!);
    const rate = 2 * 1024 * 1024;
    const s = sync(mine, [a.url], { transport: throttledTransport(transport, rate) });
    const t0 = performance.now();
    expect(await s.round()).toMatchObject({ ok: true });
    const pulled = s.status()[0]!.received;
    // A lower bound only (a loaded machine is slower, never faster): the bytes at the cap, less the burst.
    expect(pulled).toBeGreaterThan(BIG.length);
    expect(performance.now() - t0).toBeGreaterThanOrEqual((pulled / rate) * 1000 - 300);
  }, 30_000);
});

describe('ferry mirror serve --peer', () => {
  it('pulls from a peer process and shows the peer on the status page and in mirror status', async () => {
    const dataA = await mkdtemp(join(w.dir, 'proc-a-'));
    const dataB = await mkdtemp(join(w.dir, 'proc-b-'));
    const imp = await ferry([
      'mirror',
      'import',
      b.seq2!,
      '--data',
      dataA,
      '--trust',
      w.rootPath,
      '--site',
      'plant-7',
    ]);
    expect(imp.code, imp.stderr).toBe(0);
    const a = await startMirrorProc({ data: dataA });
    const peersFile = join(w.dir, 'peers-b.txt');
    await writeFile(peersFile, `# the first mirror\n${a.url}\n`);
    const bProc = await startMirrorProc({
      data: dataB,
      trust: w.rootPath,
      site: 'plant-7',
      args: ['--peers', peersFile, '--peer-interval', '0.2', '--peer-rate', '50MB/s'],
    });
    await bProc.waitForLog((l) => l.event === 'peer.adopted' && l.sequence === 2, 60_000);
    const page = await (await fetch(`${bProc.url}/`)).text();
    const block = /<div id="peers">([\s\S]*?)<\/div>/.exec(page)?.[1] ?? '';
    expect(block).toContain(a.url);
    expect(block).toMatch(/<td>up<\/td>\s*<td>2<\/td>/);
    const st = await ferry(['mirror', 'status', '--data', dataB]);
    expect(st.stdout).toContain(`peer ${a.url}: link up, sequence 2`);
    await bProc.stop();
    await a.stop();
  }, 90_000);
});

describe('peer list', () => {
  it('reads a peers file, skips what is not a URL, and re-reads it when it changes', async () => {
    expect(parsePeersFile('http://a:1/\n# c\n\nnot a url\nhttps://b:2 # x\n')).toEqual({
      urls: ['http://a:1', 'https://b:2'],
      bad: ['not a url'],
    });
    const file = join(w.dir, 'peers.txt');
    await writeFile(file, 'http://10.0.0.2:8080\n');
    const list = peerList(['http://10.0.0.1:8080/'], file, quiet);
    expect(await list()).toEqual(['http://10.0.0.1:8080', 'http://10.0.0.2:8080']);
    // A different size as well as a new mtime: noticed whatever the filesystem's time granularity.
    await writeFile(file, 'http://10.0.0.3:8080\nhttp://10.0.0.4:8080\n');
    expect(await list()).toEqual(['http://10.0.0.1:8080', 'http://10.0.0.3:8080', 'http://10.0.0.4:8080']);
  });
});
