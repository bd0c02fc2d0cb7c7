/**
 * One exchange over a transport, with every timer in one place: an idle timer
 * (connect, head, each silence between body chunks) and a total deadline, both
 * aborting the transport with a coded error. `request` reads small bodies
 * whole, capped; download.ts streams artifact-sized ones.
 */
import { isCodedError, type CodedError } from '../../core/errors.js';
import { HttpClientError } from './errors.js';
import { deadlineFor, resolveLimits, type ClientLimits } from './limits.js';
import {
  defaultTransport,
  type ResponseHeaders,
  type Transport,
  type TransportResponse,
} from './transport.js';

export interface BaseOptions {
  /** Idle timeout (ms); default limits.idleTimeoutMs. */
  timeoutMs?: number;
  /** Total deadline (ms); default from limits and the bytes the request may move. */
  deadlineMs?: number;
  limits?: Partial<ClientLimits>;
  headers?: Record<string, string>;
  /** Default: the shared node:http transport. */
  transport?: Transport;
  /** The caller's cancel (a service stopping): fails the request with HTTP_ABORTED. */
  signal?: AbortSignal;
}

export interface RequestOptions extends BaseOptions {
  method?: string;
  body?: string | Uint8Array;
  /** Largest response body accepted; more is refused with HTTP_TOO_LARGE. */
  maxBytes: number;
}

export interface HttpResponse {
  status: number;
  headers: ResponseHeaders;
  body: Buffer;
}

export function parseUrl(url: string): URL {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new HttpClientError('HTTP_URL_INVALID', `not a URL: ${url}`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:')
    throw new HttpClientError(
      'HTTP_URL_INVALID',
      `only http: and https: URLs are fetched, not ${u.protocol}`,
    );
  return u;
}

const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ECONNABORTED',
  'ERR_STREAM_PREMATURE_CLOSE',
]);

/** Wraps whatever a socket threw into a coded error; coded errors pass through. */
export function toClientError(e: unknown, url: string): CodedError {
  if (isCodedError(e)) return e;
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  const message = e instanceof Error ? e.message : String(e);
  // Anything the socket layer throws is worth another try; the known codes just make that explicit.
  return new HttpClientError('HTTP_NETWORK', `${url}: ${code && NETWORK_CODES.has(code) ? code : message}`, {
    retryable: true,
    cause: e,
  });
}

export function statusError(url: string, status: number): HttpClientError {
  return new HttpClientError('HTTP_STATUS', `${url}: HTTP ${status}`, {
    status,
    retryable: status >= 500 || status === 429 || status === 408,
  });
}

/** setTimeout fires at once past 2^31-1 ms (a deadline for a 200 GB blob at 64 KiB/s): cap it there. */
const timerMs = (ms: number) => Math.min(Math.max(1, ms), 2 ** 31 - 1);

export interface Exchange {
  res: TransportResponse;
  /** Restart the idle timer (call on every body chunk). */
  touch: () => void;
  /** Stop the timers and release or destroy the connection. */
  done: (destroy: boolean) => void;
  /** The coded error for `e`: the timer's or caller's reason when the exchange was aborted. */
  fail: (e: unknown) => CodedError;
}

export interface ExchangeOptions extends BaseOptions {
  method?: string;
  body?: string | Uint8Array | undefined;
  /** Total deadline in ms (resolved by the caller). */
  deadlineMs: number;
}

/**
 * Sends one request and resolves with the response head. The idle timer and
 * the deadline run from here; the caller keeps the idle timer alive with
 * touch() while reading the body and must call done().
 */
export async function exchange(url: string, o: ExchangeOptions): Promise<Exchange> {
  const u = parseUrl(url);
  const idleMs = timerMs(o.timeoutMs ?? resolveLimits(o.limits).idleTimeoutMs);
  const deadlineMs = timerMs(o.deadlineMs);
  const ac = new AbortController();
  const idle = setTimeout(
    () =>
      ac.abort(
        new HttpClientError('HTTP_TIMEOUT', `${url}: no progress for ${idleMs} ms`, { retryable: true }),
      ),
    idleMs,
  );
  // Not retried against the same source: another try would take as long again. Callers move on.
  const total = setTimeout(
    () => ac.abort(new HttpClientError('HTTP_DEADLINE', `${url}: not done within ${deadlineMs} ms`)),
    deadlineMs,
  );
  const cancel = () => ac.abort(new HttpClientError('HTTP_ABORTED', `${url}: cancelled`));
  if (o.signal?.aborted) cancel();
  o.signal?.addEventListener('abort', cancel, { once: true });
  const stop = () => {
    clearTimeout(idle);
    clearTimeout(total);
    o.signal?.removeEventListener('abort', cancel);
  };
  const fail = (e: unknown): CodedError =>
    ac.signal.aborted && isCodedError(ac.signal.reason) ? ac.signal.reason : toClientError(e, url);
  let res: TransportResponse;
  try {
    res = await (o.transport ?? defaultTransport()).send({
      url: u,
      method: o.method ?? 'GET',
      headers: { ...o.headers },
      body: o.body,
      signal: ac.signal,
    });
  } catch (e) {
    stop();
    throw fail(e);
  }
  idle.refresh();
  return {
    res,
    touch: () => idle.refresh(),
    done: (destroy) => {
      stop();
      res.release(destroy);
    },
    fail,
  };
}

/** A small request whose whole body is buffered, refused beyond `maxBytes`. */
export async function request(url: string, opts: RequestOptions): Promise<HttpResponse> {
  const sent = opts.body === undefined ? 0 : Buffer.byteLength(opts.body);
  const deadlineMs = opts.deadlineMs ?? deadlineFor(sent + opts.maxBytes, resolveLimits(opts.limits));
  const { res, touch, done, fail } = await exchange(url, { ...opts, deadlineMs });
  let ok = false;
  try {
    const declared = Number(res.headers['content-length'] ?? NaN);
    if (Number.isFinite(declared) && declared > opts.maxBytes)
      throw new HttpClientError(
        'HTTP_TOO_LARGE',
        `${url}: ${declared} bytes, more than the ${opts.maxBytes} allowed`,
      );
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of res.body) {
      touch();
      size += chunk.length;
      if (size > opts.maxBytes)
        throw new HttpClientError('HTTP_TOO_LARGE', `${url}: more than the ${opts.maxBytes} bytes allowed`);
      chunks.push(chunk);
    }
    ok = true;
    return { status: res.status, headers: res.headers, body: Buffer.concat(chunks, size) };
  } catch (e) {
    throw fail(e);
  } finally {
    done(!ok);
  }
}
