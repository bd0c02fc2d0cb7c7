/**
 * Errors of the shared platform layer. They extend core's one coded base, so
 * every component and the CLI report them like their own; their messages name
 * no component, since any of them may hold the lock or the file.
 */
import { CodedError } from '../core/errors.js';

export type PlatformErrorCode =
  /** Another process holds a data directory's lock for longer than the wait allows. */
  | 'STORE_LOCKED'
  /** A service was asked for TLS client certificates, which the HTTP server kit does not do yet. */
  | 'TLS_NOT_IMPLEMENTED'
  /** The certificate or key a service was given to serve TLS cannot be read or do not form a pair. */
  | 'TLS_INVALID'

  /** A path the operator named does not exist (the message names it). */
  | 'NOT_FOUND'
  /** A path names a directory or a device where a regular file was expected (the message says which). */
  | 'NOT_A_FILE'
  /** A file exists but does not start with a ferry bundle's manifest entry. */
  | 'NOT_A_BUNDLE'
  /** Any other failure to read a named path (permissions, I/O); the message names path and cause. */
  | 'IO_ERROR';

export class PlatformError extends CodedError<PlatformErrorCode> {}

export function isLockedError(e: unknown): e is PlatformError {
  return e instanceof PlatformError && e.code === 'STORE_LOCKED';
}
