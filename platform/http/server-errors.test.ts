/**
 * The kit's error contract and body reading on a real Koa app on loopback:
 * what a client may learn from each kind of failure, and what the log gets.
 */
import { request } from 'node:http';
import Koa from 'koa';
import Router from '@koa/router';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CodedError } from '../../core/errors.js';
import { createLogger } from '../log.js';
import { bodyLimit, readJsonBody } from './server-body.js';
import { errorMiddleware, HttpError, publicErrorOf, type PublicError } from './server-errors.js';
import { startHttp, type HttpService } from './server.js';

const logged: Record<string, unknown>[] = [];
const log = createLogger({
  component: 'test',
  write: (l) => logged.push(JSON.parse(l) as Record<string, unknown>),
});

class BusyError extends CodedError<'BUSY'> {}
const toPublic = (e: unknown) =>
  publicErrorOf(e, 'svc', (x): PublicError | undefined =>
    x instanceof BusyError
      ? { status: 503, body: { code: 'STORE_LOCKED', message: 'busy' }, expected: true }
      : undefined,
  );

let svc: HttpService;
beforeAll(async () => {
  const app = new Koa();
  app.use(errorMiddleware(log, toPublic));
  app.use(bodyLimit(1024));
  const r = new Router();
  r.get('/teapot', (ctx) => {
    ctx.set('ETag', '"leaked"');
    throw new HttpError(416, 'RANGE_NOT_SATISFIABLE', 'blob is 3 bytes', {
      headers: { 'Content-Range': 'bytes */3' },
    });
  });
  r.get('/crash', () => {
    throw new Error('cannot open /var/lib/secret/state.json');
  });
  r.get('/full', () => {
    throw Object.assign(new Error('write /data/x: no space'), { code: 'ENOSPC' });
  });
  r.get('/busy', () => {
    throw new BusyError('BUSY', 'lock /data/lock held by 123');
  });
  r.post('/echo', async (ctx) => {
    ctx.body = { got: await readJsonBody(ctx, 64) };
  });
  app.use(r.routes()).use(r.allowedMethods());
  const cb = app.callback();
  svc = await startHttp({ host: '127.0.0.1', port: 0, handler: (q, s) => void cb(q, s), log });
});
afterAll(() => svc.close(1_000));

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  json: unknown;
}

/** One request; `chunks` are sent without a Content-Length (chunked) unless `length` is given. */
function call(method: string, path: string, o: { type?: string; chunks?: Buffer[]; length?: number } = {}) {
  return new Promise<Answer>((resolve, reject) => {
    const headers: Record<string, string | number> = {};
    if (o.type) headers['content-type'] = o.type;
    if (o.length !== undefined) headers['content-length'] = o.length;
    const req = request(`${svc.url}${path}`, { method, headers, agent: false }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, json: JSON.parse(text) }),
      );
    });
    req.on('error', reject);
    for (const c of o.chunks ?? []) req.write(c);
    req.end();
  });
}

describe('errorMiddleware', () => {
  it('sends an HttpError as written, with its headers and none set before the failure', async () => {
    const r = await call('GET', '/teapot');
    expect(r).toMatchObject({
      status: 416,
      json: { code: 'RANGE_NOT_SATISFIABLE', message: 'blob is 3 bytes' },
    });
    expect(r.headers['content-range']).toBe('bytes */3');
    expect(r.headers.etag).toBeUndefined();
  });

  it('answers an unexpected error 500 INTERNAL with a fixed text, and logs what it was', async () => {
    const r = await call('GET', '/crash');
    expect(r).toMatchObject({ status: 500, json: { code: 'INTERNAL', message: 'internal error' } });
    expect(JSON.stringify(r.json)).not.toContain('/var/lib');
    const line = logged.find((l) => l.event === 'http.request_error' && l.path === '/crash');
    expect(line).toMatchObject({ level: 'error', code: 'INTERNAL', status: 500 });
    expect(String(line?.error)).toContain('/var/lib/secret');
  });

  it('answers a full disk 507 STORAGE_FULL and a service-mapped error with the service text', async () => {
    expect(await call('GET', '/full')).toMatchObject({
      status: 507,
      json: { code: 'STORAGE_FULL', message: 'svc storage is full' },
    });
    const busy = await call('GET', '/busy');
    expect(busy).toMatchObject({ status: 503, json: { code: 'STORE_LOCKED', message: 'busy' } });
    expect(JSON.stringify(busy.json)).not.toContain('/data/lock');
  });

  it('answers unknown routes and methods in JSON too', async () => {
    expect(await call('GET', '/nowhere')).toMatchObject({ status: 404, json: { code: 'NOT_FOUND' } });
    const r = await call('DELETE', '/echo');
    expect(r).toMatchObject({ status: 405, json: { code: 'METHOD_NOT_ALLOWED' } });
    expect(r.headers.allow).toBe('POST');
  });
});

describe('bodies', () => {
  const json = 'application/json';
  it('reads a JSON body within the route cap', async () => {
    expect(await call('POST', '/echo', { type: json, chunks: [Buffer.from('{"a":[1,2]}')] })).toMatchObject({
      status: 200,
      json: { got: { a: [1, 2] } },
    });
  });

  it('refuses the wrong type (415), bad UTF-8 or JSON (400)', async () => {
    expect(
      (await call('POST', '/echo', { type: 'text/plain', chunks: [Buffer.from('{}')] })).json,
    ).toMatchObject({ code: 'UNSUPPORTED_MEDIA_TYPE' });
    for (const bad of [Buffer.from([0x7b, 0xff, 0x7d]), Buffer.from('{"a":')])
      expect(await call('POST', '/echo', { type: json, chunks: [bad] })).toMatchObject({
        status: 400,
        json: { code: 'BAD_REQUEST' },
      });
  });

  it('refuses a body over the cap, declared or streamed without a length (413)', async () => {
    const big = Buffer.from(JSON.stringify({ pad: 'x'.repeat(100) }));
    expect(await call('POST', '/echo', { type: json, chunks: [big], length: big.length })).toMatchObject({
      status: 413,
      json: { code: 'BODY_TOO_LARGE' },
    });
    expect(
      await call('POST', '/echo', { type: json, chunks: [big.subarray(0, 50), big.subarray(50)] }),
    ).toMatchObject({ status: 413, json: { code: 'BODY_TOO_LARGE' } });
    // the app-wide ceiling refuses before any route reads
    const huge = Buffer.alloc(2048, 0x20);
    expect(await call('POST', '/echo', { type: json, chunks: [huge], length: huge.length })).toMatchObject({
      status: 413,
      json: { message: 'request bodies are limited to 1024 bytes' },
    });
  });
});
