/**
 * Who is asking, for every route but telemetry ingest (which authenticates each batch by its
 * signature) and liveness: a bearer token (`Authorization: Bearer ferry_…`, for the API) or a session
 * cookie (the browser). Guards say what a route needs: a signed-in viewer to read, an admin to change
 * anything, and — for a browser session, whose cookie the browser sends by itself — the session's
 * CSRF token on every POST.
 */
import type { Context, Next } from 'koa';
import { HttpError } from '../platform/http/server-errors.js';
import {
  sameToken,
  type AccessStore,
  type Principal,
  type Role,
  type Session,
  type Sessions,
} from './access.js';

export const SESSION_COOKIE = 'ferry_session';
export const LOGIN_COOKIE = 'ferry_login';

export interface AuthState {
  principal?: Principal;
  session?: Session;
  sessionId?: string;
}

export const authOf = (ctx: Context): AuthState => ctx.state;

export function authenticate(access: AccessStore, sessions: Sessions) {
  return async function auth(ctx: Context, next: Next): Promise<void> {
    const st = authOf(ctx);
    const header = ctx.get('Authorization');
    if (header) {
      const m = /^Bearer ([!-~]{1,200})$/.exec(header);
      const p = m ? await access.checkToken(m[1]!) : undefined;
      if (!p)
        throw new HttpError(401, 'UNAUTHENTICATED', 'the bearer token is not valid', {
          headers: { 'WWW-Authenticate': 'Bearer' },
        });
      st.principal = p;
    } else {
      const id = ctx.cookies.get(SESSION_COOKIE);
      const s = sessions.get(id);
      if (s && id) {
        st.session = s;
        st.sessionId = id;
        st.principal = { user: s.user, role: s.role, via: 'session' };
      }
    }
    await next();
  };
}

/** Thrown when a browser without a session asks for a page: the UI answers with the sign-in page. */
export class SignInNeeded extends Error {}

/** The principal, when it has `role` (admin ⊇ viewer); 401 (or sign-in) without one, 403 below it. */
export function need(ctx: Context, role: Role, page = false): Principal {
  const p = authOf(ctx).principal;
  if (!p) {
    if (page) throw new SignInNeeded();
    throw new HttpError(401, 'UNAUTHENTICATED', 'sign in, or send a bearer token', {
      headers: { 'WWW-Authenticate': 'Bearer' },
    });
  }
  if (role === 'admin' && p.role !== 'admin')
    throw new HttpError(403, 'FORBIDDEN', `${p.user} is a viewer; this needs an admin`);
  return p;
}

/** A session's POST must carry its CSRF token (form field `csrf` or header `X-CSRF-Token`); a bearer's need not. */
export function checkCsrf(ctx: Context, fromForm: unknown): void {
  const st = authOf(ctx);
  if (st.principal?.via !== 'session') return;
  const given = typeof fromForm === 'string' ? fromForm : ctx.get('X-CSRF-Token');
  if (!st.session || !given || !sameToken(given, st.session.csrf))
    throw new HttpError(
      403,
      'CSRF_REJECTED',
      'the form is missing its CSRF token or it is not this session’s; reload the page',
    );
}
