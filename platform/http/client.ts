/**
 * The one outbound HTTP client (CONVENTIONS 11) for the agent and peer mirrors.
 *
 * Built on node:http rather than undici or global fetch: the agent must stay
 * under 50 MB RSS when idle, and node:http is already loaded by the process,
 * while undici adds its own pools, buffers and a WASM parser. (This deviates
 * from the "undici-based" wording of CONVENTIONS 11 on purpose.)
 *
 * Three pieces:
 *  - `request`: small bodies (manifest, root, rollout), capped at `maxBytes`;
 *  - `download`: artifact-sized bodies streamed into a caller-owned temp file,
 *    resumed with `Range`, stopped at the signed size, verified by sha256
 *    (CONVENTIONS 9, 10);
 *  - `withRetry`: exponential back-off with full jitter, retrying only errors
 *    marked retryable (network, timeouts, 5xx, 429) — never digest or size
 *    mismatches.
 *
 * Timeouts are idle timeouts: `timeoutMs` bounds connecting, waiting for the
 * response head, and every silence between body chunks. A slow but steady
 * download of a large blob is not cut off; a stalled one is.
 */
import { createHash, type Hash } from 'node:crypto';
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import * as http from 'node:http';
import * as https from 'node:https';
import { FerryError, type FerryErrorCode } from '../../core/errors.js';

export type HttpClientErrorCode =
  | 'HTTP_TIMEOUT'
  | 'HTTP_STATUS'
  | 'HTTP_TOO_LARGE'
  | 'HTTP_NETWORK'
  | 'HTTP_URL_INVALID'
  | Extract<FerryErrorCode, 'BLOB_DIGEST_MISMATCH' | 'BLOB_SIZE_MISMATCH'>;

export class HttpClientError extends Error {
  readonly code: HttpClientErrorCode;
  /** Whether trying the same request again may succeed (network, timeout, 5xx, 429). */
  readonly retryable: boolean;
  /** The response status, for HTTP_STATUS. */
  readonly status: number | undefined;
  /** For download errors: how many bytes of the destination were kept from before this request. */
  resumedFrom: number | undefined;

  constructor(
    code: HttpClientErrorCode,
    message: string,
    opts: { retryable?: boolean; status?: number; cause?: unknown } = {},
  ) {
    super(message, { cause: opts.cause });
    this.name = 'HttpClientError';
    this.code = code;
    this.retryable = opts.retryable ?? false;
    this.status = opts.status;
  }
}

export function isHttpClientError(e: unknown): e is HttpClientError {
  return e instanceof HttpClientError;
}

/** Whether withRetry should try again after `e`. */
export function isRetryable(e: unknown): boolean {
  return e instanceof HttpClientError && e.retryable;
}

/** Default socket pools: keep-alive, few sockets (the agent talks to one or two mirrors at a time). */
export const defaultAgents = {
  http: new http.Agent({ keepAlive: true, maxSockets: 4, maxFreeSockets: 2, timeout: 60_000 }),
  https: new https.Agent({ keepAlive: true, maxSockets: 4, maxFreeSockets: 2, timeout: 60_000 }),
};

export interface BaseOptions {
  /** Longest silence tolerated: connect, response head, and between body chunks (ms). */
  timeoutMs: number;
  headers?: Record<string, string>;
  /** Socket pool; defaults to the shared keep-alive agents. */
  agent?: http.Agent;
}

export interface RequestOptions extends BaseOptions {
  method?: string;
  body?: string | Uint8Array;
  /** Largest response body accepted; more is refused with HTTP_TOO_LARGE. */
  maxBytes: number;
}

export interface HttpResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

