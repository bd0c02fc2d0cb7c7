/**
 * Hot path one: an agent's poll of `GET /v1/manifest` that changes nothing
 * (If-None-Match names the current ETag) is answered 304 straight from the
 * cached snapshot, without Koa's per-request context. Everything else — a
 * changed or missing manifest, errors, HEAD, other routes — goes to the Koa app
 * unchanged, so there is one implementation of every answer with a body.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Metrics } from '../metrics.js';
import type { StateView } from '../snapshot.js';
import type { Logger } from '../../platform/log.js';
import type { AgentsStore } from '../agents.js';
import { acceptAgentTelemetry, type AgentRouteLimits } from './agents.js';
import { HttpError, publicError } from './errors.js';
import { parseJsonBody } from '../../platform/http/server-body.js';
import { logRequestError } from '../../platform/http/server-errors.js';
import { etagMatches } from './routes.js';

export type Handler = (req: IncomingMessage, res: ServerResponse) => void;

export function withFastPolls(view: StateView, metrics: Metrics, app: Handler): Handler {
  return (req, res) => {
    const inm = req.headers['if-none-match'];
    if (req.method !== 'GET' || req.url !== '/v1/manifest' || !inm) return app(req, res);
    view.current().then(
      (snap) => {
        const etag = snap.active?.etag;
        if (!etag || !etagMatches(inm, etag)) return app(req, res);
        metrics.inc('ferry_mirror_requests_total', { route: '/v1/manifest', status: '304' });
        res.writeHead(304, { ETag: etag, 'Cache-Control': 'no-cache' }).end();
      },
      () => app(req, res), // the app reports the failure with its code
    );
  };
}

const JSON_TYPE = /^application\/json\s*(?:;|$)/i;

/**
 * The other hot path: an agent's `POST /v1/telemetry` (one heartbeat, or a
 * few) is read and answered without Koa — the same checks and answers as the
 * route (http/agents.ts acceptAgentTelemetry), minus the per-request context.
 * Requests it is not sure about (no declared length, too large, not JSON, from
 * another mirror) go to the Koa app, which answers them fully.
 */
export function withFastTelemetry(
  agents: AgentsStore,
  metrics: Metrics,
  limits: Pick<AgentRouteLimits, 'telemetryItems' | 'telemetryBodyBytes'>,
  log: Logger,
  app: Handler,
): Handler {
  return (req, res) => {
    const declared = Number(req.headers['content-length']);
    if (
      req.method !== 'POST' ||
      req.url !== '/v1/telemetry' ||
      req.headers['ferry-relay'] !== undefined ||
      !JSON_TYPE.test(req.headers['content-type'] ?? '') ||
      !(declared > 0 && declared <= limits.telemetryBodyBytes)
    )
      return app(req, res);
    const reply = (status: number, body: unknown) => {
      metrics.inc('ferry_mirror_requests_total', { route: '/v1/telemetry', status: String(status) });
      const text = JSON.stringify(body);
      res.writeHead(status, {
        'Content-Type': 'application/json; charset=utf-8',
        'Content-Length': Buffer.byteLength(text),
        'Cache-Control': 'no-store',
      });
      res.end(text);
    };
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size <= declared) chunks.push(c);
    });
    req.on('error', () => res.destroy());
    req.on('end', () => {
      let body: unknown;
      try {
        if (size !== declared) throw new HttpError(400, 'BAD_REQUEST', 'request body is not UTF-8 JSON');
        body = parseJsonBody(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
      } catch (e) {
        const p = publicError(e);
        return reply(p.status, p.body);
      }
      acceptAgentTelemetry(agents, body, limits).then(
        (r) => reply(r.status, r.body),
        (e: unknown) => {
          const p = publicError(e);
          logRequestError(log, 'POST', '/v1/telemetry', e, p);
          reply(p.status, p.body);
        },
      );
    });
  };
}
