import { CodedError, isFerryError, type FerryErrorCode } from '../core/errors.js';

/**
 * Codes only the mirror produces: failures of the store, never refusals of a
 * bundle (those are core FerryErrorCodes); callers branch on `code`, never on
 * message text.
 */
export type MirrorErrorCode =
  /** The data directory has no state yet, or its state file is unreadable or malformed. */
  | 'STORE_INVALID'
  /** The data directory was set up for another site or trust root. */
  | 'STORE_MISMATCH'
  /** Another import holds the store's lock for longer than the wait allows. */
  | 'STORE_LOCKED';

export class MirrorError extends CodedError<MirrorErrorCode> {}

export function isMirrorError(e: unknown): e is MirrorError {
  return e instanceof MirrorError;
}

/**
 * Every code a quarantine record or an import result may carry: the reader's
 * and the freshness rule's (core/freshness.ts FreshnessCode) are FerryErrorCodes.
 */
export type QuarantineCode = FerryErrorCode;

/**
 * Whether an error is a refusal of the bundle (recorded in quarantine) rather
 * than an operational failure of the mirror itself (disk, permissions, lock),
 * which is thrown to the caller and leaves no record.
 */
export function refusalOf(e: unknown): { code: QuarantineCode; message: string } | undefined {
  if (isFerryError(e) && e.code !== 'IO_ERROR' && e.code !== 'USAGE')
    return { code: e.code, message: e.message };
  return undefined;
}
