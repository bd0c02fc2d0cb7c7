/**
 * The server's HTTP API as a Koa app: the server kit's error middleware
 * (platform/http/server-errors.ts) first, then one router per resource. No
 * listen here (server/serve.ts does, with platform/http/server.ts).
 *
 *   POST /v1/telemetry   {batches:[CarriedBatch…]} → 202 {results:[…]} once durable
 *   GET  /v1/agents, /v1/agents/:id, /v1/rejections?limit=, /v1/mirrors
 *   GET  /healthz, /metrics
 *   GET  /v1/link/bundles…  a site mirror's signed requests for its bundles (server/bundle-link.ts)
 *   the JSON API (server/api.ts) and the web UI (server/ui/routes.ts)
 *
 * Telemetry ingest authenticates each batch by its signature; /healthz and /metrics are open; every
 * other route needs a signed-in user or a bearer token (server/auth-http.ts).
 */
import Router from '@koa/router';
import Koa from 'koa';
import { Metrics } from '../platform/metrics.js';
import { silentLogger, type Logger } from '../platform/log.js';
import type { RejectionCode } from './errors.js';
import { bodyLimit, readJsonBody } from '../platform/http/server-body.js';
import {
  errorMiddleware,
  HttpError,
  publicErrorOf,
  type PublicError,
} from '../platform/http/server-errors.js';
import type { BatchOutcome } from './ingest.js';
import { agentOf, agentView, coverageGaps, fleetView, mirrorOf, parkedOf } from './fleet-state.js';
import type { ServerStore } from './store.js';
import { fmt } from './intervals.js';
import { AccessStore, LoginLimiter, Sessions } from './access.js';
import { apiRouter } from './api.js';
import { AuditLog } from './audit.js';
import { authenticate, need } from './auth-http.js';
import { FileCatalog, type Catalog } from './catalog.js';
import { ServerError, type ServerCode } from './errors.js';
import { uiErrors, uiRouter } from './ui/routes.js';
import { isCodedError } from '../core/errors.js';
import { linkRouter } from './bundle-link.js';

export interface HttpLimits {
  telemetryBodyBytes: number;
  batchesPerRequest: number;
}

export const DEFAULT_HTTP_LIMITS: HttpLimits = {
  telemetryBodyBytes: 32 * 1024 * 1024,
  batchesPerRequest: 64,
};

export function serverMetrics(): Metrics {
  const m = new Metrics();
  m.define('ferry_server_heartbeats_stored', 'gauge', 'Heartbeats stored (all time).');
  m.define('ferry_server_agents', 'gauge', 'Agents known.');
  m.define('ferry_server_parked', 'gauge', 'Heartbeats waiting for their agent enrolment.');
  m.define('ferry_server_rejections', 'gauge', 'Rejections journaled (all time), by code.');
  m.define(
    'ferry_server_unauthenticated_rejections',
    'gauge',
    'Batches refused before they authenticated as a registered mirror (since start), by code; not journaled.',
  );
  m.define('ferry_server_duplicates_total', 'counter', 'Records received again and ignored (since start).');
  m.define('ferry_server_batches_total', 'counter', 'Batches received over HTTP (since start), by status.');
  m.define('ferry_server_requests_total', 'counter', 'HTTP requests, by method and status.');
  return m;
}

const SERVER_CODES: Partial<Record<ServerCode, [number, PublicError['body']['code']]>> = {
  BAD_INPUT: [400, 'BAD_INPUT'],
  USER_EXISTS: [409, 'BAD_INPUT'],
  UNKNOWN_USER: [404, 'BAD_INPUT'],
  UNKNOWN_SITE: [404, 'UNKNOWN_SITE'],
  UNKNOWN_RELEASE: [404, 'UNKNOWN_RELEASE'],
  RELEASE_EXISTS: [409, 'RELEASE_EXISTS'],
  UNKNOWN_BUNDLE: [404, 'UNKNOWN_BUNDLE'],
  NO_SIGNING_KEY: [409, 'NO_SIGNING_KEY'],
  POLICY_INVALID: [400, 'POLICY_INVALID'],
};

