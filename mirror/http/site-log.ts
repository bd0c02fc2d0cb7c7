/**
 * `GET /v1/site-log?after=N`: the site log entries this mirror holds after its
 * seq N, oldest first, a page at most (docs/mirror.md "Site log"):
 * `{entries: [envelope…], next, head}`. Peers pull with it; each entry is
 * signed by the mirror that decided it, so the route needs no trust of its own.
 */
import Router from '@koa/router';
import { SITE_LOG_LIMITS } from '../../core/site-log.js';
import type { SiteLog } from '../site-log.js';
import { HttpError } from './errors.js';

export function siteLogRouter(log: SiteLog): Router {
  const router = new Router({ prefix: '/v1/site-log' });
  router.get('/', (ctx) => {
    const raw = ctx.query.after ?? '0';
    if (typeof raw !== 'string' || !/^\d{1,15}$/.test(raw))
      throw new HttpError(400, 'BAD_REQUEST', 'after must be a sequence number');
    const { entries, next } = log.after(Number(raw), SITE_LOG_LIMITS.maxPerPage);
    ctx.set('Cache-Control', 'no-store');
    ctx.body = { entries, next, head: log.head };
  });
  return router;
}
