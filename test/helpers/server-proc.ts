/**
 * `ferry server start` as a real process, and a small browser-like client for its UI: a cookie jar,
 * form posts, the CSRF token read from the page as a browser would submit it.
 */
import { expect } from 'vitest';
import { followLogs, spawnFerry, type LoggedProc } from './mirror-proc.js';

export interface ServerProc extends LoggedProc {
  url: string;
  /** The admin's one-time password when this start created it. */
  password?: string;
  stdout(): string;
}

export async function startServerProc(data: string, extra: string[] = []): Promise<ServerProc> {
  const c = spawnFerry(['server', 'start', '--data', data, '--listen', '127.0.0.1:0', ...extra]);
  const p = followLogs(c, 'server');
  const started = await p.waitForLog((l) => l.event === 'server.started', 60_000);
  // the first-start line is printed right after the server listens
  const deadline = Date.now() + 20_000;
  while (!/web UI: |one-time password/.test(c.stdout()) && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 20));
  const pw = /one-time password[^:]*: ([a-z0-9]+)/.exec(c.stdout())?.[1];
  return { ...p, url: String(started.url), stdout: c.stdout, ...(pw && { password: pw }) };
}

export interface Answer {
  status: number;
  location: string | null;
  text: string;
  headers: Headers;
}

/** A browser without JavaScript: keeps cookies, posts forms, does not follow redirects by itself. */
export class Browser {
  readonly cookies = new Map<string, string>();

  constructor(readonly base: string) {}

  private keep(res: Response): void {
    for (const c of res.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const i = pair!.indexOf('=');
      const name = pair!.slice(0, i);
      const value = pair!.slice(i + 1);
      if (value === '' || /expires=Thu, 01 Jan 1970/i.test(c)) this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
  }

  private cookieHeader(): Record<string, string> {
    if (this.cookies.size === 0) return {};
    return { cookie: [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ') };
  }

  async get(path: string): Promise<Answer> {
    const res = await fetch(this.base + path, { headers: this.cookieHeader(), redirect: 'manual' });
    this.keep(res);
    return {
      status: res.status,
      location: res.headers.get('location'),
      text: await res.text(),
      headers: res.headers,
    };
  }

  async post(path: string, fields: Record<string, string | string[]>): Promise<Answer> {
    const body = new URLSearchParams();
    for (const [k, v] of Object.entries(fields))
      for (const x of Array.isArray(v) ? v : [v]) body.append(k, x);
    const res = await fetch(this.base + path, {
      method: 'POST',
      headers: { ...this.cookieHeader(), 'content-type': 'application/x-www-form-urlencoded' },
      body: body.toString(),
      redirect: 'manual',
    });
    this.keep(res);
    return {
      status: res.status,
      location: res.headers.get('location'),
      text: await res.text(),
      headers: res.headers,
    };
  }

  /** The CSRF token the page's forms carry (what a browser submits with them). */
  async csrf(path = '/'): Promise<string> {
    const page = await this.get(path);
    const m = /name="csrf" value="([^"]+)"/.exec(page.text);
    expect(m, `no csrf field on ${path}: ${page.status} ${page.text.slice(0, 200)}`).not.toBeNull();
    return m![1]!;
  }

  async login(user: string, password: string): Promise<Answer> {
    const form = await this.get('/login');
    const token = /name="login" value="([^"]+)"/.exec(form.text)![1]!;
    return this.post('/login', { login: token, user, password });
  }
}

export async function api(
  base: string,
  method: string,
  path: string,
  token: string | undefined,
  body?: unknown,
): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(base + path, {
    method,
    headers: {
      ...(token && { authorization: `Bearer ${token}` }),
      ...(body !== undefined && { 'content-type': 'application/json' }),
    },
    ...(body !== undefined && { body: typeof body === 'string' ? body : JSON.stringify(body) }),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}
