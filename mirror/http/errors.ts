/**
 * The mirror's side of the HTTP error contract (platform/http/server-errors.ts):
 * which of its own coded errors a client may learn of, each with a fixed text,
 * since the store's messages name directories. Everything else is the kit's:
 * an HttpError as written, a full disk as 507 STORAGE_FULL, the rest 500
 * INTERNAL, logged.
 */
import type { Logger } from '../../platform/log.js';
import { isFerryError } from '../../core/errors.js';
import type { WireCode } from '../../core/wire-codes.js';
import { isMirrorError } from '../errors.js';
import { isLockedError } from '../../platform/errors.js';
import {
  errorMiddleware as kitErrorMiddleware,
  publicErrorOf,
  type PublicError,
} from '../../platform/http/server-errors.js';

export { HttpError, isHttpError, type ErrorBody } from '../../platform/http/server-errors.js';

/** Every code the mirror's API answers with; one list for the mirror and the server (core/wire-codes.ts). */
export type HttpErrorCode = WireCode;

function mirrorErrors(e: unknown): PublicError | undefined {
  if (isLockedError(e))
    return { status: 503, body: { code: 'STORE_LOCKED', message: 'mirror store is busy' }, expected: true };
  if (isMirrorError(e) && (e.code === 'STORE_INVALID' || e.code === 'STORE_MISMATCH'))
    return { status: 503, body: { code: e.code, message: 'mirror store is not usable' }, expected: false };
  // A core error on a read route means stored data did not parse: our fault, not the client's.
  if (isFerryError(e) && e.code !== 'USAGE')
    return {
      status: 500,
      body: { code: 'STORE_INVALID', message: 'stored data could not be read' },
      expected: false,
    };
  return undefined;
}

/** What a client may learn from an error, and whether the log gets it. */
export function publicError(e: unknown): PublicError {
  return publicErrorOf(e, 'mirror', mirrorErrors);
}

export function errorMiddleware(log: Logger) {
  return kitErrorMiddleware(log, publicError);
}
