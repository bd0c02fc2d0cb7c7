/**
 * The web UI's routes: sign-in, the pages, and the forms that change something. Reading needs a
 * signed-in user; every POST needs an admin and the session's CSRF token (server/auth-http.ts).
 * Errors come back as a page naming the code; a refused form changes nothing.
 */
import Router from '@koa/router';
import { createReadStream } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { Context, Next } from 'koa';
import { readFormBody } from '../../platform/http/server-body.js';
import { HttpError, type PublicError } from '../../platform/http/server-errors.js';
import type { Logger } from '../../platform/log.js';
import type { AccessStore, LoginLimiter, Sessions } from '../access.js';
import {
  bulk,
  buildBundle,
  registerRelease,
  registerSite,
  setPin,
  storeArtifact,
  type Ctx,
} from '../actions.js';
import type { AuditLog } from '../audit.js';
import { authOf, checkCsrf, LOGIN_COOKIE, need, SESSION_COOKIE, SignInNeeded } from '../auth-http.js';
import type { Catalog } from '../catalog.js';
import { agentOf, coverageGaps, mirrorOf, parkedOf } from '../fleet-state.js';
import { queryAgents, rolloutsOf, siteHealth, type AgentFilter } from '../fleet-query.js';
import type { ServerStore } from '../store.js';
import { errorPage, loginPage, type Viewer } from './layout.js';
import {
  agentPage,
  agentsPage,
  auditPage,
  bundlesPage,
  dashboardPage,
  releasesPage,
  rolloutsPage,
  sitesPage,
} from './pages.js';
import { readUpload } from './upload.js';

export interface UiDeps {
  store: ServerStore;
  access: AccessStore;
  sessions: Sessions;
  limiter: LoginLimiter;
  catalog: Catalog;
  audit: AuditLog;
  log: Logger;
  toPublic: (e: unknown) => PublicError;
  pageSize?: number;
  maxUploadBytes?: number;
  /** Seconds between reloads of the live rollout page. */
  refreshSec?: number;
}

const FORM_BYTES = 256 * 1024;
const cookieOpts = { httpOnly: true, sameSite: 'strict' as const, path: '/', overwrite: true };

function viewerOf(ctx: Context): Viewer | undefined {
  const st = authOf(ctx);
  return st.principal && st.session
    ? { user: st.principal.user, role: st.principal.role, csrf: st.session.csrf }
    : undefined;
}

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

function viewer(ctx: Context, role: 'viewer' | 'admin' = 'viewer'): Viewer {
  need(ctx, role, true);
  const v = viewerOf(ctx);
  if (!v) throw new HttpError(401, 'UNAUTHENTICATED', 'pages need a signed-in browser session');
  return v;
}

function send(ctx: Context, body: string): void {
  ctx.type = 'html';
  ctx.set('Cache-Control', 'no-store');
  ctx.body = body;
}

const q = (ctx: Context, k: string): string | undefined => {
  const v = ctx.query[k];
  return typeof v === 'string' && v !== '' ? v : undefined;
};

function pageNumber(ctx: Context): number {
  const p = q(ctx, 'page') ?? '1';
  if (!/^[1-9][0-9]{0,6}$/.test(p)) throw new HttpError(400, 'BAD_REQUEST', 'page must be a number from 1');
  return Number(p);
}

