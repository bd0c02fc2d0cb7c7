/**
 * Who may do what on `ferry server start`, each defence attacked on the real process: reading without
 * signing in, a wrong or forged bearer token, a viewer changing something, a form posted without its
 * session's CSRF token (what a hostile page makes a signed-in browser do), a sign-in form posted from
 * elsewhere, password guessing. Every refusal names its code and leaves the data directory as it was.
 * Telemetry ingest keeps its own signed-batch authentication and needs no sign-in.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ferry, snapshotDir, tempDir } from './helpers/fixtures.js';
import { killStrays } from './helpers/mirror-proc.js';
import { batch, enrolment, heartbeat, makeAgent, makeMirror } from './helpers/server-fixtures.js';
import { api, Browser, startServerProc, type ServerProc } from './helpers/server-proc.js';

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('ferry-server-access-'));
});
afterAll(async () => {
  await killStrays();
  await cleanup();
});

/** The data directory less what reading it may touch (the server's own checkpoint and lock). */
async function durable(data: string) {
  const s = await snapshotDir(data);
  for (const k of Object.keys(s)) if (k === 'state.json' || k === 'lock' || k.startsWith('tmp/')) delete s[k];
  return s;
}

async function token(data: string, user: string): Promise<string> {
  const r = await ferry(['server', 'token', 'create', '--data', data, '--user', user]);
  expect(r.code, r.stderr).toBe(0);
  return r.stdout.trim();
}

