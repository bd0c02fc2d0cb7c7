/**
 * The fleet as JSON, `GET /v1/fleet?page=&size=&filter=`, and the checks the
 * status page shares with it: the query (strict: a bad value is refused, not
 * guessed) and who may see per-agent detail. Under the default fleet view
 * `local`, only clients on the mirror's own host (a connection from 127.0.0.1
 * or ::1) may; `site` admits anyone who reaches the port (docs/decisions.md).
 * The peer address is the socket's: a forwarding header is never believed.
 */
import Router from '@koa/router';
import type { Context } from 'koa';
import type { Metrics } from '../metrics.js';
import type { StateView } from '../snapshot.js';
import type { FleetQuery, FleetReport, FleetService } from '../fleet-store.js';
import { MAX_PAGE_SIZE } from '../fleet-store.js';
import { ALERT_KINDS, FLEET_FILTERS, type FleetFilter } from '../fleet.js';
import { HttpError } from './errors.js';

export type FleetViewMode = 'local' | 'site';

export interface FleetHttp {
  service: FleetService;
  mode: FleetViewMode;
}

const LOOPBACK = new Set(['127.0.0.1', '::1', '::ffff:127.0.0.1']);

/** Whether this request may see per-agent detail. */
export function detailAllowed(ctx: Context, mode: FleetViewMode): boolean {
  return mode === 'site' || LOOPBACK.has(ctx.req.socket.remoteAddress ?? '');
}

function int(v: unknown, name: string, max: number): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !/^[1-9][0-9]{0,8}$/.test(v) || Number(v) > max)
    throw new HttpError(400, 'BAD_REQUEST', `${name} must be a whole number from 1 to ${max}`);
  return Number(v);
}

/** page, size and filter from a query string; anything else there is refused. */
export function parseFleetQuery(q: Record<string, unknown>): FleetQuery {
  for (const k of Object.keys(q))
    if (k !== 'page' && k !== 'size' && k !== 'filter')
      throw new HttpError(400, 'BAD_REQUEST', `unknown query parameter ${JSON.stringify(k)}`);
  const { filter } = q;
  if (filter !== undefined && !FLEET_FILTERS.includes(filter as FleetFilter))
    throw new HttpError(400, 'BAD_REQUEST', `filter must be one of ${FLEET_FILTERS.join(', ')}`);
  const page = int(q.page, 'page', 1_000_000);
  const size = int(q.size, 'size', MAX_PAGE_SIZE);
  return {
    ...(page !== undefined && { page }),
    ...(size !== undefined && { size }),
    ...(filter !== undefined && { filter: filter as FleetFilter }),
  };
}

export function fleetRouter(view: StateView, fleet: FleetHttp): Router {
  const router = new Router({ prefix: '/v1/fleet' });
  router.get('/', async (ctx) => {
    const q = parseFleetQuery(ctx.query);
    if (!detailAllowed(ctx, fleet.mode))
      throw new HttpError(
        403,
        'FLEET_VIEW_LOCAL',
        "the fleet is shown only on the mirror's own host (serve --fleet-view site shows it to the site)",
      );
    const snap = await view.current();
    ctx.set('Cache-Control', 'no-store');
    ctx.body = fleet.service.page(snap.active?.manifest ?? null, snap.active?.etag ?? '', q);
  });
  return router;
}

export function defineFleetMetrics(m: Metrics): void {
  m.define('ferry_agents', 'gauge', 'Agents enrolled here and not revoked.');
  m.define(
    'ferry_agents_behind',
    'gauge',
    'Agents running below the version the active manifest wants for them.',
  );
  m.define('ferry_agents_failing', 'gauge', 'Agents whose last update failed, rolled back or was refused.');
  m.define('ferry_agents_silent', 'gauge', 'Agents not heard from for longer than the silence threshold.');
  m.define('ferry_agents_doctor_failing', 'gauge', 'Agents whose latest doctor report has a failing check.');
  m.define('ferry_agents_by_version', 'gauge', 'Agents by the version they last reported.');
  m.define('ferry_alerts', 'gauge', 'Alerts standing now (1) or not (0), by kind.');
}

/** The fleet's gauges, from a report (set at each scrape). */
export function fleetGauges(m: Metrics, r: FleetReport): void {
  m.set('ferry_agents', r.summary.agents);
  m.set('ferry_agents_behind', r.summary.behind);
  m.set('ferry_agents_failing', r.summary.failing);
  m.set('ferry_agents_silent', r.summary.silent);
  m.set('ferry_agents_doctor_failing', r.summary.doctorFailing);
  m.reset('ferry_agents_by_version');
  for (const [version, n] of Object.entries(r.summary.byVersion))
    m.set('ferry_agents_by_version', n, { version });
  const standing = new Set(r.alerts.map((a) => a.kind));
  for (const kind of ALERT_KINDS) m.set('ferry_alerts', standing.has(kind) ? 1 : 0, { kind });
}
