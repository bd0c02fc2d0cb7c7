/**
 * One large blob pulled in ranges from several peers at once, in process
 * against real stores served by the mirror's own HTTP app on loopback. The
 * bytes must come from every peer, and a peer that serves a bad range must be
 * found, backed off and routed around without a bad byte reaching the store.
 */
import { randomBytes } from 'node:crypto';
import { open, readdir } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHandler } from '../mirror/http/app.js';
import { PeerSync } from '../mirror/peers.js';
import type { Store } from '../mirror/store.js';
import { nodeTransport } from '../platform/http/transport.js';
import { createLogger } from '../platform/log.js';
import { buildBundle, makeWorld, SAMPLE_ARTIFACTS, type World } from './helpers/fixtures.js';
import { sha256, sha256File } from './helpers/mirror-proc.js';
import { Servers, storeWith } from './helpers/peer-stores.js';

let w: World;
const servers = new Servers();
const quiet = createLogger({ component: 'test', write: () => undefined });
const transport = nodeTransport({ maxSockets: 8 });
const RANGE = 256 * 1024;
const LARGE = randomBytes(24 * RANGE + 1000); // 25 ranges, the last one short
const DIGEST = sha256(LARGE);
let seq1 = '';
let seq2 = '';

beforeAll(async () => {
  w = await makeWorld();
  await buildBundle(w, (seq1 = join(w.dir, 'seq1.ferry')), { spec: { sequence: 1 } });
  await buildBundle(w, (seq2 = join(w.dir, 'seq2.ferry')), {
    spec: { sequence: 2 },
    artifacts: [...SAMPLE_ARTIFACTS, { name: 'large', kind: 'file', content: LARGE }],
  });
}, 60_000);

afterAll(async () => {
  await servers.close();
  await transport.close();
  await w.cleanup();
});

const listen = (h: (req: IncomingMessage, res: ServerResponse) => void) => servers.listen(h);
const newStore = (...bundles: string[]) => storeWith(w, ...bundles);

async function honestPeer(): Promise<string> {
  return listen(createHandler({ store: await newStore(seq2) }));
}

/**
 * A mirror that holds the release but answers range requests for the large blob itself, flipping one
 * byte of the ranges (or whole bodies) `tamper` picks, by request number; the rest is the mirror's own app.
 */
async function tamperingPeer(tamper: (n: number) => boolean): Promise<{ url: string; seen: number[] }> {
  const store = await newStore(seq2);
  const app = createHandler({ store });
  const seen: number[] = [];
  const url = await listen((req, res) => {
    if (req.url !== `/v1/blobs/sha256/${DIGEST}`) return app(req, res);
    const m = /^bytes=(\d+)-(\d+)$/.exec(String(req.headers.range ?? ''));
    const [start, end] = m ? [Number(m[1]), Number(m[2])] : [0, LARGE.length - 1];
    seen.push(start);
    void (async () => {
      const fh = await open(store.blobPath(DIGEST), 'r');
      const body = Buffer.alloc(end - start + 1);
      await fh.read(body, 0, body.length, start);
      await fh.close();
      if (tamper(seen.length)) body[body.length >> 1]! ^= 0xff;
      const range = m && { 'content-range': `bytes ${start}-${end}/${LARGE.length}` };
      res.writeHead(m ? 206 : 200, { ...range, 'content-length': body.length });
      res.end(body);
    })();
  });
  return { url, seen };
}

function sync(store: Store, peers: string[]): PeerSync {
  return new PeerSync({
    store,
    peers: () => Promise.resolve(peers),
    transport,
    log: quiet,
    backoffBaseMs: 60_000,
    backoffMaxMs: 60_000,
    rangeMinBytes: 1024 * 1024,
    rangeBytes: RANGE,
  });
}

/** Every blob file in the store is named by its own digest. */
async function blobsAreSound(store: Store): Promise<void> {
  for (const n of await readdir(store.paths.blobs))
    expect(await sha256File(join(store.paths.blobs, n))).toBe(n);
}

describe('a large blob in ranges from several peers', () => {
  it('spreads the bytes of one blob over three peers and assembles it exactly', async () => {
    const peers = [await honestPeer(), await honestPeer(), await honestPeer()];
    const mine = await newStore(seq1);
    const s = sync(mine, peers);
    expect(await s.round()).toMatchObject({ ok: true, sequence: 2, status: 'active' });
    expect(await sha256File(mine.blobPath(DIGEST))).toBe(DIGEST);
    const st = s.status();
    // Each peer served at least one whole range of the large blob (the small blobs are less than one).
    for (const p of st) expect(p.received).toBeGreaterThanOrEqual(RANGE);
    expect(st.reduce((n, p) => n + p.received, 0)).toBeLessThan(LARGE.length + RANGE);
    expect(st.every((p) => p.failures === 0 && p.backoffUntil === null)).toBe(true);
    await blobsAreSound(mine);
    expect(await readdir(mine.paths.peerPulls)).toEqual([]);
  }, 60_000);

  it('finds the peer that served one bad range, backs it off, and still adopts the blob from honest peers', async () => {
    const evil = await tamperingPeer((n) => n === 1);
    const peers = [evil.url, await honestPeer(), await honestPeer()];
    const mine = await newStore(seq1);
    const s = sync(mine, peers);
    expect(await s.round()).toMatchObject({ ok: true, sequence: 2, status: 'active' });
    expect(evil.seen.length).toBeGreaterThan(0);
    const [e, h1, h2] = s.status();
    expect(e!.lastError?.code).toBe('BLOB_DIGEST_MISMATCH');
    expect(e!.backoffUntil).not.toBeNull();
    expect([h1!.failures, h2!.failures]).toEqual([0, 0]);
    expect(await sha256File(mine.blobPath(DIGEST))).toBe(DIGEST);
    await blobsAreSound(mine);
    expect(await readdir(mine.paths.peerPulls)).toEqual([]);
  }, 60_000);

  it('when the re-check cannot settle it (two peers, one lying on every range), falls back to whole blobs', async () => {
    const evil = await tamperingPeer(() => true);
    const mine = await newStore(seq1);
    const s = sync(mine, [evil.url, await honestPeer()]);
    expect(await s.round()).toMatchObject({ ok: true, sequence: 2, status: 'active' });
    const [e, h] = s.status();
    expect(e!.lastError?.code).toBe('BLOB_DIGEST_MISMATCH');
    expect(e!.backoffUntil).not.toBeNull();
    expect(h!.failures).toBe(0);
    expect(await sha256File(mine.blobPath(DIGEST))).toBe(DIGEST);
    await blobsAreSound(mine);
  }, 60_000);
});
