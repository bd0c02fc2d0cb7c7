/**
 * The shared HTTP client against real node:http servers on loopback: total
 * deadlines that catch a trickling peer (which an idle timeout never does),
 * over both transports of the seam, the caller's cancel, and the verified
 * blob download moving on from a trickling source to the next with its prefix.
 */
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  deadlineFor,
  download,
  fetchVerifiedBlob,
  HttpClientError,
  nodeTransport,
  parseLimits,
  request,
  type SourceOutcome,
  type Transport,
} from '../platform/http/client.js';
import { undiciTransport } from '../platform/http/undici.js';

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const blob = randomBytes(200 * 1024 + 3);
const hex = sha256(blob);
const servers: Server[] = [];
let dir: string;

async function listen(handler: Parameters<typeof createServer>[1]): Promise<string> {
  const s = createServer(handler);
  servers.push(s);
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  return `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
}

/** Sends the head, then one byte of `body` every `everyMs` until the client hangs up. */
function trickle(body: Buffer, everyMs: number, seen: IncomingHttpHeaders[] = []) {
  return listen((req, res) => {
    seen.push(req.headers);
    res.writeHead(200, { 'content-length': body.length });
    let i = 0;
    const t = setInterval(() => {
      if (i < body.length) res.write(body.subarray(i, ++i));
    }, everyMs);
    res.on('close', () => clearInterval(t));
  });
}

/** Serves `body` whole, or from a `bytes=N-` range with If-Range, as the mirror does. */
function good(body: Buffer, seen: IncomingHttpHeaders[] = []) {
  return listen((req, res) => {
    seen.push(req.headers);
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    if (m && req.headers['if-range'] === `"${sha256(body)}"`) {
      const from = Number(m[1]);
      res
        .writeHead(206, {
          'content-length': body.length - from,
          'content-range': `bytes ${from}-${body.length - 1}/${body.length}`,
        })
        .end(body.subarray(from));
    } else res.writeHead(200, { 'content-length': body.length }).end(body);
  });
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(HttpClientError);
  return (e as HttpClientError).code;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ferry-http-'));
});

afterAll(async () => {
  for (const s of servers) {
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }
  await rm(dir, { recursive: true, force: true });
});

describe('limits', () => {
  it('gives a deadline proportional to the bytes at the floor rate, never under the minimum', () => {
    const l = { minDeadlineMs: 30_000, floorBytesPerSec: 64 * 1024 };
    expect(deadlineFor(1024, l)).toBe(30_000);
    expect(deadlineFor(64 * 1024 * 1024, l)).toBe(1024 * 1000); // 64 MiB at 64 KiB/s: 1024 s
    expect(parseLimits('{"minDeadlineMs":1500,"reserveBytes":0}')).toEqual({
      minDeadlineMs: 1500,
      reserveBytes: 0,
    });
    expect(() => parseLimits('{"minDeadlineMs":0}')).toThrow(/minDeadlineMs/);
    expect(() => parseLimits('{"deadline":5}')).toThrow(/unknown key "deadline"/);
    expect(() => parseLimits('[1]')).toThrow(/not a JSON object/);
  });
});

const transports: [string, () => Transport][] = [
  ['node:http', () => nodeTransport()],
  ['undici', () => undiciTransport()],
];

describe.each(transports)('request over %s', (_name, make) => {
  it('fails a trickling answer at its total deadline though bytes keep coming', async () => {
    const transport = make();
    try {
      const url = await trickle(Buffer.alloc(4096, 7), 50);
      const t0 = Date.now();
      const code = await codeOf(
        request(url, { maxBytes: 4096, timeoutMs: 5_000, deadlineMs: 600, transport }),
      );
      const took = Date.now() - t0;
      expect(code).toBe('HTTP_DEADLINE');
      expect(took).toBeGreaterThanOrEqual(550);
      expect(took).toBeLessThan(3_000);
    } finally {
      await transport.close();
    }
  });

  it('takes the deadline from the limits when none is given, and idles out a silent server', async () => {
    const transport = make();
    try {
      const url = await trickle(Buffer.alloc(4096, 7), 50);
      const limits = { minDeadlineMs: 400, floorBytesPerSec: 1024 * 1024 };
      expect(await codeOf(request(url, { maxBytes: 4096, timeoutMs: 5_000, limits, transport }))).toBe(
        'HTTP_DEADLINE',
      );
      const silent = await listen(() => undefined);
      expect(await codeOf(request(silent, { maxBytes: 10, timeoutMs: 200, transport }))).toBe('HTTP_TIMEOUT');
    } finally {
      await transport.close();
    }
  });

  it('posts a body, reads a small answer, refuses one over maxBytes, and is cancelled by its caller', async () => {
    const transport = make();
    try {
      const echo = await listen((req, res) => {
        const chunks: Buffer[] = [];
        req.on('data', (c: Buffer) => chunks.push(c));
        req.on('end', () => res.writeHead(202).end(Buffer.concat(chunks)));
      });
      const r = await request(echo, { method: 'POST', body: 'hello', maxBytes: 100, transport });
      expect([r.status, r.body.toString()]).toEqual([202, 'hello']);
      expect(
        await codeOf(request(echo, { method: 'POST', body: 'x'.repeat(200), maxBytes: 100, transport })),
      ).toBe('HTTP_TOO_LARGE');
      const silent = await listen(() => undefined);
      const ac = new AbortController();
      setTimeout(() => ac.abort(), 100);
      expect(await codeOf(request(silent, { maxBytes: 10, signal: ac.signal, transport }))).toBe(
        'HTTP_ABORTED',
      );
    } finally {
      await transport.close();
    }
  });
});

describe('a deadline past what a timer holds', () => {
  it('is capped, not fired at once (a 200 GB blob at 64 KiB/s is over 2^31 ms)', async () => {
    const late = await listen((_req, res) => void setTimeout(() => res.writeHead(200).end('ok'), 100));
    const deadlineMs = deadlineFor(200 * 1024 ** 3, { minDeadlineMs: 30_000, floorBytesPerSec: 64 * 1024 });
    expect(deadlineMs).toBeGreaterThan(2 ** 31);
    const r = await request(late, { maxBytes: 10, deadlineMs });
    expect(r.body.toString()).toBe('ok');
  });
});

describe('download deadline', () => {
  it('stops a trickled blob at its deadline, keeps the verified prefix, and is not retried in place', async () => {
    const url = await trickle(blob, 20);
    const part = join(dir, 'trickled.part');
    const t0 = Date.now();
    const e = await download(url, part, {
      expectedSize: blob.length,
      expectedSha256: hex,
      timeoutMs: 5_000,
      deadlineMs: 700,
    }).then(
      () => undefined,
      (err: unknown) => err as HttpClientError,
    );
    expect(e?.code).toBe('HTTP_DEADLINE');
    expect(e?.retryable).toBe(false);
    expect(Date.now() - t0).toBeLessThan(3_000);
    const kept = await readFile(part);
    expect(kept.length).toBeGreaterThan(0);
    expect(kept.equals(blob.subarray(0, kept.length))).toBe(true);
  });
});

describe('fetchVerifiedBlob', () => {
  it('moves on from a trickling source at the deadline and resumes on the next', async () => {
    const trickled: IncomingHttpHeaders[] = [];
    const served: IncomingHttpHeaders[] = [];
    const slow = await trickle(blob, 20, trickled);
    const fine = await good(blob, served);
    const dest = join(dir, 'blobs');
    const tmp = join(dir, 'tmp');
    const outcomes: [string, SourceOutcome][] = [];
    const t0 = Date.now();
    const r = await fetchVerifiedBlob({
      sha256: hex,
      size: blob.length,
      destDir: dest,
      tmpDir: tmp,
      mirrors: [slow, fine],
      // 200 KiB at 1 MiB/s is under the minimum: the deadline is the 800 ms floor
      limits: { minDeadlineMs: 800, floorBytesPerSec: 1024 * 1024, reserveBytes: 0 },
      retry: { attempts: 3, baseMs: 1, maxMs: 2, jitter: true },
      onOutcome: (u, o) => outcomes.push([u, o]),
    });
    expect(Date.now() - t0).toBeLessThan(5_000);
    expect(r.path).toBe(join(dest, hex));
    expect(sha256(await readFile(r.path))).toBe(hex);
    expect(trickled).toHaveLength(1); // a deadline is not retried against the same source
    expect(served).toHaveLength(1);
    expect(served[0]!.range).toMatch(/^bytes=[1-9]\d*-$/); // the trickled prefix was kept
    expect(r.resumedFrom).toBeGreaterThan(0);
    expect(outcomes).toEqual([
      [slow, expect.objectContaining({ kind: 'failed', code: 'HTTP_DEADLINE' }) as unknown],
      [fine, { kind: 'ok' }],
    ]);
    expect(await readdir(tmp)).toEqual([]);
    expect((await stat(r.path)).size).toBe(blob.length);
  });
});
