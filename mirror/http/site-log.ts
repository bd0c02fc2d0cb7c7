/**
 * `GET /v1/site-log?after=N`: the site log entries this mirror holds after its
 * seq N, oldest first, a page at most (docs/mirror.md "Site log"):
 * `{entries: [envelope…], next, head}`. Each entry is signed by the mirror
 * that decided it, so a reader needs no trust in this route; but enrolments
 * name agents' hosts, groups and keys and decisions name operators, so the
 * route answers only the mirrors of this site the operator listed
 * (`--peer-key`), each asking with a request signed by its own key
 * (core/link-auth.ts), once per nonce, within the time window.
 */
import Router from '@koa/router';
import {
  LINK_AUTH_HEADER,
  LINK_AUTH_STATUS,
  LinkAuthError,
  LinkNonces,
  verifyLinkRequest,
} from '../../core/link-auth.js';
import { SITE_LOG_LIMITS } from '../../core/site-log.js';
import type { SiteLog } from '../site-log.js';
import { HttpError } from './errors.js';

export function siteLogRouter(log: SiteLog, now: () => number = Date.now): Router {
  const router = new Router({ prefix: '/v1/site-log' });
  const nonces = new LinkNonces();
  const known = (id: string) => {
    const publicKey = log.mirrors.get(id);
    return publicKey && { site: log.site, publicKey };
  };
  router.get('/', (ctx) => {
    try {
      const header = ctx.get(LINK_AUTH_HEADER) || undefined;
      const p = verifyLinkRequest(header, { method: ctx.method, path: ctx.url, now: now() }, known);
      if (!nonces.take(p.nonce, now()))
        throw new LinkAuthError('REPLAY', `site log request nonce ${p.nonce} was used before`);
    } catch (e) {
      if (e instanceof LinkAuthError) throw new HttpError(LINK_AUTH_STATUS[e.code], e.code, e.message);
      throw e;
    }
    const raw = ctx.query.after ?? '0';
    if (typeof raw !== 'string' || !/^\d{1,15}$/.test(raw))
      throw new HttpError(400, 'BAD_REQUEST', 'after must be a sequence number');
    const { entries, next } = log.after(Number(raw), SITE_LOG_LIMITS.maxPerPage);
    ctx.set('Cache-Control', 'no-store');
    ctx.body = { entries, next, head: log.head };
  });
  return router;
}