function parseUrl(url: string): URL {
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

/** Our own disk failed (FerryError IO_ERROR): no mirror and no retry will fix that. */
function diskError(what: string) {
  return (e: unknown): never => {
    throw new FerryError('IO_ERROR', `${what}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  };
}

/** Wraps whatever a socket threw into a coded error; coded errors (and disk errors) pass through. */
function toClientError<E>(e: E, url: string): HttpClientError | FerryError {
  if (e instanceof HttpClientError || e instanceof FerryError) return e;
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  const message = e instanceof Error ? e.message : String(e);
  // Anything the socket layer throws is worth another try; the known codes just make that explicit.
  return new HttpClientError('HTTP_NETWORK', `${url}: ${code && NETWORK_CODES.has(code) ? code : message}`, {
    retryable: true,
    cause: e,
  });
}

function statusError(url: string, status: number): HttpClientError {
  return new HttpClientError('HTTP_STATUS', `${url}: HTTP ${status}`, {
    status,
    retryable: status >= 500 || status === 429 || status === 408,
  });
}

interface Exchange {
  res: http.IncomingMessage;
  /** Restart the idle timer (call on every body chunk). */
  touch: () => void;
  /** Stop the idle timer and release or destroy the socket. */
  done: (destroy: boolean) => void;
}

/**
 * Sends one request and resolves with the response head. The idle timer covers
 * connecting and waiting for the head; the caller keeps it alive with touch()
 * while reading the body and must call done().
 */
function exchange(url: string, opts: BaseOptions & { method?: string; body?: string | Uint8Array }) {
  const u = parseUrl(url);
  const mod = u.protocol === 'https:' ? https : http;
  const agent = opts.agent ?? (u.protocol === 'https:' ? defaultAgents.https : defaultAgents.http);
  return new Promise<Exchange>((resolve, reject) => {
    const headers: Record<string, string> = { ...opts.headers };
    if (opts.body !== undefined) headers['content-length'] = String(Buffer.byteLength(opts.body));
    const req = mod.request(u, { method: opts.method ?? 'GET', headers, agent });
    let timer: NodeJS.Timeout | undefined;
    let response: http.IncomingMessage | undefined;
    const fire = () => {
      const err = new HttpClientError('HTTP_TIMEOUT', `${url}: no progress for ${opts.timeoutMs} ms`, {
        retryable: true,
      });
      // Once the head is in, the reader iterates the response: fail it there with the coded error.
      if (response) response.destroy(err);
      else req.destroy(err);
    };
    const touch = () => {
      if (timer) timer.refresh();
    };
    timer = setTimeout(fire, opts.timeoutMs);
    const stop = () => {
      if (timer) clearTimeout(timer);
      timer = undefined;
    };
    req.on('error', (e) => {
      stop();
      reject(toClientError(e, url));
    });
    req.on('response', (res) => {
      response = res;
      touch();
      // From here on errors surface on the response stream, which the caller reads.
      resolve({
        res,
        touch,
        done: (destroy) => {
          stop();
          if (destroy) res.destroy();
        },
      });
    });
    req.end(opts.body);
  });
}

/** A small request whose whole body is buffered, refused beyond `maxBytes`. */
export async function request(url: string, opts: RequestOptions): Promise<HttpResponse> {
  const { res, touch, done } = await exchange(url, opts);
  let ok = false;
  try {
    const declared = Number(res.headers['content-length'] ?? NaN);
    if (Number.isFinite(declared) && declared > opts.maxBytes)
      throw new HttpClientError(
        'HTTP_TOO_LARGE',
        `${url}: ${declared} bytes, more than the ${opts.maxBytes} allowed`,
      );
    const chunks: Buffer[] = [];
    let total = 0;
    for await (const chunk of res as AsyncIterable<Buffer>) {
      touch();
      total += chunk.length;
      if (total > opts.maxBytes)
        throw new HttpClientError('HTTP_TOO_LARGE', `${url}: more than the ${opts.maxBytes} bytes allowed`);
      chunks.push(chunk);
    }
    ok = true;
    return { status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks, total) };
  } catch (e) {
    throw toClientError(e, url);
  } finally {
    done(!ok);
  }
}

export interface DownloadOptions extends BaseOptions {
  /** The signed size: nothing past it is written; a body of another length is refused. */
  expectedSize: number;
  /** The signed sha256 (lowercase hex); also the mirror's ETag, sent as If-Range when resuming. */
  expectedSha256: string;
  /** Progress: bytes of the destination that are in place so far, and the expected total. */
  /** Progress: bytes held so far, the total, and how many arrived in this chunk. */
  onBytes?: (have: number, total: number, received: number) => void;
}

export interface DownloadResult {
  /** Bytes kept from an earlier attempt (0 for a fresh download or a restart). */
  resumedFrom: number;
  /** Bytes received over the network by this call. */
  received: number;
}

const READ_CHUNK = 1024 * 1024;

/** Hashes the first `length` bytes of `fh` into `hash` without holding more than one chunk. */
async function hashPrefix(fh: FileHandle, length: number, hash: Hash): Promise<void> {
  const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, Math.max(length, 1)));
  let pos = 0;
  while (pos < length) {
    const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, length - pos), pos);
    if (bytesRead === 0) throw new HttpClientError('HTTP_NETWORK', 'partial file shrank while hashing it');
    hash.update(buf.subarray(0, bytesRead));
    pos += bytesRead;
  }
}

const CONTENT_RANGE = /^bytes (\d+)-(\d+)\/(\d+|\*)$/;

/**
 * Streams `url` into `destPath`, a temp file the caller owns. Bytes already in
 * `destPath` are hashed and kept, and only the rest is asked for (`Range` with
 * `If-Range: "<sha256>"`); a 200 to that starts the file over. Never writes
 * past `expectedSize`; at the end the whole file must be `expectedSize` bytes
 * with sha256 `expectedSha256`, and it is fsynced. On failure the file keeps
 * whatever verified-so-far prefix it has (for a later resume); on a digest
 * mismatch the caller should delete it.
 */
export async function download(
  url: string,
  destPath: string,
  opts: DownloadOptions,
): Promise<DownloadResult> {
  const { expectedSize, expectedSha256 } = opts;
  if (!Number.isSafeInteger(expectedSize) || expectedSize < 0)
    throw new HttpClientError('BLOB_SIZE_MISMATCH', `expected size ${expectedSize} is not a byte count`);
  const fh = await open(destPath, constants.O_RDWR | constants.O_CREAT, 0o600).catch(
    diskError(`open ${destPath}`),
  );
  let resumedFrom = 0;
  try {
    let have = (await fh.stat()).size;
    let hash = createHash('sha256');
    if (have > expectedSize) {
      await fh.truncate(0); // longer than the signed size: cannot be a prefix of the blob
      have = 0;
    } else if (have > 0) {
      await hashPrefix(fh, have, hash);
    }
    if (have === expectedSize) {
      // Complete already (an earlier call was cut after the last byte): verify, or start over.
      if (hash.copy().digest('hex') === expectedSha256) {
        await fh.sync();
        opts.onBytes?.(have, expectedSize, 0);
        return { resumedFrom: have, received: 0 };
      }
      await fh.truncate(0);
      have = 0;
      hash = createHash('sha256');
    }
    resumedFrom = have;

    const headers: Record<string, string> = { ...opts.headers, 'accept-encoding': 'identity' };
    if (have > 0) {
      headers.range = `bytes=${have}-`;
      headers['if-range'] = `"${expectedSha256}"`;
    }
    const { res, touch, done } = await exchange(url, { ...opts, headers });
    let clean = false;
    let received = 0;
    try {
      const status = res.statusCode ?? 0;
      const declared =
        res.headers['content-length'] === undefined ? undefined : Number(res.headers['content-length']);
      if (status === 416 && have > 0) {
        // The mirror's blob is no longer than what we hold, which is shorter than the signed size.
        throw new HttpClientError(
          'BLOB_SIZE_MISMATCH',
          `${url}: server has fewer than ${have + 1} bytes, signed size is ${expectedSize}`,
        );
      }
      if (status === 206 && have > 0) {
        const m = CONTENT_RANGE.exec(String(res.headers['content-range'] ?? ''));
        if (!m || Number(m[1]) !== have)
          throw new HttpClientError(
            'HTTP_STATUS',
            `${url}: 206 with Content-Range ${String(res.headers['content-range'])} for bytes=${have}-`,
            {
              status,
            },
          );
        if (m[3] !== '*' && Number(m[3]) !== expectedSize)
          throw new HttpClientError(
            'BLOB_SIZE_MISMATCH',
            `${url}: server's blob is ${m[3]} bytes, signed size is ${expectedSize}`,
          );
        if (declared !== undefined && have + declared > expectedSize)
          throw new HttpClientError(
            'BLOB_SIZE_MISMATCH',
            `${url}: ${have} + ${declared} bytes is more than the signed ${expectedSize}`,
          );
      } else if (status === 200) {
        if (declared !== undefined && declared !== expectedSize)
          throw new HttpClientError(
            'BLOB_SIZE_MISMATCH',
            `${url}: server sends ${declared} bytes, signed size is ${expectedSize}`,
          );
        if (have > 0) {
          // The server ignored the range (or our validator): start over.
          await fh.truncate(0).catch(diskError(`truncate ${destPath}`));
          have = 0;
          resumedFrom = 0;
          hash = createHash('sha256');
        }
      } else {
        throw statusError(url, status);
      }

      // for-await pauses the socket while a write is pending: memory stays at one chunk.
      for await (const chunk of res as AsyncIterable<Buffer>) {
        touch();
        if (have + chunk.length > expectedSize)
          throw new HttpClientError(
            'BLOB_SIZE_MISMATCH',
            `${url}: more than the signed ${expectedSize} bytes`,
          );
        hash.update(chunk);
        let off = 0;
        while (off < chunk.length) {
          const { bytesWritten } = await fh
            .write(chunk, off, chunk.length - off, have + off)
            .catch(diskError(`write ${destPath}`));
          off += bytesWritten;
        }
        have += chunk.length;
        received += chunk.length;
        opts.onBytes?.(have, expectedSize, chunk.length);
      }
      clean = true;
    } catch (e) {
      throw toClientError(e, url);
    } finally {
      done(!clean);
    }
    if (have !== expectedSize)
      throw new HttpClientError(
        'BLOB_SIZE_MISMATCH',
        `${url}: body ended at ${have} bytes, signed size is ${expectedSize}`,
      );
    const got = hash.digest('hex');
    if (got !== expectedSha256)
      throw new HttpClientError(
        'BLOB_DIGEST_MISMATCH',
        `${url}: sha256 is ${got}, signed digest is ${expectedSha256}`,
      );
    await fh.sync();
    return { resumedFrom, received };
  } catch (e) {
    // Network failures were coded where they happened; anything else here is our own disk.
    if (e instanceof HttpClientError) {
      e.resumedFrom ??= resumedFrom;
      throw e;
    }
    if (e instanceof FerryError) throw e;
    return diskError(destPath)(e);
  } finally {
    await fh.close();
  }
}

