import { CodedError } from '../core/errors.js';

/** Why one host of `ferry bootstrap ssh` was not installed; callers branch on `code`. */
export type BootstrapErrorCode =
  /** The host's key is not the one known_hosts or the pinned fingerprint names: nothing was run. */
  | 'HOST_KEY_MISMATCH'
  /** Neither known_hosts nor a pinned fingerprint names this host: it is never accepted blindly. */
  | 'HOST_KEY_UNKNOWN'
  /** Connecting or authenticating failed (the message says how). */
  | 'SSH_FAILED'
  /** The mirror did not say which site it serves (give --site). */
  | 'MIRROR_UNREACHABLE'
  /** The host is not a platform ferry ships an agent for. */
  | 'PLATFORM_UNSUPPORTED'
  /** install.sh on the host refused (its own code follows in the message) or failed. */
  | 'INSTALL_REFUSED';

export class BootstrapError extends CodedError<BootstrapErrorCode> {}