/**
 * What a client may learn from an error: the server's own input refusals (their messages are written
 * for the operator), a format refusal from core (an expiry that does not parse) as BAD_INPUT, and the
 * kit's rules for everything else.
 */
export function publicError(e: unknown): PublicError {
  return publicErrorOf(e, 'server', (x) => {
    if (x instanceof ServerError) {
      const m = SERVER_CODES[x.code];
      if (m) return { status: m[0], body: { code: m[1], message: x.message }, expected: true };
    }
    if (isCodedError(x) && (x.code === 'USAGE' || x.code === 'SPEC_INVALID' || x.code === 'MANIFEST_INVALID'))
      return { status: 400, body: { code: 'BAD_INPUT', message: x.message }, expected: true };
    return undefined;
  });
}

export interface BatchResult {
  index: number;
  status: 'stored' | 'duplicate' | 'rejected';
  stored: number;
  enrolments: number;
  duplicates: number;
  parked: number;
  rejected: { seq?: number; code: RejectionCode }[];
  code?: RejectionCode;
  message?: string;
}

export function batchResult(index: number, o: BatchOutcome): BatchResult {
  const t = o.tally;
  const base = {
    index,
    stored: t.stored,
    enrolments: t.enrolments,
    duplicates: t.duplicates,
    parked: t.parked,
  };
  if (!o.ok) return { ...base, status: 'rejected', rejected: [], code: o.code, message: o.message };
  return {
    ...base,
    status: o.duplicate ? 'duplicate' : 'stored',
    rejected: t.rejected.map((r) => ({ ...(r.seq !== undefined && { seq: r.seq }), code: r.code })),
  };
}

function telemetryRouter(store: ServerStore, metrics: Metrics, limits: HttpLimits): Router {
  const r = new Router();
  r.post('/v1/telemetry', async (ctx) => {
    const body = await readJsonBody(ctx, limits.telemetryBodyBytes);
    const batches = (body as { batches?: unknown } | null)?.batches;
    if (
      typeof body !== 'object' ||
      body === null ||
      Array.isArray(body) ||
      Object.keys(body).some((k) => k !== 'batches')
    )
      throw new HttpError(400, 'BAD_REQUEST', 'body must be {"batches":[…]}');
    if (!Array.isArray(batches) || batches.length === 0 || batches.length > limits.batchesPerRequest)
      throw new HttpError(400, 'BAD_REQUEST', `batches must be an array of 1-${limits.batchesPerRequest}`);
    const outcomes = await store.ingest('http', async (ing) => {
      const out: BatchOutcome[] = [];
      for (const b of batches) out.push(await ing.carried(b));
      return out;
    });
    const results = outcomes.map((o, i) => batchResult(i, o));
    for (const x of results) {
      metrics.inc('ferry_server_batches_total', { status: x.status });
      metrics.inc('ferry_server_duplicates_total', {}, x.duplicates);
    }
    ctx.status = 202;
    ctx.body = { results };
  });
  return r;
}

function readRouter(store: ServerStore): Router {
  const r = new Router();
  r.use(['/v1/agents', '/v1/rejections', '/v1/mirrors'], async (ctx, next) => {
    need(ctx, 'viewer');
    await next();
  });
  r.get('/v1/agents', (ctx) => {
    ctx.body = { agents: fleetView(store.state).map(({ latest: _latest, ...rest }) => rest) };
  });
  r.get('/v1/agents/:id', (ctx) => {
    const a = agentOf(store.state, ctx.params.id ?? '');
    if (!a) throw new HttpError(404, 'UNKNOWN_AGENT', 'no such agent');
    ctx.body = { agent: agentView(a), parked: parkedOf(store.state, a.id)?.length ?? 0 };
  });
  r.get('/v1/rejections', (ctx) => {
    const q = ctx.query.limit;
    const limit = typeof q === 'string' && /^[1-9][0-9]{0,3}$/.test(q) ? Number(q) : 100;
    const list = store.state.rejections;
    ctx.body = {
      total: store.state.totals.rejections,
      byCode: store.state.rejectionCounts,
      unauthenticated: Object.fromEntries(store.unauthenticated),
      rejections: list.slice(-limit).reverse(),
    };
  });
  r.get('/v1/mirrors', (ctx) => {
    ctx.body = {
      mirrors: store.mirrors.list().map((m) => {
        const p = mirrorOf(store.state, m.id);
        return {
          id: m.id,
          site: m.site,
          publicKey: Buffer.from(m.publicKey).toString('hex'),
          coverage: (p?.coverage ?? []).map(fmt),
          gaps: coverageGaps(store.state, m.id).map(fmt),
          lastExport: p?.lastExport
            ? { number: p.lastExport, hash: p.lastExportHash, at: p.lastExportAt }
            : null,
        };
      }),
    };
  });
  return r;
}

