/**
 * The server over TLS (`--tls-cert`, `--tls-key`, a self-signed pair made with openssl here) and
 * behind a TLS-terminating proxy (`--cookie-secure`): its session and sign-in cookies carry `Secure`
 * (so a browser never sends them over plain HTTP), `HttpOnly` and `SameSite=Strict`; over plain HTTP
 * without the option they do not claim `Secure`. A client that does not trust the certificate is
 * refused; a certificate without its key, or with another key, stops the start with a coded error.
 */
import { execFileSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { request } from 'node:https';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ferry, tempDir } from './helpers/fixtures.js';
import { killStrays } from './helpers/mirror-proc.js';
import { startServerProc, type ServerProc } from './helpers/server-proc.js';
import { haveProgram } from './helpers/system.js';

const HAVE_OPENSSL = haveProgram('openssl');

let dir: string;
let cleanup: () => Promise<void>;
let cert: string;
let key: string;
const running: ServerProc[] = [];

function selfSigned(name: string): { cert: string; key: string } {
  const c = join(dir, `${name}.crt`);
  const k = join(dir, `${name}.key`);
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      k,
      '-out',
      c,
      '-days',
      '2',
      '-subj',
      '/CN=ferry-test',
      '-addext',
      'subjectAltName=IP:127.0.0.1',
    ],
    { stdio: 'ignore' },
  );
  return { cert: c, key: k };
}

interface Reply {
  status: number;
  cookies: string[];
  body: string;
}

function httpsGet(url: string, ca: string | undefined, headers: Record<string, string> = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(url, { ca, headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, cookies: res.headers['set-cookie'] ?? [], body }),
      );
    });
    req.on('error', reject);
    req.end();
  });
}

function httpsPost(url: string, ca: string, cookie: string, form: Record<string, string>): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const body = new URLSearchParams(form).toString();
    const req = request(
      url,
      {
        method: 'POST',
        ca,
        headers: { 'content-type': 'application/x-www-form-urlencoded', cookie },
      },
      (res) => {
        res.resume();
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, cookies: res.headers['set-cookie'] ?? [], body: '' }),
        );
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

const named = (cookies: string[], name: string) => cookies.find((c) => c.startsWith(`${name}=`));

beforeAll(async () => {
  if (!HAVE_OPENSSL) return;
  ({ dir, cleanup } = await tempDir('ferry-server-tls-'));
  ({ cert, key } = selfSigned('server'));
});

afterAll(async () => {
  for (const s of running) await s.stop();
  await killStrays();
  await cleanup?.();
});

describe.skipIf(!HAVE_OPENSSL)('the server over TLS', () => {
  it('serves HTTPS and marks its sign-in and session cookies Secure, HttpOnly, SameSite=Strict', async () => {
    const s = await startServerProc(join(dir, 'tls'), ['--tls-cert', cert, '--tls-key', key]);
    running.push(s);
    expect(s.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const ca = await readFile(cert, 'utf8');
    const login = await httpsGet(`${s.url}/login`, ca);
    expect(login.status).toBe(200);
    const loginCookie = named(login.cookies, 'ferry_login')!;
    expect(loginCookie).toMatch(/; secure/i);
    expect(loginCookie).toMatch(/; httponly/i);
    expect(loginCookie).toMatch(/; samesite=strict/i);
    const token = /name="login" value="([^"]+)"/.exec(login.body)![1]!;
    const signed = await httpsPost(`${s.url}/login`, ca, loginCookie.split(';')[0]!, {
      login: token,
      user: 'admin',
      password: s.password!,
    });
    expect(signed.status).toBe(303);
    const session = named(signed.cookies, 'ferry_session')!;
    expect(session).toMatch(/; secure/i);
    expect(session).toMatch(/; httponly/i);
    // the session works over TLS
    const home = await httpsGet(`${s.url}/`, ca, { cookie: session.split(';')[0]! });
    expect(home.status).toBe(200);
    expect(home.body).toContain('Dashboard');
    // a client that does not trust the certificate is refused before any byte of HTTP
    await expect(httpsGet(`${s.url}/login`, undefined)).rejects.toThrow(/self[- ]signed|certificate/i);
  });

  it('marks cookies Secure over plain HTTP only when told a TLS proxy stands in front', async () => {
    const proxied = await startServerProc(join(dir, 'proxied'), ['--cookie-secure']);
    running.push(proxied);
    const plain = await startServerProc(join(dir, 'plain'));
    running.push(plain);
    const cookieOf = async (url: string) =>
      (await fetch(`${url}/login`)).headers.getSetCookie().find((c) => c.startsWith('ferry_login='))!;
    expect(proxied.url).toMatch(/^http:/);
    expect(await cookieOf(proxied.url)).toMatch(/; secure/i);
    expect(await cookieOf(plain.url)).not.toMatch(/; secure/i);
    expect(await cookieOf(plain.url)).toMatch(/; httponly/i);
  });

  it('refuses a certificate without its key (usage) or with another key (TLS_INVALID), serving nothing', async () => {
    const data = join(dir, 'bad');
    const half = await ferry([
      'server',
      'start',
      '--data',
      data,
      '--listen',
      '127.0.0.1:0',
      '--tls-cert',
      cert,
    ]);
    expect(half.code).toBe(2);
    expect(half.stderr).toMatch(/--tls-cert and --tls-key go together/);
    const other = selfSigned('other');
    const mixed = await ferry([
      'server',
      'start',
      '--data',
      data,
      '--listen',
      '127.0.0.1:0',
      '--tls-cert',
      cert,
      '--tls-key',
      other.key,
    ]);
    expect(mixed.code).toBe(1);
    expect(mixed.stderr).toMatch(/TLS_INVALID/);
    const missing = await ferry([
      'server',
      'start',
      '--data',
      data,
      '--listen',
      '127.0.0.1:0',
      '--tls-cert',
      join(dir, 'nope.crt'),
      '--tls-key',
      key,
    ]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/TLS_INVALID/);
  });
});