export function uiRouter(d: UiDeps): Router {
  const r = new Router();
  const size = d.pageSize ?? 50;
  const act = (ctx: Context, v: Viewer): Ctx => ({
    dataDir: d.store.dir,
    catalog: d.catalog,
    audit: d.audit,
    actor: v.user,
    ...(ctx.state.now instanceof Date && { now: ctx.state.now }),
  });

  /** An admin's form: role first (before the body is read), then the body, then its CSRF token. */
  async function adminForm(ctx: Context, lists: string[] = []) {
    const v = viewer(ctx, 'admin');
    const form = await readFormBody(ctx, FORM_BYTES, lists);
    checkCsrf(ctx, form.csrf);
    return { v, form };
  }
  const done = (ctx: Context, to: string) => {
    ctx.status = 303;
    ctx.redirect(to);
  };
  const str = (x: string | string[] | undefined) => (typeof x === 'string' ? x : undefined);

  r.get('/login', (ctx) => {
    const token = randomBytes(24).toString('base64url');
    ctx.cookies.set(LOGIN_COOKIE, token, { ...cookieOpts, maxAge: 15 * 60_000 });
    send(ctx, loginPage(token));
  });

  r.post('/login', async (ctx) => {
    const form = await readFormBody(ctx, 16 * 1024);
    const user = str(form.user) ?? '';
    const password = str(form.password) ?? '';
    const cookie = ctx.cookies.get(LOGIN_COOKIE);
    const fresh = randomBytes(24).toString('base64url');
    ctx.cookies.set(LOGIN_COOKIE, fresh, { ...cookieOpts, maxAge: 15 * 60_000 });
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
    ctx.cookies.set(SESSION_COOKIE, id, cookieOpts);
    ctx.cookies.set(LOGIN_COOKIE, null, cookieOpts);
    await d.audit.append(user, 'login', { ip: ctx.ip, role });
    done(ctx, '/');
  });

  r.post('/logout', async (ctx) => {
    const v = viewer(ctx);
    const form = await readFormBody(ctx, FORM_BYTES);
    checkCsrf(ctx, form.csrf);
    d.sessions.end(authOf(ctx).sessionId);
    ctx.cookies.set(SESSION_COOKIE, null, cookieOpts);
    await d.audit.append(v.user, 'logout', {});
    done(ctx, '/login');
  });

  r.get('/', async (ctx) => {
    const v = viewer(ctx);
    const s = d.store.state;
    const catalog = await d.catalog.read();
    const health = siteHealth(s, catalog, Date.now());
    const alerts: string[] = [];
    for (const [site, list] of Object.entries(s.rollouts ?? {})) {
      const last = list.at(-1)?.rollout;
      if (last?.event === 'halted')
        alerts.push(
          `site ${site}: rollout to ${last.version} HALTED at wave ${last.wave + 1}: ${last.reason}`,
        );
    }
    for (const m of d.store.mirrors.list()) {
      const gaps = coverageGaps(s, m.id);
      if (gaps.length)
        alerts.push(
          `mirror ${m.id.slice(0, 12)} (site ${m.site}): telemetry gaps ${gaps
            .slice(0, 3)
            .map(([a, b]) => (a === b ? a : `${a}-${b}`))
            .join(', ')}`,
        );
      if (!mirrorOf(s, m.id))
        alerts.push(`mirror ${m.id.slice(0, 12)} (site ${m.site}): nothing received yet`);
    }
    for (const h of health) if (h.failing) alerts.push(`site ${h.site}: ${h.failing} agent(s) failing`);
    send(
      ctx,
      dashboardPage(v, health, alerts, {
        agents: Object.keys(s.agents).length,
        rejections: s.totals.rejections,
      }),
    );
  });

  r.get('/agents', async (ctx) => {
    const v = viewer(ctx);
    const catalog = await d.catalog.read();
    const f: AgentFilter = {};
    const site = q(ctx, 'site');
    const version = q(ctx, 'version');
    if (site) f.site = site;
    if (version) f.version = version;
    for (const k of ['behind', 'failing', 'silent'] as const) if (q(ctx, k) === '1') f[k] = true;
    const n = pageNumber(ctx);
    const page = queryAgents(d.store.state, catalog, f, (n - 1) * size, size, Date.now());
    const params = new URLSearchParams();
    for (const [k, x] of Object.entries(f)) params.set(k, x === true ? '1' : String(x));
    const sites = [
      ...new Set([...Object.keys(catalog.sites), ...d.store.mirrors.list().map((m) => m.site)]),
    ].sort();
    send(ctx, agentsPage(v, f, page, size, params.toString(), catalog, sites, Date.now()));
  });

  r.post('/agents/bulk', async (ctx) => {
    const { v, form } = await adminForm(ctx, ['agents']);
    const n = await bulk(act(ctx, v), d.store.state, form.action, form.agents, form.value);
    ctx.set('X-Ferry-Count', String(n));
    done(ctx, '/agents');
  });

  r.get('/agents/:id', (ctx) => {
    const v = viewer(ctx);
    const a = agentOf(d.store.state, ctx.params.id ?? '');
    if (!a) throw new HttpError(404, 'UNKNOWN_AGENT', 'no such agent');
    send(ctx, agentPage(v, a, parkedOf(d.store.state, a.id)?.length ?? 0));
  });

  r.get('/releases', async (ctx) => {
    const v = viewer(ctx);
    const c = await d.catalog.read();
    const history = new Map<string, { committed: number; failed: number }>();
    for (const list of Object.values(d.store.state.rollouts ?? {})) {
      const latest = new Map<string, { version: string; committed: number; failed: number }>();
      for (const e of list)
        if (e.rollout.counts)
          latest.set(`${e.rollout.rolloutId}/${e.rollout.wave}`, {
            version: e.rollout.version,
            committed: e.rollout.counts.committed,
            failed: e.rollout.counts.failed + e.rollout.counts.rolledBack,
          });
      for (const x of latest.values()) {
        const h = history.get(x.version) ?? { committed: 0, failed: 0 };
        h.committed += x.committed;
        h.failed += x.failed;
        history.set(x.version, h);
      }
    }
    send(ctx, releasesPage(v, Object.values(c.artifacts), Object.values(c.releases), history));
  });

  r.post('/releases/artifacts', async (ctx) => {
    const v = viewer(ctx, 'admin');
    const up = await readUpload(ctx, join(d.store.dir, 'tmp'), d.maxUploadBytes ?? 4 * 1024 ** 3);
    try {
      checkCsrf(ctx, up.fields.csrf);
      if (!up.file) throw new HttpError(400, 'BAD_INPUT', 'choose a file to upload');
      const meta: Record<string, string> = { ...up.fields };
      delete meta.csrf;
      await storeArtifact(act(ctx, v), meta, up.file);
    } finally {
      await up.cleanup();
    }
    done(ctx, '/releases');
  });

  r.post('/releases', async (ctx) => {
    const { v, form } = await adminForm(ctx, ['artifact']);
    await registerRelease(act(ctx, v), form.name, form.version, form.artifact);
    done(ctx, '/releases');
  });

  r.get('/sites', async (ctx) => {
    const v = viewer(ctx);
    const c = await d.catalog.read();
    const mirrors = d.store.mirrors.list().map((m) => ({
      id: m.id,
      site: m.site,
      lastExportAt: mirrorOf(d.store.state, m.id)?.lastExportAt ?? null,
    }));
    send(ctx, sitesPage(v, Object.values(c.sites), mirrors, Object.keys(c.releases)));
  });

  r.post('/sites', async (ctx) => {
    const { v, form } = await adminForm(ctx);
    await registerSite(act(ctx, v), form.name, form.publisher, form.sequence);
    done(ctx, '/sites');
  });

  r.post('/sites/:site/pins', async (ctx) => {
    const { v, form } = await adminForm(ctx);
    await setPin(act(ctx, v), ctx.params.site ?? '', form.target, form.version ?? '');
    done(ctx, '/sites');
  });

  r.get('/sites/:site/rollouts', (ctx) => {
    const v = viewer(ctx);
    const site = ctx.params.site ?? '';
    send(ctx, rolloutsPage(v, site, rolloutsOf(d.store.state, site), d.refreshSec ?? 5));
  });

  r.get('/bundles', async (ctx) => {
    const v = viewer(ctx);
    send(ctx, bundlesPage(v, (await d.catalog.read()).bundles));
  });

  r.post('/bundles', async (ctx) => {
    const { v, form } = await adminForm(ctx);
    await buildBundle(act(ctx, v), form.site, form.release, form.strategy, {
      signed: form.unsigned !== '1',
      full: form.full === '1',
    });
    done(ctx, '/bundles');
  });

  r.get('/bundles/:id/file', async (ctx) => {
    viewer(ctx);
    const b = (await d.catalog.read()).bundles.find((x) => x.id === ctx.params.id);
    if (!b) throw new HttpError(404, 'UNKNOWN_BUNDLE', 'no such bundle');
    ctx.type = 'application/octet-stream';
    ctx.attachment(`${b.id}.ferry`);
    ctx.body = createReadStream(b.file);
  });

  r.get('/audit', async (ctx) => {
    const v = viewer(ctx);
    const n = pageNumber(ctx);
    const { total, entries } = await d.audit.page((n - 1) * size, size);
    send(ctx, auditPage(v, total, (n - 1) * size, size, entries));
  });

  return r;
}