function openRouter(store: ServerStore, metrics: Metrics): Router {
  const r = new Router();
  r.get('/healthz', (ctx) => {
    ctx.body = { ok: true, journalSeq: store.state.journalSeq };
  });
  r.get('/metrics', (ctx) => {
    const s = store.state;
    metrics.set('ferry_server_heartbeats_stored', s.totals.heartbeats);
    metrics.set('ferry_server_agents', Object.keys(s.agents).length);
    metrics.set('ferry_server_parked', s.totals.parked);
    for (const [code, n] of Object.entries(s.rejectionCounts))
      metrics.set('ferry_server_rejections', n, { code });
    for (const [code, n] of store.unauthenticated)
      metrics.set('ferry_server_unauthenticated_rejections', n, { code });
    ctx.type = 'text/plain; version=0.0.4';
    ctx.body = metrics.render();
  });
  return r;
}

export interface AppDeps {
  store: ServerStore;
  log?: Logger;
  metrics?: Metrics;
  limits?: Partial<HttpLimits>;
  access?: AccessStore;
  sessions?: Sessions;
  limiter?: LoginLimiter;
  catalog?: Catalog;
  audit?: AuditLog;
  /** Seconds between live updates of the rollout pages. */
  refreshSec?: number;
  /** Mark the UI's cookies Secure (TLS here, or at a proxy in front). */
  cookieSecure?: boolean;
}

export function createApp({
  store,
  log = silentLogger,
  metrics = serverMetrics(),
  limits,
  access = new AccessStore(store.dir),
  sessions = new Sessions(),
  limiter = new LoginLimiter(),
  catalog = new FileCatalog(store.dir),
  audit = new AuditLog(store.dir),
  refreshSec,
  cookieSecure,
}: AppDeps): Koa {
  const app = new Koa();
  app.on('error', (e: unknown) =>
    log.warn('http.response_error', { error: e instanceof Error ? e.message : String(e) }),
  );
  app.use(async (ctx, next) => {
    await next();
    metrics.inc('ferry_server_requests_total', { method: ctx.method, status: String(ctx.status) });
  });
  const lim = { ...DEFAULT_HTTP_LIMITS, ...limits };
  app.use(errorMiddleware(log, publicError));
  app.use(bodyLimit(lim.telemetryBodyBytes));
  const link = linkRouter({ catalog, audit, mirrors: store.mirrors, log });
  for (const router of [telemetryRouter(store, metrics, lim), openRouter(store, metrics), link]) {
    app.use(router.routes());
    app.use(router.allowedMethods());
  }
  app.use(authenticate(access, sessions));
  const ui = {
    store,
    access,
    sessions,
    limiter,
    catalog,
    audit,
    log,
    toPublic: publicError,
    ...(refreshSec && { refreshSec }),
    ...(cookieSecure && { cookieSecure }),
  };
  const pageErrors = uiErrors(ui);
  app.use((ctx, next) => (ctx.path.startsWith('/v1/') ? next() : pageErrors(ctx, next)));
  for (const router of [readRouter(store), apiRouter({ store, catalog, audit }), uiRouter(ui)]) {
    app.use(router.routes());
    app.use(router.allowedMethods());
  }
  return app;
}
