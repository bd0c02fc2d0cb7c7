/**
 * Codes only the bundler produces. Callers branch on `code`, never on message
 * text; the CLI reports these like any other coded error (exit 1).
 */
import { CodedError } from '../core/errors.js';

export type BundlerErrorCode =
  /** A policy artifact does not validate, or names a script or file the spec does not carry. */
  | 'POLICY_INVALID'
  /** A policy artifact is larger than the limit every agent enforces. */
  | 'POLICY_TOO_LARGE';

export class BundlerError extends CodedError<BundlerErrorCode> {}
