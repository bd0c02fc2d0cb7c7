/**
 * Errors of the shared platform layer. They extend core's one coded base, so
 * every component and the CLI report them like their own; their messages name
 * no component, since any of them may hold the lock or the file.
 */
import { CodedError } from '../core/errors.js';

export type PlatformErrorCode =
  /** Another process holds a data directory's lock for longer than the wait allows. */
  | 'STORE_LOCKED'
  /** A service was asked to serve TLS, which the HTTP server kit does not do yet. */
  | 'TLS_NOT_IMPLEMENTED';

export class PlatformError extends CodedError<PlatformErrorCode> {}

export function isLockedError(e: unknown): e is PlatformError {
  return e instanceof PlatformError && e.code === 'STORE_LOCKED';
}
