/**
 * The one hot path: an agent's poll of `GET /v1/manifest` that changes nothing
 * (If-None-Match names the current ETag) is answered 304 straight from the
 * cached snapshot, without Koa's per-request context. Everything else — a
 * changed or missing manifest, errors, HEAD, other routes — goes to the Koa app
 * unchanged, so there is one implementation of every answer with a body.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Metrics } from '../metrics.js';
import type { StateView } from '../snapshot.js';
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
