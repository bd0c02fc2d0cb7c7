/**
 * Coded errors. Callers branch on `code`, never on message text. Every refusal
 * ferry makes is one of these, with a one-line message that names the reason.
 */
export type FerryErrorCode =
  // usage and input files
  | 'USAGE'
  | 'SPEC_INVALID'
  | 'IO_ERROR'
  // keys
  | 'KEY_INVALID'
  | 'KEY_PERMISSIONS'
  // DSSE envelopes
  | 'ENVELOPE_INVALID'
  | 'PAYLOAD_TYPE_MISMATCH'
  | 'SIGNATURE_THRESHOLD'
  | 'ALREADY_SIGNED'
  // trust root
  | 'ROOT_INVALID'
  | 'ROOT_EXPIRED'
  | 'ROOT_CHAIN_BROKEN'
  | 'ROOT_ROLLBACK'
  | 'ROOT_SIGNATURE'
  // manifest
  | 'MANIFEST_INVALID'
  | 'MANIFEST_EXPIRED'
  | 'MANIFEST_TOO_LARGE'
  | 'SITE_MISMATCH'
  // freshness (core/freshness.ts): one sequence space per site trust root
  | 'SEQUENCE_ROLLBACK'
  | 'EQUIVOCATION'
  // bundle container
  | 'TAR_INVALID'
  | 'TAR_TRUNCATED'
  | 'ENTRY_TYPE_FORBIDDEN'
  | 'ENTRY_NAME_FORBIDDEN'
  | 'ENTRY_DUPLICATE'
  | 'ENTRY_ORDER'
  | 'ENTRY_NOT_IN_MANIFEST'
  | 'ENTRY_TOO_LARGE'
  | 'BLOB_DIGEST_MISMATCH'
  | 'BLOB_SIZE_MISMATCH'
  | 'BUNDLE_INCOMPLETE'
  // agent self-update (ferry agent rollback)
  | 'NO_PREVIOUS_VERSION'
  | 'UPDATE_IN_PROGRESS'
  | 'CURRENT_MISMATCH'
  | 'AGENT_RUNNING';

/**
 * The base of every component's coded error: a stable `code` and a one-line
 * message. Components keep their own code unions (FerryError here, MirrorError
 * in mirror/); the CLI reports any CodedError the same way without knowing them.
 */
export class CodedError<C extends string = string> extends Error {
  readonly code: C;

  constructor(code: C, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

export function isCodedError(e: unknown): e is CodedError {
  return e instanceof CodedError;
}

export class FerryError extends CodedError<FerryErrorCode> {}

export function isFerryError(e: unknown): e is FerryError {
  return e instanceof FerryError;
}

export function usage(message: string): FerryError {
  return new FerryError('USAGE', message);
}
