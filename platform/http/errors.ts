/**
 * Coded errors of the outbound HTTP client and of verified downloads. Each
 * extends core's CodedError, so the CLI and the services report them like
 * their own; callers branch on `code`, never on the message.
 */
import { CodedError } from '../../core/errors.js';

export type HttpClientErrorCode =
  /** No progress (connect, response head, or between body chunks) for the idle timeout. */
  | 'HTTP_TIMEOUT'
  /** The request as a whole did not finish within its total deadline. */
  | 'HTTP_DEADLINE'
  /** The caller cancelled the request (a service stopping). */
  | 'HTTP_ABORTED'
  | 'HTTP_STATUS'
  | 'HTTP_TOO_LARGE'
  | 'HTTP_NETWORK'
  | 'HTTP_URL_INVALID'
  | 'BLOB_DIGEST_MISMATCH'
  | 'BLOB_SIZE_MISMATCH';

export class HttpClientError extends CodedError<HttpClientErrorCode> {
  /** Whether trying the same request again may succeed (network, idle timeout, 5xx, 429). */
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
    super(code, message, { cause: opts.cause });
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

/**
 * The destination filesystem has no room: refused before a download when the
 * signed size plus the reserve does not fit, or raised when a write hit ENOSPC
 * (the partial file is then removed). No source can fix this; the operator must.
 */
export class StorageFullError extends CodedError<'STORAGE_FULL'> {
  constructor(
    message: string,
    /** The directory whose filesystem is full. */
    readonly path: string,
    /** Bytes the download still needed, reserve included. */
    readonly needBytes: number,
    /** Bytes free for this process when the shortage was seen. */
    readonly freeBytes: number,
    options?: { cause?: unknown },
  ) {
    super('STORAGE_FULL', message, options);
  }
}

export function isStorageFull(e: unknown): e is StorageFullError {
  return e instanceof StorageFullError;
}

export type BlobFetchErrorCode = 'BLOB_UNAVAILABLE' | 'BLOB_REF_INVALID';

export interface BlobAttempt {
  mirror: string;
  code: HttpClientErrorCode;
  message: string;
}

/** Every mirror was tried and none delivered the blob; `attempts` says what each did. */
export class BlobFetchError extends CodedError<BlobFetchErrorCode> {
  constructor(
    code: BlobFetchErrorCode,
    message: string,
    readonly attempts: BlobAttempt[] = [],
  ) {
    super(code, message);
  }
}
