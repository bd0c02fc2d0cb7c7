/** Operator routes: Prometheus metrics, the status page, and request accounting. */
import Router from '@koa/router';
import type { Context, Next } from 'koa';
import type { Metrics } from '../metrics.js';
import type { StateView } from '../snapshot.js';
import { renderStatusPage, type TelemetryView } from '../status-page.js';
import { PAGE_CSP } from '../../platform/web.js';
import type { FleetBlockView } from '../fleet-page.js';
import { defineFleetMetrics, detailAllowed, fleetGauges, parseFleetQuery, type FleetHttp } from './fleet.js';

/** Counts every request by matched route and status, and blob bytes actually sent. */
export function accounting(metrics: Metrics) {
  return async function account(ctx: Context, next: Next): Promise<void> {
    try {
      await next();
    } finally {
      const route = (ctx as Context & { _matchedRoute?: string })._matchedRoute ?? 'unmatched';
      metrics.inc('ferry_mirror_requests_total', { route, status: String(ctx.status) });
      const length = ctx.length;
      if (route.startsWith('/v1/blobs') && (ctx.status === 200 || ctx.status === 206) && length) {
        // counted when the response has been handed to the OS in full, not for aborted downloads
        ctx.res.once('finish', () => metrics.inc('ferry_mirror_bytes_served_total', {}, length));
      }
    }
  };
}

export function opsRouter(
  view: StateView,
  metrics: Metrics,
  now: () => number,
  telemetry?: () => TelemetryView,
  fleet?: FleetHttp,
): Router {
  const router = new Router();
  if (fleet) defineFleetMetrics(metrics);
  router.get('/metrics', async (ctx) => {
    const { state, active } = await view.current();
    metrics.set('ferry_mirror_active_sequence', state.active?.sequence ?? 0);
    if (fleet) fleetGauges(metrics, fleet.service.report(active?.manifest ?? null, active?.etag ?? ''));
    ctx.set('Cache-Control', 'no-store');
    ctx.type = 'text/plain; version=0.0.4; charset=utf-8';
    ctx.body = metrics.render();
  });
  router.get('/', async (ctx) => {
    const q = fleet ? parseFleetQuery(ctx.query) : {};
    const snap = await view.current();
    let fleetView: FleetBlockView | undefined;
    if (fleet) {
      const [m, tag] = [snap.active?.manifest ?? null, snap.active?.etag ?? ''];
      fleetView = detailAllowed(ctx, fleet.mode)
        ? { detail: true, page: fleet.service.page(m, tag, q) }
        : { detail: false, report: fleet.service.report(m, tag) };
    }
    ctx.set('Cache-Control', 'no-store');
    ctx.set('Content-Security-Policy', PAGE_CSP);
    ctx.set('X-Content-Type-Options', 'nosniff');
    ctx.type = 'text/html; charset=utf-8';
    ctx.body = renderStatusPage({
      state: snap.state,
      rootVersion: snap.rootVersion,
      manifest: snap.active?.manifest ?? null,
      now: now(),
      ...(telemetry && { telemetry: telemetry() }),
      ...(fleetView && { fleet: fleetView }),
    });
  });
  return router;
}
