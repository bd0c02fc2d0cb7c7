/**
 * The mirror's read-only HTTP API as a Koa app (CONVENTIONS 3): error
 * middleware first, then one router per resource. No listen here; the
 * composition root or a test drives `app.callback()`. No body parser: every
 * route is a GET (HEAD comes with it) and none reads a request body.
 */
import Koa from 'koa';
import type { Store } from '../store.js';
import { errorMiddleware, type Log } from './errors.js';
import { routers } from './routes.js';

export interface AppDeps {
  store: Store;
  /** Structured events (request errors, failed streams); the app never prints. */
  log?: Log;
}

export function createApp({ store, log }: AppDeps): Koa {
  const app = new Koa();
  // Errors after the response has started (a blob stream failing mid-way) reach Koa's
  // onerror, which would print to stderr without a listener; send them to the log instead.
  app.on('error', (e: unknown) => {
    log?.({
      component: 'mirror-http',
      event: 'response_error',
      error: e instanceof Error ? e.message : String(e),
    });
  });
  app.use(errorMiddleware(log));
  for (const router of routers(store)) {
    app.use(router.routes());
    app.use(router.allowedMethods());
  }
  return app;
}
