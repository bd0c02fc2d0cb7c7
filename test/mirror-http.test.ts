/**
 * The mirror's read-only HTTP API on real loopback servers, over a real store
 * with a bundle imported the way the mirror does it.
 */
import { createLogger, silentLogger } from '../platform/log.js';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { rm, writeFile, mkdtemp, readFile } from 'node:fs/promises';
import { createServer, get, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { importBundle } from '../mirror/import.js';
import { createHandler } from '../mirror/http/app.js';
import { mirrorMetrics, type Metrics } from '../mirror/metrics.js';
import { Store } from '../mirror/store.js';
import { buildBundle, makeWorld, type World } from './helpers/fixtures.js';

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

let w: World;
let rootBytes: Buffer;
const servers: Server[] = [];

/** A fresh store for site plant-7, optionally with one bundle imported and active. */
async function newStore(artifacts?: { name: string; content: Buffer }[]): Promise<Store> {
  const dir = await mkdtemp(join(w.dir, 'data-'));
  const store = await Store.open(dir, { init: { rootBytes, site: 'plant-7' } });
  if (artifacts) {
    const out = join(w.dir, `${Date.now()}-${Math.random()}.ferry`);
    const b = await buildBundle(w, out, {
      artifacts: artifacts.map((a) => ({ ...a, kind: 'file' as const })),
    });
    const r = await importBundle(store, b.volumes[0]!.path);
    if (!r.ok) throw new Error(`import refused: ${r.code} ${r.message}`);
  }
  return store;
}

/** Serves `store` on a loopback port; returns the base URL. */
async function serve(
  store: Store,
  onEvent?: (e: Record<string, unknown>) => void,
  metrics?: Metrics,
): Promise<string> {
  const log = onEvent
    ? createLogger({
        component: 'mirror-http',
        write: (line) => onEvent(JSON.parse(line) as Record<string, unknown>),
      })
    : silentLogger;
  const server = createServer(createHandler({ store, log, ...(metrics && { metrics }) }));
  servers.push(server);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function bytes(res: Response): Promise<Buffer> {
  return Buffer.from(await res.arrayBuffer());
}

let store: Store;
let base: string;
let big: Buffer;
let bigHex: string;
let small: Buffer;
let smallHex: string;

beforeAll(async () => {
  w = await makeWorld();
  rootBytes = await readFile(w.rootPath);
  big = randomBytes(3 * 1024 * 1024);
  bigHex = sha256(big);
  small = Buffer.from('hello, plant-7\n');
  smallHex = sha256(small);
  store = await newStore([
    { name: 'big', content: big },
    { name: 'small', content: small },
  ]);
  base = await serve(store);
});

afterAll(async () => {
  for (const s of servers) {
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }
  await w.cleanup();
});

async function expectError(res: Response, status: number, code: string): Promise<{ message: string }> {
  expect(res.status).toBe(status);
  expect(res.headers.get('content-type')).toMatch(/^application\/json/);
  const body = (await res.json()) as { code: string; message: string };
  expect(body.code).toBe(code);
  expect(typeof body.message).toBe('string');
  return body;
}

describe('mirror http: metadata routes', () => {
  it('GET /healthz', async () => {
    const res = await fetch(`${base}/healthz`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ ok: true });
  });

  it('GET /v1/root returns the root envelopes as JSON, oldest first', async () => {
    const res = await fetch(`${base}/v1/root`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual([JSON.parse(rootBytes.toString('utf8'))]);
  });

  it('GET /v1/manifest returns the exact envelope bytes with a digest ETag and 304 on a match', async () => {
    const { active } = await store.readState();
    const onDisk = await store.readManifestBytes(active!);
    const res = await fetch(`${base}/v1/manifest`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    const body = await bytes(res);
    expect(body.equals(onDisk)).toBe(true);
    const etag = res.headers.get('etag');
    expect(etag).toBe(`"${sha256(onDisk)}"`);
    expect(etag).toBe(`"${active!.digest}"`);

    const again = await fetch(`${base}/v1/manifest`, { headers: { 'If-None-Match': etag! } });
    expect(again.status).toBe(304);
    expect((await bytes(again)).length).toBe(0);
    expect(again.headers.get('etag')).toBe(etag);

    const stale = await fetch(`${base}/v1/manifest`, { headers: { 'If-None-Match': `"${'0'.repeat(64)}"` } });
    expect(stale.status).toBe(200);
    expect((await bytes(stale)).equals(onDisk)).toBe(true);
  });

  it('GET /v1/inventory lists site, active, pending and held blobs', async () => {
    const { active } = await store.readState();
    const res = await fetch(`${base}/v1/inventory`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({
      site: 'plant-7',
      active: { publisher: 'acme-ops', sequence: 1, digest: active!.digest },
      pending: [],
      blobs: [bigHex, smallHex].sort(),
    });
  });

  it('an empty store: no active manifest is a 404 NO_ACTIVE_MANIFEST; inventory says null', async () => {
    const url = await serve(await newStore());
    await expectError(await fetch(`${url}/v1/manifest`), 404, 'NO_ACTIVE_MANIFEST');
    expect(await (await fetch(`${url}/v1/inventory`)).json()).toEqual({
      site: 'plant-7',
      active: null,
      pending: [],
      blobs: [],
    });
  });
});

describe('mirror http: agent polls', () => {
  it('answers unchanged polls 304 on the fast path, counts them, and sees a new manifest at once', async () => {
    const store = await newStore([{ name: 'one', content: Buffer.from('first release') }]);
    const metrics = mirrorMetrics();
    const url = await serve(store, undefined, metrics);
    const first = await fetch(`${url}/v1/manifest`);
    const etag = first.headers.get('etag')!;
    await first.arrayBuffer();
    for (let i = 0; i < 5; i++) {
      const poll = await fetch(`${url}/v1/manifest`, { headers: { 'If-None-Match': etag } });
      expect(poll.status).toBe(304);
      expect(poll.headers.get('etag')).toBe(etag);
      expect(await poll.text()).toBe('');
    }
    expect(metrics.get('ferry_mirror_requests_total', { route: '/v1/manifest', status: '304' })).toBe(5);
    // a stale ETag falls through to the full answer
    const stale = await fetch(`${url}/v1/manifest`, { headers: { 'If-None-Match': '"0000"' } });
    expect(stale.status).toBe(200);
    await stale.arrayBuffer();
    // a new release imported by this process is served on the very next poll
    const out = join(w.dir, `next-${Date.now()}.ferry`);
    await buildBundle(w, out, {
      spec: { sequence: 2 },
      artifacts: [{ name: 'one', kind: 'file', content: Buffer.from('second release') }],
    });
    expect((await importBundle(store, out)).ok).toBe(true);
    const next = await fetch(`${url}/v1/manifest`, { headers: { 'If-None-Match': etag } });
    expect(next.status).toBe(200);
    expect(next.headers.get('etag')).not.toBe(etag);
    await next.arrayBuffer();
  });
});

describe('mirror http: blobs', () => {
  const blobUrl = (hex: string) => `${base}/v1/blobs/sha256/${hex}`;

  it('streams a whole blob with length, digest ETag, immutable caching and Accept-Ranges', async () => {
    const res = await fetch(blobUrl(bigHex));
    expect(res.status).toBe(200);
    expect(res.headers.get('content-length')).toBe(String(big.length));
    expect(res.headers.get('etag')).toBe(`"${bigHex}"`);
    expect(res.headers.get('cache-control')).toBe('public, max-age=31536000, immutable');
    expect(res.headers.get('accept-ranges')).toBe('bytes');
    expect(res.headers.get('content-type')).toBe('application/octet-stream');
    expect(sha256(await bytes(res))).toBe(bigHex);
  });

  it('answers If-None-Match with 304 and no body', async () => {
    const res = await fetch(blobUrl(smallHex), { headers: { 'If-None-Match': `"${smallHex}"` } });
    expect(res.status).toBe(304);
    expect(res.headers.get('etag')).toBe(`"${smallHex}"`);
    expect((await bytes(res)).length).toBe(0);
  });

  it('HEAD gives the headers without a body', async () => {
    const res = await fetch(blobUrl(bigHex), { method: 'HEAD' });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-length')).toBe(String(big.length));
    expect(res.headers.get('etag')).toBe(`"${bigHex}"`);
  });

  it.each([
    ['first bytes', 'bytes=0-99', 0, 99],
    ['a middle slice', 'bytes=1000000-1999999', 1_000_000, 1_999_999],
    ['a suffix', 'bytes=-500', 3 * 1024 * 1024 - 500, 3 * 1024 * 1024 - 1],
    ['an open end', 'bytes=3145000-', 3_145_000, 3 * 1024 * 1024 - 1],
    ['an end past the size, clamped', 'bytes=3145700-9999999', 3_145_700, 3 * 1024 * 1024 - 1],
  ])('serves %s as 206 with Content-Range', async (_what, range, start, end) => {
    const res = await fetch(blobUrl(bigHex), { headers: { Range: range } });
    expect(res.status).toBe(206);
    expect(res.headers.get('content-range')).toBe(`bytes ${start}-${end}/${big.length}`);
    expect(res.headers.get('content-length')).toBe(String(end - start + 1));
    expect((await bytes(res)).equals(big.subarray(start, end + 1))).toBe(true);
  });

  it('resumes an interrupted download by Range and reassembles the exact digest', async () => {
    // node:http so the connection can be cut part-way, as a flaky link would.
    const { got, etag } = await new Promise<{ got: Buffer[]; etag: string }>((resolve, reject) => {
      const req = get(blobUrl(bigHex), (res) => {
        expect(res.statusCode).toBe(200);
        const got: Buffer[] = [];
        let n = 0;
        res.on('data', (chunk: Buffer) => {
          if (req.destroyed) return; // nothing after the cut counts
          got.push(chunk);
          n += chunk.length;
          if (n >= 256 * 1024) {
            req.destroy();
            resolve({ got, etag: String(res.headers.etag) });
          }
        });
        res.on('end', () => reject(new Error('the whole blob arrived; nothing to resume')));
      });
      req.on('error', reject);
    });
    const n = got.reduce((a, b) => a + b.length, 0);
    expect(n).toBeLessThan(big.length);

    const rest = await fetch(blobUrl(bigHex), { headers: { Range: `bytes=${n}-`, 'If-Range': etag } });
    expect(rest.status).toBe(206);
    expect(rest.headers.get('content-range')).toBe(`bytes ${n}-${big.length - 1}/${big.length}`);
    const whole = Buffer.concat([...got, await bytes(rest)]);
    expect(whole.length).toBe(big.length);
    expect(sha256(whole)).toBe(bigHex);
  });

  it('an If-Range naming another validator sends the whole blob', async () => {
    const res = await fetch(blobUrl(smallHex), {
      headers: { Range: 'bytes=0-3', 'If-Range': `"${bigHex}"` },
    });
    expect(res.status).toBe(200);
    expect((await bytes(res)).equals(small)).toBe(true);
  });

  it.each([['bytes=99999999-'], [`bytes=${15}-20`], ['bytes=-0']])(
    'refuses unsatisfiable %s with 416 and Content-Range bytes */size',
    async (range) => {
      const res = await fetch(blobUrl(smallHex), { headers: { Range: range } });
      const body = await expectError(res, 416, 'RANGE_NOT_SATISFIABLE');
      expect(body.message).toBe(`blob is ${small.length} bytes`);
      expect(res.headers.get('content-range')).toBe(`bytes */${small.length}`);
      expect(res.headers.get('etag')).toBeNull();
    },
  );

  it.each([
    ['a multi-range request', 'bytes=0-1,4-5'],
    ['an inverted range', 'bytes=5-2'],
    ['another unit', 'items=0-1'],
  ])('answers %s with the whole blob (200)', async (_what, range) => {
    const res = await fetch(blobUrl(smallHex), { headers: { Range: range } });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-range')).toBeNull();
    expect((await bytes(res)).equals(small)).toBe(true);
  });

  it('refuses a malformed digest with 400 BAD_DIGEST', async () => {
    for (const bad of ['abc', smallHex.toUpperCase(), `${smallHex}0`, '..%2Fstate.json'])
      await expectError(await fetch(blobUrl(bad)), 400, 'BAD_DIGEST');
  });

  it('answers an unknown digest with 404 BLOB_NOT_FOUND', async () => {
    const res = await fetch(blobUrl(sha256(Buffer.from('not here'))));
    await expectError(res, 404, 'BLOB_NOT_FOUND');
    expect(res.headers.get('etag')).toBeNull();
  });
});

describe('mirror http: errors', () => {
  it('unknown routes are 404 NOT_FOUND in JSON', async () => {
    for (const p of ['/nope', '/v1', '/v1/blobs/sha256', '/v2/manifest', '/v1/manifest/extra'])
      await expectError(await fetch(`${base}${p}`), 404, 'NOT_FOUND');
  });

  it('a request body over the limit is 413 BODY_TOO_LARGE before any route reads it', async () => {
    const res = await fetch(`${base}/v1/manifest`, { method: 'POST', body: Buffer.alloc(1024 * 1024 + 1) });
    await expectError(res, 413, 'BODY_TOO_LARGE');
  });

  it('a wrong method is 405 METHOD_NOT_ALLOWED in JSON with Allow', async () => {
    for (const p of ['/v1/manifest', `/v1/blobs/sha256/${smallHex}`, '/healthz']) {
      const res = await fetch(`${base}${p}`, { method: 'POST', body: 'x' });
      await expectError(res, 405, 'METHOD_NOT_ALLOWED');
      expect(res.headers.get('allow')).toMatch(/GET/);
    }
    const del = await fetch(`${base}/v1/inventory`, { method: 'DELETE' });
    await expectError(del, 405, 'METHOD_NOT_ALLOWED');
  });

  it('a broken store is 503 STORE_INVALID without paths in the message, and is logged', async () => {
    const broken = await newStore();
    const events: Record<string, unknown>[] = [];
    const url = await serve(broken, (e) => events.push(e));
    await writeFile(broken.paths.state, '{ not json');
    const body = await expectError(await fetch(`${url}/v1/manifest`), 503, 'STORE_INVALID');
    expect(body.message).toBe('mirror store is not usable');
    expect(body.message).not.toContain(broken.dir);
    expect(events).toMatchObject([{ component: 'mirror-http', code: 'STORE_INVALID', path: '/v1/manifest' }]);
  });

  it('an unexpected failure is 500 INTERNAL with a fixed message, and is logged', async () => {
    const broken = await newStore();
    const events: Record<string, unknown>[] = [];
    const url = await serve(broken, (e) => events.push(e));
    await rm(broken.paths.blobs, { recursive: true });
    const res = await fetch(`${url}/v1/inventory`);
    const body = await expectError(res, 500, 'INTERNAL');
    expect(body).toEqual({ code: 'INTERNAL', message: 'internal error' });
    expect(events).toHaveLength(1);
    expect(String(events[0]!.error)).toContain('ENOENT');
  });
});
