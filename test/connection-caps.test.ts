/**
 * The connection cap, attacked against a real `ferry mirror serve` and a real
 * `ferry server start`: many more slow-header sockets than the cap allows. The
 * cap holds (the extra sockets are closed on arrival and counted), one line
 * reports the episode, the slow sockets are answered 408 once the header
 * timeout passes, and a normal client is served again; the process stays up
 * and stops cleanly.
 */
import { get as httpGet } from 'node:http';
import { connect, type Socket } from 'node:net';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { useWorld } from './helpers/world.js';
import { followLogs, killStrays, spawnFerry, type LoggedProc } from './helpers/mirror-proc.js';

const w = useWorld();
afterEach(killStrays);

const mirrorArgs = (data: string) => [
  'mirror',
  'serve',
  '--data',
  data,
  '--listen',
  '127.0.0.1:0',
  '--trust',
  w.rootPath,
  '--site',
  'plant-7',
];
const serverArgs = (data: string) => ['server', 'start', '--data', data, '--listen', '127.0.0.1:0'];

async function start(args: string[], startedEvent: string): Promise<LoggedProc & { url: string }> {
  const p = followLogs(spawnFerry(args), args[0]!);
  const started = await p.waitForLog((l) => l.event === startedEvent);
  return { ...p, url: started.url as string };
}

interface Slow {
  socket: Socket;
  /** What the socket ended with: the server's answer, or nothing (closed on arrival). */
  ended: Promise<{ data: string; ms: number }>;
}

/** A client that starts a request and never finishes its headers. */
function slowHeaders(url: string): Promise<Slow> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const socket = connect(Number(port), hostname);
    let data = '';
    socket.on('data', (d: Buffer) => (data += d.toString()));
    const ended = new Promise<{ data: string; ms: number }>((r) => {
      socket.on('close', () => r({ data, ms: Date.now() - t0 }));
    });
    socket.on('error', () => undefined); // a refused socket may see a reset
    socket.once('connect', () => {
      socket.write('GET /healthz HTTP/1.1\r\nHost: mirror\r\nX-Slow: ');
      resolve({ socket, ended });
    });
    socket.once('error', reject);
  });
}

/** One request on its own connection (no keep-alive pool): the status and body, or the socket error. */
function get(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    httpGet(url, { agent: false }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    }).on('error', reject);
  });
}

const metric = (text: string, name: string) => {
  const m = new RegExp(`^${name} (\\d+)$`, 'm').exec(text);
  return m ? Number(m[1]) : NaN;
};

/** Mounts the attack on a started service whose cap is `CAP` and header timeout 2 s. */
async function slowHeaderFlood(m: LoggedProc & { url: string }, CAP: number, prefix: string) {
  expect((await get(`${m.url}/healthz`)).status).toBe(200);

  const slow = await Promise.all(Array.from({ length: 3 * CAP }, () => slowHeaders(m.url)));
  const capped = await m.waitForLog((l) => l.event === 'http.connections_capped', 5_000);
  expect(capped).toMatchObject({ maxConnections: CAP, level: 'warn' });

  // While the slots are held, a normal client is turned away too: the cap holds.
  await expect(get(`${m.url}/healthz`)).rejects.toThrow(/ECONNRESET|socket hang up/);

  const ends = await Promise.all(slow.map((s) => s.ended));
  const answered = ends.filter((e) => e.data.startsWith('HTTP/1.1 408'));
  const refused = ends.filter((e) => e.data === '');
  // Exactly CAP held a slot, and each was let go by the header timeout, not earlier.
  expect(answered).toHaveLength(CAP);
  for (const a of answered) expect(a.ms).toBeGreaterThanOrEqual(1_900);
  expect(refused.length).toBe(slow.length - answered.length);

  const recovered = await m.waitForLog((l) => l.event === 'http.connections_recovered', 5_000);
  expect(recovered.refused).toBeGreaterThanOrEqual(refused.length);

  // Slots are free: normal clients are served, and the figures say what happened.
  expect((await get(`${m.url}/healthz`)).status).toBe(200);
  const text = (await get(`${m.url}/metrics`)).body;
  expect(metric(text, `${prefix}_connections_refused_total`)).toBeGreaterThanOrEqual(refused.length + 1);
  // One episode, one line each way, however many sockets were refused.
  expect(m.logs.filter((l) => l.event === 'http.connections_capped')).toHaveLength(1);
  expect(m.logs.filter((l) => l.event === 'http.connections_recovered')).toHaveLength(1);

  expect(await m.stop('SIGTERM')).toEqual({ code: 0, signal: null });
}

describe('connection cap', () => {
  it('ferry mirror serve holds the cap against slow-header sockets, logs one episode, counts refusals, and serves again after the header timeout', async () => {
    const CAP = 20;
    const args = [
      ...mirrorArgs(join(w.dir, 'cap-data')),
      '--max-connections',
      String(CAP),
      '--headers-timeout',
      '2',
    ];
    await slowHeaderFlood(await start(args, 'mirror.started'), CAP, 'ferry_mirror');
  }, 30_000);

  it('ferry server start holds its cap the same way', async () => {
    const CAP = 8;
    const args = [
      ...serverArgs(join(w.dir, 'server-data')),
      '--max-connections',
      String(CAP),
      '--headers-timeout',
      '2',
    ];
    await slowHeaderFlood(await start(args, 'server.started'), CAP, 'ferry_server');
  }, 30_000);

  it('refuses a cap or timeout that cannot work, before it starts (exit 2, USAGE, nothing written)', async () => {
    const bad = join(w.dir, 'bad-data');
    for (const args of [
      [...mirrorArgs(bad), '--max-connections', '0'],
      [...mirrorArgs(bad), '--headers-timeout', '9999'],
      [...serverArgs(bad), '--max-connections', 'many'],
    ]) {
      const c = spawnFerry(args);
      expect(await c.exited).toEqual({ code: 2, signal: null });
      expect(c.stderr()).toMatch(/^ferry: USAGE: .*(max-connections|header timeout)/m);
      expect(existsSync(bad)).toBe(false);
    }
  });
});
