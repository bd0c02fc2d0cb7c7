/**
 * The HTTP server kit on a real loopback server: the listen address, limits
 * that cannot work, TLS refused rather than silently plain, and the
 * connection cap giving idle keep-alive connections' slots to new clients.
 */
import { get as httpGet } from 'node:http';
import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../log.js';
import { Metrics } from '../metrics.js';
import { parseListen, resolveLimits, startHttp, type HttpService } from './server.js';

const running: HttpService[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((s) => s.close(1_000)));
});

function recorder() {
  const lines: Record<string, unknown>[] = [];
  const log = createLogger({
    component: 'test',
    write: (l) => lines.push(JSON.parse(l) as Record<string, unknown>),
  });
  return { log, events: (e: string) => lines.filter((l) => l.event === e) };
}

function get(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    httpGet(url, { agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    }).on('error', reject);
  });
}

/** A keep-alive client that has had its answer and keeps the connection open for its next request. */
function idleKeepAlive(url: string): Promise<{ socket: Socket; closedByServer: Promise<void> }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname);
    socket.once('error', reject);
    const closedByServer = new Promise<void>((r) => socket.once('end', () => r()));
    socket.once('connect', () => socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    socket.once('data', () => resolve({ socket, closedByServer }));
  });
}

describe('parseListen', () => {
  it('takes HOST:PORT and [V6]:PORT, and refuses anything else as USAGE', () => {
    expect(parseListen('127.0.0.1:8080')).toEqual({ host: '127.0.0.1', port: 8080 });
    expect(parseListen('[::1]:0')).toEqual({ host: '::1', port: 0 });
    for (const bad of ['8080', 'host:', 'h:70000', '::1:80'])
      expect(() => parseListen(bad)).toThrow(expect.objectContaining({ code: 'USAGE' }));
  });
});

describe('startHttp', () => {
  it('refuses limits that cannot work, TLS client certificates (not yet) and a TLS pair it cannot read', async () => {
    expect(() => resolveLimits({ maxConnections: 0 })).toThrow(expect.objectContaining({ code: 'USAGE' }));
    expect(() => resolveLimits({ headersTimeoutMs: 20 * 60_000 })).toThrow(/header timeout/);
    expect(resolveLimits({}).maxConnections).toBe(1024);
    await expect(
      startHttp({
        host: '127.0.0.1',
        port: 0,
        handler: (_q, r) => r.end(),
        log: recorder().log,
        tls: { certPath: 'c.pem', keyPath: 'k.pem', clientCaPath: 'ca.pem' },
      }),
    ).rejects.toMatchObject({ code: 'TLS_NOT_IMPLEMENTED' });
    await expect(
      startHttp({
        host: '127.0.0.1',
        port: 0,
        handler: (_q, r) => r.end(),
        log: recorder().log,
        tls: { certPath: '/nonexistent/c.pem', keyPath: '/nonexistent/k.pem' },
      }),
    ).rejects.toMatchObject({ code: 'TLS_INVALID' });
  });

  it('at the cap, ends idle keep-alive connections so new clients are served; counts and logs once', async () => {
    const CAP = 5;
    const { log, events } = recorder();
    const metrics = new Metrics();
    const s = await startHttp({
      host: '127.0.0.1',
      port: 0,
      handler: (_q, res) => res.end('ok'),
      log,
      limits: { maxConnections: CAP },
      metrics: { registry: metrics, prefix: 'ferry_test' },
    });
    running.push(s);
    expect(s.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const idle = await Promise.all(Array.from({ length: CAP }, () => idleKeepAlive(s.url)));
    expect(s.connections()).toBe(CAP);
    expect(metrics.get('ferry_test_connections_open')).toBe(CAP);

    // The first client over the cap is refused; that starts an episode, which ends the idle ones.
    await expect(get(s.url)).rejects.toThrow();
    await Promise.all(idle.map((i) => i.closedByServer));
    await expect.poll(() => s.connections()).toBe(0);
    expect(await get(s.url)).toBe(200);

    expect(metrics.get('ferry_test_connections_refused_total')).toBe(1);
    expect(events('http.connections_capped')).toEqual([
      expect.objectContaining({ level: 'warn', maxConnections: CAP, idleEnded: CAP }),
    ]);
    await expect.poll(() => events('http.connections_recovered').length).toBe(1);
    for (const i of idle) i.socket.destroy();
  });
});