export interface RetryOptions {
  /** Total tries, including the first. */
  attempts: number;
  /** Back-off cap before the first retry (ms); doubles per retry. */
  baseMs: number;
  /** Largest back-off (ms). */
  maxMs: number;
  /** Full jitter (sleep a uniform random time in [0, cap]) when true; exactly the cap when false. */
  jitter: boolean;
  /** Which errors to retry; defaults to isRetryable. */
  retryIf?: (e: unknown) => boolean;
  random?: () => number;
  sleep?: (ms: number) => Promise<void>;
  onRetry?: (e: unknown, attempt: number, delayMs: number) => void;
}

/** The back-off before retry number `retry` (0 = after the first failure). */
export function backoffMs(
  retry: number,
  o: Pick<RetryOptions, 'baseMs' | 'maxMs' | 'jitter' | 'random'>,
): number {
  const cap = Math.min(o.maxMs, o.baseMs * 2 ** retry);
  return o.jitter ? Math.floor((o.random ?? Math.random)() * cap) : cap;
}

const defaultSleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Runs `fn` until it succeeds, it throws a non-retryable error, or `attempts` are used up. */
export async function withRetry<T>(fn: (attempt: number) => Promise<T>, o: RetryOptions): Promise<T> {
  const retryIf = o.retryIf ?? isRetryable;
  const sleep = o.sleep ?? defaultSleep;
  const attempts = Math.max(1, o.attempts);
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (e) {
      if (attempt + 1 >= attempts || !retryIf(e)) throw e;
      const delay = backoffMs(attempt, o);
      o.onRetry?.(e, attempt, delay);
      await sleep(delay);
    }
  }
}
