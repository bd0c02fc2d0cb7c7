import { CodedError, isFerryError, type FerryErrorCode } from '../core/errors.js';

/**
 * Codes only the mirror produces. Refusals a bundle can earn at the mirror are
 * either one of these or a core FerryErrorCode from the reader; callers branch
 * on `code`, never on message text.
 */
export type MirrorErrorCode =
  /** A manifest's sequence is below the highest this mirror accepted from its publisher. */
  | 'SEQUENCE_ROLLBACK'
  /** Same publisher and sequence as an accepted manifest, different signed content. */
  | 'EQUIVOCATION'
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

/** Every code a quarantine record or an import result may carry. */
export type RefusalCode = FerryErrorCode | MirrorErrorCode;

/**
 * Whether an error is a refusal of the bundle (recorded in quarantine) rather
 * than an operational failure of the mirror itself (disk, permissions, lock),
 * which is thrown to the caller and leaves no record.
 */
export function refusalOf(e: unknown): { code: RefusalCode; message: string } | undefined {
  if (isFerryError(e) && e.code !== 'IO_ERROR' && e.code !== 'USAGE')
    return { code: e.code, message: e.message };
  if (isMirrorError(e) && (e.code === 'SEQUENCE_ROLLBACK' || e.code === 'EQUIVOCATION'))
    return { code: e.code, message: e.message };
  return undefined;
}
