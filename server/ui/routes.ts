/**
 * The web UI's routes: sign-in, the pages, and the forms that change something. Reading needs a
 * signed-in user; every POST needs an admin and the session's CSRF token (server/auth-http.ts).
 * Errors come back as a page naming the code; a refused form changes nothing.
 */
import Router from '@koa/router';
import { randomBytes } from 'node:crypto';
import type { Context, Next } from 'koa';
import { readFormBody } from '../../platform/http/server-body.js';
import { authOf, checkCsrf, LOGIN_COOKIE, SESSION_COOKIE, SignInNeeded } from '../auth-http.js';
import { errorPage, loginPage } from './layout.js';
import { catalogRoutes } from './routes-catalog.js';
import { fleetRoutes } from './routes-fleet.js';
import { FORM_BYTES, send, uiKit, viewer, viewerOf, type UiDeps } from './routes-kit.js';
import { rolloutRoutes } from './routes-rollouts.js';

export type { UiDeps } from './routes-kit.js';

/** Pages answer errors as pages (status and code kept); the API keeps its JSON. */
export function uiErrors(d: UiDeps) {
  return async function pageErrors(ctx: Context, next: Next): Promise<void> {
    try {
      await next();
    } catch (e) {
      if (e instanceof SignInNeeded) {
        ctx.redirect('/login');
        return;
      }
      const p = d.toPublic(e);
      if (!p.expected || p.status >= 500)
        d.log.error('ui.error', { path: ctx.path, error: e instanceof Error ? e.message : String(e) });
      ctx.status = p.status;
      ctx.type = 'html';
      ctx.body = errorPage(viewerOf(ctx), p.status, p.body.code, p.body.message);
    }
  };
}

export function uiRouter(d: UiDeps): Router {
  const r = new Router();
  const k = uiKit(d);
  const { done } = k;
  const str = (x: string | string[] | undefined) => (typeof x === 'string' ? x : undefined);
  const secure = d.cookieSecure === true;
  const cookieOpts = { httpOnly: true, sameSite: 'strict' as const, path: '/', overwrite: true, secure };
  // Behind a TLS-terminating proxy the request reaches us in plain HTTP; the browser's is HTTPS.
  const cookies = (ctx: Context) => {
    if (secure) ctx.cookies.secure = true;
    return ctx.cookies;
  };

  r.get('/login', (ctx) => {
    const token = randomBytes(24).toString('base64url');
    cookies(ctx).set(LOGIN_COOKIE, token, { ...cookieOpts, maxAge: 15 * 60_000 });
    send(ctx, loginPage(token));
  });

  r.post('/login', async (ctx) => {
    const form = await readFormBody(ctx, 16 * 1024);
    const user = str(form.user) ?? '';
    const password = str(form.password) ?? '';
    const cookie = ctx.cookies.get(LOGIN_COOKIE);
    const fresh = randomBytes(24).toString('base64url');
    cookies(ctx).set(LOGIN_COOKIE, fresh, { ...cookieOpts, maxAge: 15 * 60_000 });
    const again = (status: number, code: string, message: string) => {
      ctx.status = status;
      send(ctx, loginPage(fresh, `${code}: ${message}`));
    };
    if (!cookie || typeof form.login !== 'string' || form.login !== cookie)
      return again(403, 'CSRF_REJECTED', 'the sign-in form expired or came from elsewhere; try again');
    const keys = [`ip:${ctx.ip}`, `user:${user}`];
    const wait = d.limiter.retryAfter(keys);
    if (wait > 0) {
      ctx.set('Retry-After', String(wait));
      return again(429, 'RATE_LIMITED', `too many failed sign-ins; try again in ${wait}s`);
    }
    const role =
      user.length <= 64 && password.length <= 1024 ? await d.access.checkPassword(user, password) : undefined;
    if (!role) {
      d.limiter.fail(keys);
      await d.audit.append(user.slice(0, 64) || '-', 'login.failed', { ip: ctx.ip });
      return again(401, 'UNAUTHENTICATED', 'wrong user or password');
    }
    const { id } = d.sessions.create(user, role);
    cookies(ctx).set(SESSION_COOKIE, id, cookieOpts);
    cookies(ctx).set(LOGIN_COOKIE, null, cookieOpts);
    await d.audit.append(user, 'login', { ip: ctx.ip, role });
    done(ctx, '/');
  });

  r.post('/logout', async (ctx) => {
    const v = viewer(ctx);
    const form = await readFormBody(ctx, FORM_BYTES);
    checkCsrf(ctx, form.csrf);
    d.sessions.end(authOf(ctx).sessionId);
    cookies(ctx).set(SESSION_COOKIE, null, cookieOpts);
    await d.audit.append(v.user, 'logout', {});
    done(ctx, '/login');
  });

  for (const area of [fleetRoutes, catalogRoutes, rolloutRoutes]) area(r, d, k);
  return r;
}
