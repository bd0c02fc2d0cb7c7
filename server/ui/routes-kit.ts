/**
 * What every route of the web UI shares: its dependencies, who is signed in, and the helpers that
 * answer a page, read a query and take an admin's form (role first, then the body, then its CSRF
 * token).
 */
import type Router from '@koa/router';
import type { Context } from 'koa';
import { readFormBody } from '../../platform/http/server-body.js';
import { HttpError, type PublicError } from '../../platform/http/server-errors.js';
import type { Logger } from '../../platform/log.js';
import type { AccessStore, LoginLimiter, Sessions } from '../access.js';
import type { Ctx } from '../actions.js';
import type { AuditLog } from '../audit.js';
import { authOf, checkCsrf, need } from '../auth-http.js';
import type { Catalog } from '../catalog.js';
import type { ServerStore } from '../store.js';
import type { Viewer } from './layout.js';

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
  /** Seconds between live updates of the rollout pages. */
  refreshSec?: number;
  /** Cookies marked Secure: the server serves TLS, or sits behind a proxy that does. */
  cookieSecure?: boolean;
}

export const FORM_BYTES = 256 * 1024;

export function viewerOf(ctx: Context): Viewer | undefined {
  const st = authOf(ctx);
  return st.principal && st.session
    ? { user: st.principal.user, role: st.principal.role, csrf: st.session.csrf }
    : undefined;
}

export function viewer(ctx: Context, role: 'viewer' | 'admin' = 'viewer'): Viewer {
  need(ctx, role, true);
  const v = viewerOf(ctx);
  if (!v) throw new HttpError(401, 'UNAUTHENTICATED', 'pages need a signed-in browser session');
  return v;
}

export function send(ctx: Context, body: string): void {
  ctx.type = 'html';
  ctx.set('Cache-Control', 'no-store');
  ctx.body = body;
}

export const q = (ctx: Context, k: string): string | undefined => {
  const v = ctx.query[k];
  return typeof v === 'string' && v !== '' ? v : undefined;
};

export function pageNumber(ctx: Context): number {
  const p = q(ctx, 'page') ?? '1';
  if (!/^[1-9][0-9]{0,6}$/.test(p)) throw new HttpError(400, 'BAD_REQUEST', 'page must be a number from 1');
  return Number(p);
}

export interface Kit {
  size: number;
  act: (ctx: Context, v: Viewer) => Ctx;
  adminForm: (
    ctx: Context,
    lists?: string[],
  ) => Promise<{ v: Viewer; form: Record<string, string | string[]> }>;
  done: (ctx: Context, to: string) => void;
}

export function uiKit(d: UiDeps): Kit {
  return {
    size: d.pageSize ?? 50,
    act: (ctx, v) => ({
      dataDir: d.store.dir,
      catalog: d.catalog,
      audit: d.audit,
      actor: v.user,
      ...(ctx.state.now instanceof Date && { now: ctx.state.now }),
    }),
    adminForm: async (ctx, lists = []) => {
      const v = viewer(ctx, 'admin');
      const form = await readFormBody(ctx, FORM_BYTES, lists);
      checkCsrf(ctx, form.csrf);
      return { v, form };
    },
    done: (ctx, to) => {
      ctx.status = 303;
      ctx.redirect(to);
    },
  };
}

export type AreaRoutes = (r: Router, d: UiDeps, k: Kit) => void;
