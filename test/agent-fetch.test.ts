/**
 * The agent's HTTP client and blob fetcher against real mirrors on loopback
 * (a real store with an imported bundle behind `createHandler`), a cutting
 * proxy in front of them, and small hostile node:http servers for the bad cases.
 */
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdir, mkdtemp, open, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { createServer, request as httpRequest, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobFetchError, MirrorSet, blobCachePath, fetchBlob } from '../agent/fetch.js';
import { HttpClientError, backoffMs, download, request, withRetry } from '../platform/http/client.js';
import { createHandler } from '../mirror/http/app.js';
import { importBundle } from '../mirror/import.js';
import { Store } from '../mirror/store.js';
import { buildBundle, makeWorld, type World } from './helpers/fixtures.js';

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

let w: World;
let store: Store;
let mirrorA: string;
let mirrorB: string;
let big: Buffer;
let bigHex: string;
const servers: Server[] = [];

async function listen(server: Server): Promise<string> {
  servers.push(server);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** A base URL nothing listens on. */
async function deadUrl(): Promise<string> {
  const s = createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const url = `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return url;
}

/**
 * A proxy in front of `upstream` that records request headers and, for request
 * number i, cuts the connection after cutAfter(i) body bytes (undefined: pass all).
 */
async function proxy(
  upstream: string,
  cutAfter: (i: number) => number | undefined,
): Promise<{ url: string; seen: IncomingHttpHeaders[] }> {
  const seen: IncomingHttpHeaders[] = [];
  const url = await listen(
    createServer((req, res) => {
      const i = seen.push(req.headers) - 1;
      const headers: Record<string, string> = {};
      for (const h of ['range', 'if-range'] as const) {
        const v = req.headers[h];
        if (typeof v === 'string') headers[h] = v;
      }
      const up = httpRequest(`${upstream}${req.url ?? '/'}`, { headers, agent: false }, (ur) => {
        res.writeHead(ur.statusCode ?? 502, ur.headers);
        const limit = cutAfter(i);
        let sent = 0;
        let cut = false;
        ur.on('data', (chunk: Buffer) => {
          if (cut) return;
          if (limit !== undefined && sent + chunk.length >= limit) {
            cut = true;
            res.write(chunk.subarray(0, limit - sent), () => res.socket?.destroy());
            ur.destroy();
            return;
          }
          sent += chunk.length;
          res.write(chunk);
        });
        ur.on('end', () => {
          if (!cut) res.end();
        });
      });
      up.end();
    }),
  );
  return { url, seen };
}

/** A node:http server with a hand-written (hostile) blob route. */
async function hostile(handler: Parameters<typeof createServer>[1]): Promise<string> {
  return listen(createServer(handler));
}

async function tmp(prefix: string): Promise<string> {
  return mkdtemp(join(w.dir, prefix));
}

async function expectCode(p: Promise<unknown>, code: string): Promise<HttpClientError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(HttpClientError);
  expect((e as HttpClientError).code).toBe(code);
  return e as HttpClientError;
}

const blobPath = (base: string, hex = bigHex) => `${base}/v1/blobs/sha256/${hex}`;
const fast = { attempts: 1, baseMs: 1, maxMs: 1, jitter: false };

beforeAll(async () => {
  w = await makeWorld();
  big = randomBytes(3 * 1024 * 1024 + 17);
  bigHex = sha256(big);
  store = await Store.open(await tmp('store-'), {
    init: { rootBytes: await readFile(w.rootPath), site: 'plant-7' },
  });
  const b = await buildBundle(w, join(w.dir, 'b.ferry'), {
    artifacts: [{ name: 'big', kind: 'file', content: big }],
  });
  const r = await importBundle(store, b.volumes[0]!.path);
  if (!r.ok) throw new Error(`import refused: ${r.code} ${r.message}`);
  // Two mirrors over the same store: the same bytes, the same ETags.
  mirrorA = await listen(createServer(createHandler({ store })));
  mirrorB = await listen(createServer(createHandler({ store })));
});

afterAll(async () => {
  for (const s of servers) {
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }
  await w.cleanup();
});

describe('platform/http download', () => {
  it('downloads a whole blob from a real mirror and verifies it', async () => {
    const part = join(await tmp('dl-'), 'x.part');
    const seen: number[] = [];
    const r = await download(blobPath(mirrorA), part, {
      expectedSize: big.length,
      expectedSha256: bigHex,
      timeoutMs: 5_000,
      onBytes: (have) => seen.push(have),
    });
    expect(r).toEqual({ resumedFrom: 0, received: big.length });
    expect((await readFile(part)).equals(big)).toBe(true);
    expect(seen.at(-1)).toBe(big.length);
  });

  it('resumes with Range and If-Range after the connection is cut mid-body', async () => {
    const cutAt = 1024 * 1024 + 5;
    const p = await proxy(mirrorA, (i) => (i === 0 ? cutAt : undefined));
    const part = join(await tmp('dl-'), 'x.part');
    const o = { expectedSize: big.length, expectedSha256: bigHex, timeoutMs: 5_000 };
    const e = await expectCode(download(blobPath(p.url), part, o), 'HTTP_NETWORK');
    expect(e.retryable).toBe(true);
    const kept = (await stat(part)).size;
    expect(kept).toBeGreaterThan(0);
    expect(kept).toBeLessThanOrEqual(cutAt);
    expect((await readFile(part)).equals(big.subarray(0, kept))).toBe(true);

    const r = await download(blobPath(p.url), part, o);
    expect(p.seen[1]!.range).toBe(`bytes=${kept}-`);
    expect(p.seen[1]!['if-range']).toBe(`"${bigHex}"`);
    expect(r).toEqual({ resumedFrom: kept, received: big.length - kept });
    expect(sha256(await readFile(part))).toBe(bigHex);
  });

  it('starts over cleanly when a Range request gets a 200', async () => {
    let ranges = 0;
    const url = await hostile((req, res) => {
      if (req.headers.range) ranges++;
      res.writeHead(200, { 'content-length': big.length }).end(big);
    });
    const part = join(await tmp('dl-'), 'x.part');
    await writeFile(part, randomBytes(1000)); // a prefix that is not even right
    const r = await download(`${url}/b`, part, {
      expectedSize: big.length,
      expectedSha256: bigHex,
      timeoutMs: 5_000,
    });
    expect(ranges).toBe(1);
    expect(r).toEqual({ resumedFrom: 0, received: big.length });
    expect((await readFile(part)).equals(big)).toBe(true);
  });

  it('refuses a body longer than the signed size without writing past it', async () => {
    const chunked = await hostile((_req, res) => {
      res.write(big);
      res.end(randomBytes(4096)); // chunked: no length announced, just more bytes
    });
    const part = join(await tmp('dl-'), 'x.part');
    const o = { expectedSize: big.length, expectedSha256: bigHex, timeoutMs: 5_000 };
    const e = await expectCode(download(`${chunked}/b`, part, o), 'BLOB_SIZE_MISMATCH');
    expect(e.retryable).toBe(false);
    expect((await stat(part)).size).toBeLessThanOrEqual(big.length);

    // An announced length that is too long is refused before a byte is written.
    const announced = await hostile((_req, res) => {
      res.writeHead(200, { 'content-length': big.length + 1 }).end(Buffer.concat([big, Buffer.from('x')]));
    });
    const part2 = join(await tmp('dl-'), 'y.part');
    await expectCode(download(`${announced}/b`, part2, o), 'BLOB_SIZE_MISMATCH');
    expect((await stat(part2)).size).toBe(0);
  });

  it('reports a digest mismatch as not retryable', async () => {
    const bad = Buffer.from(big);
    bad[12345] = (bad[12345]! + 1) & 0xff;
    let calls = 0;
    const url = await hostile((_req, res) => {
      calls++;
      res.writeHead(200, { 'content-length': bad.length }).end(bad);
    });
    const part = join(await tmp('dl-'), 'x.part');
    const o = { expectedSize: big.length, expectedSha256: bigHex, timeoutMs: 5_000 };
    const e = await expectCode(
      withRetry(() => download(`${url}/b`, part, o), { attempts: 5, baseMs: 1, maxMs: 2, jitter: true }),
      'BLOB_DIGEST_MISMATCH',
    );
    expect(e.retryable).toBe(false);
    expect(calls).toBe(1);
  });

  it('times out on a silent server and on a body that stalls, keeping the prefix', async () => {
    const silent = await hostile(() => undefined);
    const t0 = Date.now();
    const part = join(await tmp('dl-'), 'x.part');
    const o = { expectedSize: big.length, expectedSha256: bigHex, timeoutMs: 300 };
    const e = await expectCode(download(`${silent}/b`, part, o), 'HTTP_TIMEOUT');
    expect(e.retryable).toBe(true);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    expect(Date.now() - t0).toBeLessThan(3_000);

    const stall = await hostile((_req, res) => {
      res.writeHead(200, { 'content-length': big.length });
      res.write(big.subarray(0, 64 * 1024)); // then nothing, connection open
    });
    await expectCode(download(`${stall}/b`, part, o), 'HTTP_TIMEOUT');
    const kept = await readFile(part);
    expect(kept.length).toBeGreaterThan(0);
    expect(kept.equals(big.subarray(0, kept.length))).toBe(true);

    await expectCode(request(`${silent}/x`, { timeoutMs: 200, maxBytes: 10 }), 'HTTP_TIMEOUT');
  });
});

describe('platform/http request', () => {
  it('buffers a small body and refuses one over maxBytes', async () => {
    const ok = await request(`${mirrorA}/healthz`, { timeoutMs: 5_000, maxBytes: 1024 });
    expect(ok.status).toBe(200);
    expect(JSON.parse(ok.body.toString('utf8'))).toEqual({ ok: true });
    await expectCode(request(blobPath(mirrorA), { timeoutMs: 5_000, maxBytes: 1024 }), 'HTTP_TOO_LARGE');
    const chunked = await hostile((_req, res) => {
      for (let i = 0; i < 10; i++) res.write(Buffer.alloc(1024));
      res.end();
    });
    await expectCode(request(chunked, { timeoutMs: 5_000, maxBytes: 4096 }), 'HTTP_TOO_LARGE');
    // the mirror still answers afterwards (a refused response does not poison the pool)
    expect((await request(`${mirrorA}/healthz`, { timeoutMs: 5_000, maxBytes: 1024 })).status).toBe(200);
  });

  it('refuses non-http URLs', async () => {
    await expectCode(request('file:///etc/passwd', { timeoutMs: 100, maxBytes: 10 }), 'HTTP_URL_INVALID');
  });
});

describe('withRetry', () => {
  it('backs off exponentially within bounds and retries only retryable errors', async () => {
    const times: number[] = [];
    const t0 = Date.now();
    const e = await expectCode(
      withRetry(
        () => {
          times.push(Date.now() - t0);
          return Promise.reject(new HttpClientError('HTTP_STATUS', '503', { status: 503, retryable: true }));
        },
        { attempts: 4, baseMs: 20, maxMs: 50, jitter: false },
      ),
      'HTTP_STATUS',
    );
    expect(e.status).toBe(503);
    expect(times).toHaveLength(4);
    // waits 20, 40, 50 (capped): at least 110 ms in all, and not wildly more
    expect(times[3]!).toBeGreaterThanOrEqual(105);
    expect(times[3]!).toBeLessThan(1_000);

    // full jitter stays within [0, cap]
    for (let i = 0; i < 8; i++) {
      expect(backoffMs(i, { baseMs: 10, maxMs: 100, jitter: true, random: () => 0.999 })).toBeLessThanOrEqual(
        Math.min(100, 10 * 2 ** i),
      );
      expect(backoffMs(i, { baseMs: 10, maxMs: 100, jitter: true, random: () => 0 })).toBe(0);
    }

    let calls = 0;
    await expectCode(
      withRetry(
        () => {
          calls++;
          return Promise.reject(new HttpClientError('HTTP_STATUS', '404', { status: 404 }));
        },
        { attempts: 4, baseMs: 1, maxMs: 1, jitter: false },
      ),
      'HTTP_STATUS',
    );
    expect(calls).toBe(1);

    let n = 0;
    const v = await withRetry(
      () =>
        ++n < 3
          ? Promise.reject(new HttpClientError('HTTP_NETWORK', 'x', { retryable: true }))
          : Promise.resolve(n),
      { attempts: 5, baseMs: 1, maxMs: 2, jitter: true },
    );
    expect(v).toBe(3);
  });
});

describe('MirrorSet', () => {
  it('backs off failing mirrors, doubling and capped, in the given order', () => {
    const m = new MirrorSet(['http://a/', 'http://b', 'http://c'], {
      baseBackoffMs: 30_000,
      maxBackoffMs: 600_000,
    });
    expect(m.candidates(0)).toEqual(['http://a', 'http://b', 'http://c']);
    m.markBad('http://a', 'x', 0);
    expect(m.candidates(1)).toEqual(['http://b', 'http://c']);
    expect(m.candidates(30_000)).toEqual(['http://a', 'http://b', 'http://c']);
    m.markBad('http://a', 'x', 30_000); // second failure: 60 s
    expect(m.backoff('http://a', 30_000)?.until).toBe(90_000);
    for (let i = 0; i < 10; i++) m.markBad('http://a', 'x', 100_000);
    expect(m.backoff('http://a', 100_000)?.until).toBe(700_000); // capped at 10 min
    m.markBad('http://b', 'y', 100_000);
    m.markBad('http://c', 'z', 100_000);
    // all backed off: the one whose back-off ends first
    expect(m.candidates(100_001)).toEqual(['http://b']);
    m.markGood('http://a');
    expect(m.candidates(100_001)).toEqual(['http://a']);
  });
});

describe('agent fetchBlob', () => {
  it('fetches into the cache, then answers from the cache', async () => {
    const cache = await tmp('cache-');
    const mirrors = new MirrorSet([mirrorA]);
    const path = await fetchBlob(mirrors, { sha256: bigHex, size: big.length }, cache, { timeoutMs: 5_000 });
    expect(path).toBe(blobCachePath(cache, bigHex));
    expect((await readFile(path)).equals(big)).toBe(true);
    expect(await readdir(join(cache, 'tmp'))).toEqual([]);
    const dead = new MirrorSet([await deadUrl()]);
    expect(await fetchBlob(dead, { sha256: bigHex, size: big.length }, cache, { timeoutMs: 500 })).toBe(path);
  });

  it('resumes on the next mirror when the first is cut off', async () => {
    const cutting = await proxy(mirrorA, () => 700_000); // cuts every time
    const watching = await proxy(mirrorB, () => undefined);
    const cache = await tmp('cache-');
    const mirrors = new MirrorSet([cutting.url, watching.url]);
    const path = await fetchBlob(mirrors, { sha256: bigHex, size: big.length }, cache, {
      timeoutMs: 5_000,
      retry: { attempts: 2, baseMs: 1, maxMs: 2, jitter: true },
    });
    expect(sha256(await readFile(path))).toBe(bigHex);
    expect(cutting.seen).toHaveLength(2);
    expect(watching.seen).toHaveLength(1);
    expect(watching.seen[0]!.range).toMatch(/^bytes=[1-9]\d*-$/);
    expect(mirrors.backoff(cutting.url)?.reason).toBe('HTTP_NETWORK');
    expect(mirrors.backoff(watching.url)).toBeUndefined();
  });

  it('backs off a mirror serving bad bytes and gets the blob from the next', async () => {
    const bad = randomBytes(big.length);
    const evil = await hostile((_req, res) => {
      res.writeHead(200, { 'content-length': bad.length }).end(bad);
    });
    const cache = await tmp('cache-');
    const mirrors = new MirrorSet([evil, mirrorB]);
    const path = await fetchBlob(mirrors, { sha256: bigHex, size: big.length }, cache, {
      timeoutMs: 5_000,
      retry: fast,
    });
    expect(mirrors.backoff(evil)?.reason).toBe('BLOB_DIGEST_MISMATCH');
    expect(mirrors.candidates()).toEqual([mirrorB]);
    expect(await readdir(join(cache, 'blobs', 'sha256'))).toEqual([bigHex]);
    expect((await readFile(path)).equals(big)).toBe(true);
    expect(await readdir(join(cache, 'tmp'))).toEqual([]);
  });

  it('a bad prefix left by an earlier run is redone from scratch, not blamed on the mirror', async () => {
    const cache = await tmp('cache-');
    await mkdir(join(cache, 'tmp'), { recursive: true });
    await writeFile(join(cache, 'tmp', `${bigHex}.part`), randomBytes(5000)); // garbage prefix
    const mirrors = new MirrorSet([mirrorA]);
    const path = await fetchBlob(mirrors, { sha256: bigHex, size: big.length }, cache, {
      timeoutMs: 5_000,
      retry: fast,
    });
    expect((await readFile(path)).equals(big)).toBe(true);
    expect(mirrors.backoff(mirrorA)).toBeUndefined();
  });

  it('all mirrors failing: a coded error and nothing in the cache', async () => {
    const bad = randomBytes(big.length);
    const evil = await hostile((_req, res) => {
      res.writeHead(200, { 'content-length': bad.length }).end(bad);
    });
    const dead = await deadUrl();
    const cache = await tmp('cache-');
    const mirrors = new MirrorSet([dead, evil]);
    const e = await fetchBlob(mirrors, { sha256: bigHex, size: big.length }, cache, {
      timeoutMs: 2_000,
      retry: { attempts: 2, baseMs: 1, maxMs: 2, jitter: true },
    }).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(e).toBeInstanceOf(BlobFetchError);
    expect((e as BlobFetchError).code).toBe('BLOB_UNAVAILABLE');
    expect((e as BlobFetchError).attempts.map((a) => a.code)).toEqual([
      'HTTP_NETWORK',
      'BLOB_DIGEST_MISMATCH',
    ]);
    expect(await readdir(join(cache, 'blobs', 'sha256'))).toEqual([]);
    expect(await readdir(join(cache, 'tmp'))).toEqual([]); // bad bytes are not kept for a resume
    expect(mirrors.backoff(dead)).toBeDefined();
    expect(mirrors.backoff(evil)).toBeDefined();
  });
});

describe('memory', () => {
  it('downloads a 64 MiB blob with small RSS growth', async () => {
    // The blob goes straight into the store's blob directory: the route serves whatever is there.
    const size = 64 * 1024 * 1024;
    const chunk = randomBytes(1024 * 1024);
    const h = createHash('sha256');
    for (let i = 0; i < 64; i++) h.update(chunk);
    const hex = h.digest('hex');
    const fh = await open(store.blobPath(hex), 'w');
    for (let i = 0; i < 64; i++) await fh.write(chunk);
    await fh.close();

    const part = join(await tmp('mem-'), 'x.part');
    const before = process.memoryUsage().rss;
    let peak = before;
    await download(blobPath(mirrorA, hex), part, {
      expectedSize: size,
      expectedSha256: hex,
      timeoutMs: 10_000,
      onBytes: () => {
        peak = Math.max(peak, process.memoryUsage().rss);
      },
    });
    expect((await stat(part)).size).toBe(size);
    // Without --expose-gc, garbage (1 MiB read buffers on the server side, socket chunks on
    // ours) is collected whenever V8 likes, so RSS moves by some MiB either way; the server
    // runs in this process too and reads 1 MiB chunks. A buffering client would add 64+ MiB (the
    // body, plus its copies); 40 MiB still tells the two apart without flaking on GC timing.
    expect(peak - before).toBeLessThan(40 * 1024 * 1024);
  });
});
