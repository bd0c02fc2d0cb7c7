/**
 * The mirror's HTTP API as a Koa app: the error middleware first,
 * then request accounting, then one router per resource. No listen here; the
 * composition root or a test drives `app.callback()`. No body parser: the two
 * agent POST routes (http/agents.ts) read their bodies with the server kit's
 * readJsonBody, each under its own cap.
 */
import Router from '@koa/router';
import Koa from 'koa';
import { silentLogger, type Logger } from '../../platform/log.js';
import type { TelemetryView } from '../status-page.js';
import { mirrorMetrics, type Metrics } from '../metrics.js';
import { StateView } from '../snapshot.js';
import type { Store } from '../store.js';
import { agentsFor, type AgentsStore } from '../agents.js';
import {
  agentsRouter,
  DEFAULT_AGENT_ROUTE_LIMITS,
  type AgentRouteLimits,
  type RelayOptions,
} from './agents.js';
import { errorMiddleware } from './errors.js';
import { accounting, opsRouter } from './ops.js';
import { bodyLimit } from '../../platform/http/server-body.js';
import { routers } from './routes.js';
import { withFastPolls, withFastTelemetry, type Handler } from './fast.js';
import type { MirrorRollout } from '../rollout.js';
import { rolloutRouter } from './rollout.js';
import { fleetRouter, type FleetHttp } from './fleet.js';
import type { SiteLog } from '../site-log.js';
import { siteLogRouter } from './site-log.js';

export interface AppDeps {
  store: Store;
  /** Structured events (request errors, failed streams); the app never prints. */
  log?: Logger;
  metrics?: Metrics;
  /** Largest request body accepted on any route (bytes). */
  maxBodyBytes?: number;
  /** The cached state the routes serve; one per store. */
  view?: StateView;
  /** Enrolled agents and their telemetry; by default the one kept for `store`'s data dir. */
  agents?: AgentsStore;
  agentLimits?: Partial<AgentRouteLimits>;
  /** Carry other mirrors' telemetry batches (serve sets it once the mirror has its identity). */
  relay?: RelayOptions;
  /** The outbox and its routes, for the status page. */
  telemetry?: () => TelemetryView;
  /** The site's rollout gate; without it there is no `GET /v1/rollout/:agentId`. */
  rollout?: MirrorRollout;
  /** The fleet view (mirror/fleet-store.ts): `GET /v1/fleet`, on the status page and in /metrics. */
  fleet?: FleetHttp;
  /** The site log peers pull (`GET /v1/site-log`, mirror/site-log.ts). */
  siteLog?: SiteLog;
}

/** App-wide ceiling, checked before any route runs; routes that read bodies apply their own smaller caps. */
export const DEFAULT_MAX_BODY_BYTES = 1024 * 1024;

export function createApp({
  store,
  log = silentLogger,
  metrics = mirrorMetrics(),
  maxBodyBytes,
  view = new StateView(store),
  agents = agentsFor(store),
  agentLimits,
  relay,
  telemetry,
  rollout,
  fleet,
  siteLog,
}: AppDeps): Koa {
  const app = new Koa();
  // Errors after the response has started (a blob stream failing mid-way) reach Koa's
  // onerror, which would print to stderr without a listener; send them to the log instead.
  app.on('error', (e: unknown) =>
    log.warn('http.response_error', { error: e instanceof Error ? e.message : String(e) }),
  );
  app.use(errorMiddleware(log));
  app.use(accounting(metrics));
  app.use(
    bodyLimit(maxBodyBytes ?? (relay ? DEFAULT_AGENT_ROUTE_LIMITS.relayBodyBytes : DEFAULT_MAX_BODY_BYTES)),
  );
  // One router mounts the per-resource routers: one match pass per request instead of one per
  // resource (measured: about a third more polls per second than mounting each on the app).
  const api = new Router();
  for (const router of [
    ...routers(store, view),
    agentsRouter(agents, store.now, agentLimits, relay),
    ...(rollout ? [rolloutRouter(rollout, agents, view)] : []),
    opsRouter(view, metrics, store.now, telemetry, fleet),
    ...(fleet ? [fleetRouter(view, fleet)] : []),
    ...(siteLog ? [siteLogRouter(siteLog, store.now)] : []),
  ]) {
    api.use(router.routes(), router.allowedMethods());
  }
  app.use(api.routes());
  app.use(api.allowedMethods());
  return app;
}

/** The request handler a server mounts: the Koa app behind the fast path for unchanged polls. */
export function createHandler(deps: AppDeps): Handler {
  const view = deps.view ?? new StateView(deps.store);
  const metrics = deps.metrics ?? mirrorMetrics();
  const agents = deps.agents ?? agentsFor(deps.store);
  const app = createApp({ ...deps, view, metrics, agents }).callback();
  const limits = { ...DEFAULT_AGENT_ROUTE_LIMITS, ...deps.agentLimits };
  const log = deps.log ?? silentLogger;
  return withFastPolls(
    view,
    metrics,
    withFastTelemetry(agents, metrics, limits, log, (req, res) => void app(req, res)),
  );
}
