/**
 * The HTTP services' one error contract: an `HttpError` carries a status and a
 * wire code (core/wire-codes.ts) with a message written for the client, and
 * the error middleware, mounted first, turns any error into status + JSON
 * `{code, message}`. Only messages written for clients leave the process: an
 * HttpError's own, a fixed text the service maps its own coded errors to, or
 * `{code:'INTERNAL', message:'internal error'}` (logged in full), so paths and
 * stack traces never reach a client.
 */
import type { Context, Next } from 'koa';
import { CodedError } from '../../core/errors.js';
import type { WireCode } from '../../core/wire-codes.js';
import type { Logger } from '../log.js';

/** An error whose message is written for the client and is sent as is. */
export class HttpError extends CodedError<WireCode> {
  readonly headers: Record<string, string>;

  constructor(
    readonly status: number,
    code: WireCode,
    message: string,
    options?: { cause?: unknown; headers?: Record<string, string> },
  ) {
    super(code, message, options);
    this.headers = options?.headers ?? {};
  }
}

export function isHttpError(e: unknown): e is HttpError {
  return e instanceof HttpError;
}

export interface ErrorBody {
  code: WireCode;
  message: string;
}

/** What a client may learn from an error; `expected` errors are the client's doing and not logged. */
export interface PublicError {
  status: number;
  body: ErrorBody;
  expected: boolean;
}

/**
 * A service's own mapping of its coded errors (a busy store, stored data that does not parse) to
 * fixed texts; undefined leaves the error to the kit (500 INTERNAL).
 */
export type ErrorMapper = (e: unknown) => PublicError | undefined;

/**
 * What a client may learn from `e`. `service` names the service in the one message the kit writes
 * itself (a full disk: nothing was stored, the sender keeps what it sent and tries again later).
 */
export function publicErrorOf(e: unknown, service: string, map?: ErrorMapper): PublicError {
  if (isHttpError(e)) return { status: e.status, body: { code: e.code, message: e.message }, expected: true };
  const mapped = map?.(e);
  if (mapped) return mapped;
  const errno = (e as NodeJS.ErrnoException | undefined)?.code;
  if (errno === 'ENOSPC' || errno === 'EDQUOT')
    return {
      status: 507,
      body: { code: 'STORAGE_FULL', message: `${service} storage is full` },
      expected: false,
    };
  return { status: 500, body: { code: 'INTERNAL', message: 'internal error' }, expected: false };
}

const FALLBACK: Record<number, ErrorBody> = {
  404: { code: 'NOT_FOUND', message: 'no such route' },
  405: { code: 'METHOD_NOT_ALLOWED', message: 'method not allowed on this route' },
  501: { code: 'NOT_IMPLEMENTED', message: 'method not implemented' },
};

/** Logs what the client does not see: every unexpected error and every 5xx. */
export function logRequestError(log: Logger, method: string, path: string, e: unknown, p: PublicError): void {
  if (p.expected && p.status < 500) return;
  log.error('http.request_error', {
    method,
    path,
    status: p.status,
    code: p.body.code,
    error: e instanceof Error ? e.message : String(e),
  });
}

/** Mounted first: every error, and every unmatched route or method, answers JSON `{code, message}`. */
export function errorMiddleware(log: Logger, toPublic: (e: unknown) => PublicError) {
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
      const p = toPublic(e);
      logRequestError(log, ctx.method, ctx.path, e, p);
      // Headers set before the failure (ETag, Content-Range of a success) must not leak into it.
      ctx.res.getHeaderNames().forEach((h) => ctx.remove(h));
      if (isHttpError(e)) ctx.set(e.headers);
      ctx.status = p.status;
      ctx.body = p.body;
    }
  };
}
