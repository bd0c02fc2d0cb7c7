/**
 * Errors of the mirror's HTTP API and the middleware that turns any error into
 * status + JSON `{code, message}` (CONVENTIONS 4, 5). Mounted first. Only
 * messages written for clients are sent: an HttpError's own message, or a fixed
 * text per store/core code; anything else is logged and answered with 500
 * `{code:'INTERNAL', message:'internal error'}`, so paths and stack traces
 * never leave the process.
 */
import type { Logger } from '../../platform/log.js';
import type { Context, Next } from 'koa';
import { isFerryError } from '../../core/errors.js';
import { isMirrorError } from '../errors.js';
import { isLockedError } from '../../platform/errors.js';

export type HttpErrorCode =
  | 'NOT_FOUND'
  | 'METHOD_NOT_ALLOWED'
  | 'NOT_IMPLEMENTED'
  | 'BAD_REQUEST'
  | 'BAD_DIGEST'
  | 'BLOB_NOT_FOUND'
  | 'NO_ACTIVE_MANIFEST'
  | 'RANGE_NOT_SATISFIABLE'
  | 'BODY_TOO_LARGE'
  | 'UNSUPPORTED_MEDIA_TYPE'
  | 'BAD_ENROLLMENT'
  | 'BAD_ENVELOPE'
  | 'BAD_HEARTBEAT'
  | 'BAD_SIGNATURE'
  | 'UNKNOWN_AGENT'
  | 'AGENT_REVOKED'
  | 'TOKEN_MISSING'
  | 'TOKEN_MALFORMED'
  | 'TOKEN_UNKNOWN'
  | 'TOKEN_EXPIRED'
  | 'TOKEN_EXHAUSTED'
  | 'TOKEN_REVOKED'
  | 'TOKEN_WRONG_SITE'
  | 'REPLAY'
  | 'TELEMETRY_REJECTED'
  | 'BAD_BATCH'
  | 'LOOP'
  | 'NO_ROUTE'
  | 'RELAY_UNTRUSTED'
  | 'STORE_UNAVAILABLE'
  | 'INTERNAL';

/** An error whose message is written for the client and is sent as is. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: HttpErrorCode,
    message: string,
    options?: { cause?: unknown; headers?: Record<string, string> },
  ) {
    super(message, options);
    this.name = 'HttpError';
    this.headers = options?.headers ?? {};
  }
  readonly headers: Record<string, string>;
}

export function isHttpError(e: unknown): e is HttpError {
  return e instanceof HttpError;
}

/** One event per call; the app never prints (CONVENTIONS 12). */

export interface ErrorBody {
  code: string;
  message: string;
}

/** What a client may learn from an error, and what the log gets. */
export function publicError(e: unknown): { status: number; body: ErrorBody; expected: boolean } {
  if (isHttpError(e)) return { status: e.status, body: { code: e.code, message: e.message }, expected: true };
  // The store's own messages name directories; send a fixed text instead.
  if (isLockedError(e))
    return { status: 503, body: { code: e.code, message: 'mirror store is busy' }, expected: true };
  if (isMirrorError(e)) {
    if (e.code === 'STORE_INVALID' || e.code === 'STORE_MISMATCH')
      return { status: 503, body: { code: e.code, message: 'mirror store is not usable' }, expected: false };
  }
  // The disk is full: nothing was stored (and nothing acknowledged). Senders keep what they sent and
  // try again later, or another mirror.
  const errno = (e as NodeJS.ErrnoException | undefined)?.code;
  if (errno === 'ENOSPC' || errno === 'EDQUOT')
    return {
      status: 507,
      body: { code: 'STORAGE_FULL', message: 'mirror storage is full' },
      expected: false,
    };
  // A core error on a read route means stored data did not parse: our fault, not the client's.
  if (isFerryError(e) && e.code !== 'USAGE')
    return { status: 500, body: { code: e.code, message: 'stored data could not be read' }, expected: false };
  return { status: 500, body: { code: 'INTERNAL', message: 'internal error' }, expected: false };
}

const FALLBACK: Record<number, ErrorBody> = {
  404: { code: 'NOT_FOUND', message: 'no such route' },
  405: { code: 'METHOD_NOT_ALLOWED', message: 'method not allowed on this route' },
  501: { code: 'NOT_IMPLEMENTED', message: 'method not implemented' },
};

export function errorMiddleware(log: Logger) {
  return async function errors(ctx: Context, next: Next): Promise<void> {
    try {
      await next();
      // Nothing matched (404) or the router refused the method (405/501, Allow set): JSON too.
      const fallback = FALLBACK[ctx.status];
      if (fallback && ctx.body == null) {
        const status = ctx.status;
        ctx.body = fallback;
        ctx.status = status;
      }
    } catch (e) {
      const { status, body, expected } = publicError(e);
      if (!expected || status >= 500)
        log.error('http.request_error', {
          method: ctx.method,
          path: ctx.path,
          status,
          code: body.code,
          error: e instanceof Error ? e.message : String(e),
        });
      // Headers set before the failure (ETag, Content-Range of a success) must not leak into it.
      ctx.res.getHeaderNames().forEach((h) => ctx.remove(h));
      if (isHttpError(e)) ctx.set(e.headers);
      ctx.status = status;
      ctx.body = body;
    }
  };
}