describe('access to the server', () => {
  let s: ServerProc;
  let data: string;
  let adminToken: string;
  let viewerToken: string;
  let viewerPassword: string;

  beforeAll(async () => {
    data = join(dir, 'data');
    s = await startServerProc(data);
    const m = await makeMirror(dir, 'm1', 'plant-7');
    expect(
      (await ferry(['server', 'register-mirror', '--data', data, '--site', 'plant-7', '--pub', m.pubPath]))
        .code,
    ).toBe(0);
    const v = await ferry([
      'server',
      'user',
      'add',
      '--data',
      data,
      '--name',
      'vera',
      '--role',
      'viewer',
      '--json',
    ]);
    expect(v.code, v.stderr).toBe(0);
    viewerPassword = (JSON.parse(v.stdout) as { password: string }).password;
    adminToken = await token(data, 'admin');
    viewerToken = await token(data, 'vera');
    // telemetry needs no sign-in: the batch's signature is its authentication
    const a = makeAgent();
    const res = await fetch(`${s.url}/v1/telemetry`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ batches: [batch(m, 1, 2, [enrolment(a, 1), heartbeat(a, 2, 1)])] }),
    });
    expect(res.status).toBe(202);
  }, 120_000);
  afterAll(async () => {
    await s?.stop();
  });

  it('first start makes the admin with a one-time password, kept only as a scrypt hash; a second start does not', async () => {
    expect(s.password).toMatch(/^[a-z0-9]{20}$/);
    const access = await readFile(join(data, 'access.json'), 'utf8');
    expect(access).not.toContain(s.password!);
    expect(access).not.toContain(viewerPassword);
    expect(access).not.toContain(adminToken.split('_')[2]!);
    const b = new Browser(s.url);
    expect((await b.login('admin', s.password!)).status).toBe(303);
    // a second start of another data dir with users already there prints no password
    const again = await ferry([
      'server',
      'user',
      'add',
      '--data',
      data,
      '--name',
      'admin',
      '--role',
      'admin',
    ]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/USER_EXISTS/);
  });

  it('signing in sets an HttpOnly, SameSite=Strict session cookie; a wrong password is refused', async () => {
    const b = new Browser(s.url);
    const bad = await b.login('admin', 'not-the-password');
    expect(bad.status).toBe(401);
    expect(bad.text).toContain('UNAUTHENTICATED');
    expect(b.cookies.has('ferry_session')).toBe(false);
    const form = await b.get('/login');
    const tokenValue = /name="login" value="([^"]+)"/.exec(form.text)![1]!;
    const res = await fetch(`${s.url}/login`, {
      method: 'POST',
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        cookie: `ferry_login=${b.cookies.get('ferry_login')}`,
      },
      body: new URLSearchParams({ login: tokenValue, user: 'admin', password: s.password! }).toString(),
      redirect: 'manual',
    });
    expect(res.status).toBe(303);
    const cookie = res.headers.getSetCookie().find((c) => c.startsWith('ferry_session='))!;
    expect(cookie).toMatch(/httponly/i);
    expect(cookie).toMatch(/samesite=strict/i);
  });

  it('nothing is read without signing in or a valid bearer token', async () => {
    expect((await new Browser(s.url).get('/agents')).location).toBe('/login');
    for (const path of ['/v1/agents', '/v1/fleet', '/v1/releases', '/v1/audit', '/v1/mirrors']) {
      const none = await api(s.url, 'GET', path, undefined);
      expect(none.status, path).toBe(401);
      expect(none.json.code).toBe('UNAUTHENTICATED');
      // a token of the right shape that the server never issued
      const forged = await api(s.url, 'GET', path, `ferry_${'0'.repeat(12)}_${'A'.repeat(43)}`);
      expect(forged.status).toBe(401);
      // an issued token's id with another secret
      const wrongSecret = await api(s.url, 'GET', path, viewerToken.replace(/_[^_]+$/, `_${'B'.repeat(43)}`));
      expect(wrongSecret.status).toBe(401);
    }
    const ok = await api(s.url, 'GET', '/v1/agents', viewerToken);
    expect(ok.status).toBe(200);
    expect((ok.json.agents as unknown[]).length).toBe(1);
  });

  it('a viewer can read but changes nothing, by API or by form', async () => {
    const before = await durable(data);
    const r = await api(s.url, 'POST', '/v1/sites', viewerToken, { name: 'ship-3' });
    expect(r.status).toBe(403);
    expect(r.json.code).toBe('FORBIDDEN');
    const b = new Browser(s.url);
    expect((await b.login('vera', viewerPassword)).status).toBe(303);
    const page = await b.get('/sites');
    expect(page.status).toBe(200);
    expect(page.text).not.toContain('Register a site'); // no forms drawn for a viewer
    const csrf = await b.csrf('/sites');
    for (const [path, fields] of [
      ['/sites', { name: 'ship-3' }],
      ['/sites/plant-7/pins', { target: 'group:scada', version: '1.0.0' }],
      ['/bundles', { site: 'plant-7', release: 'x@1' }],
      ['/releases', { name: 'r', version: '1', artifact: 'x' }],
      ['/agents/bulk', { action: 'pin', value: '1.0.0', agents: 'a' }],
    ] as [string, Record<string, string>][]) {
      const res = await b.post(path, { ...fields, csrf });
      expect(res.status, path).toBe(403);
      expect(res.text).toContain('FORBIDDEN');
    }
    // the one thing that changed: the audit log records the viewer's sign-in
    const after = await durable(data);
    delete before['audit/log.jsonl'];
    delete before['audit/head.json'];
    delete after['audit/log.jsonl'];
    delete after['audit/head.json'];
    expect(after).toEqual(before);
  });

  it("a form posted without the session's CSRF token is refused (a hostile page cannot act for an admin)", async () => {
    const b = new Browser(s.url);
    expect((await b.login('admin', s.password!)).status).toBe(303);
    const other = new Browser(s.url);
    await other.login('admin', s.password!);
    const othersToken = await other.csrf('/sites');
    const before = await durable(data);
    for (const csrf of [undefined, '', 'x', othersToken]) {
      const res = await b.post('/sites', { name: 'ship-3', ...(csrf !== undefined && { csrf }) });
      expect(res.status).toBe(403);
      expect(res.text).toContain('CSRF_REJECTED');
    }
    // a script on another page posting JSON with the browser's cookie: no X-CSRF-Token, refused
    const res = await fetch(`${s.url}/v1/sites`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        cookie: `ferry_session=${b.cookies.get('ferry_session')}`,
      },
      body: JSON.stringify({ name: 'ship-3' }),
    });
    expect(res.status).toBe(403);
    expect(((await res.json()) as { code: string }).code).toBe('CSRF_REJECTED');
    expect(await durable(data)).toEqual(before);
    // with its own token the same form works
    const ok = await b.post('/sites', { name: 'ship-3', csrf: await b.csrf('/sites') });
    expect(ok.status).toBe(303);
    expect((await api(s.url, 'GET', '/v1/sites', adminToken)).json.sites).toEqual(
      expect.arrayContaining([expect.objectContaining({ name: 'ship-3' })]),
    );
  });

  it('a sign-in form posted from elsewhere (no sign-in cookie to match) is refused', async () => {
    const res = await fetch(`${s.url}/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ login: 'forged', user: 'admin', password: s.password! }).toString(),
      redirect: 'manual',
    });
    expect(res.status).toBe(403);
    expect(await res.text()).toContain('CSRF_REJECTED');
    expect(res.headers.getSetCookie().some((c) => c.startsWith('ferry_session='))).toBe(false);
  });

  it('signing out ends the session: its cookie no longer opens a page', async () => {
    const b = new Browser(s.url);
    await b.login('admin', s.password!);
    const sid = b.cookies.get('ferry_session')!;
    expect((await b.post('/logout', { csrf: await b.csrf() })).location).toBe('/login');
    const res = await fetch(`${s.url}/agents`, {
      headers: { cookie: `ferry_session=${sid}` },
      redirect: 'manual',
    });
    expect(res.status).toBe(302);
    expect(res.headers.get('location')).toBe('/login');
  });
});

describe('password guessing', () => {
  it('is cut off after 5 failures (429 RATE_LIMITED), even when the next guess is right', async () => {
    const data = join(dir, 'guess');
    const s = await startServerProc(data);
    try {
      const b = new Browser(s.url);
      for (let i = 0; i < 5; i++) expect((await b.login('admin', `guess-${i}`)).status).toBe(401);
      const right = await b.login('admin', s.password!);
      expect(right.status).toBe(429);
      expect(right.text).toContain('RATE_LIMITED');
      expect(Number(right.headers.get('retry-after'))).toBeGreaterThan(0);
      expect(b.cookies.has('ferry_session')).toBe(false);
      const audit = await readFile(join(data, 'audit/log.jsonl'), 'utf8');
      expect(audit.match(/"login.failed"/g)).toHaveLength(5);
    } finally {
      await s.stop();
    }
  }, 60_000);
});
