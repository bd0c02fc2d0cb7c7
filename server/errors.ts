/**
 * Coded errors of the connected-side server. Whole refusals
 * (an export not imported, a mirror not registered) are thrown as ServerError
 * or core's TelemetryError; per-record outcomes are RejectionCodes, journaled.
 */
import { CodedError } from '../core/errors.js';
import type { TelemetryCode } from '../core/telemetry.js';
import type { WireCode } from '../core/wire-codes.js';

export type ServerCode =
  | 'UNKNOWN_MIRROR' // a mirror that is not registered
  | 'MIRROR_SITE_CONFLICT' // a mirror key registered for another site
  | 'WRONG_SITE' // a batch or export whose site is not its mirror's registered site
  | 'STORE_INVALID' // a data directory that cannot be used
  | 'STORE_UNAVAILABLE' // the durable log failed; the store must be reopened
  | 'BAD_INPUT' // a form field, option or upload that is not what it must be
  | 'USER_EXISTS' // a user name already taken
  | 'UNKNOWN_USER' // no such user
  | 'UNKNOWN_SITE' // a site that is not registered
  | 'UNKNOWN_RELEASE' // a release that is not registered
  | 'RELEASE_EXISTS' // a release name and version already registered (releases never change)
  | 'UNKNOWN_BUNDLE' // a bundle the server did not build
  | 'NO_SIGNING_KEY' // a signed bundle asked for, and no key to sign it with
  | 'BUNDLE_MISMATCH' // a signed file that is not the bundle the server built
  | 'POLICY_INVALID' // a policy artifact the agents would refuse (core/policy.ts, core/policy-refs.ts)
  | 'BAD_INVENTORY'; // a site inventory whose signature, key or format does not hold

export class ServerError extends CodedError<ServerCode> {}

/** Why a record or a whole batch was not stored; every one is journaled. */
export type RejectionCode =
  TelemetryCode | Extract<WireCode, 'WRONG_SITE' | 'BAD_ENROLMENT' | 'BAD_HEARTBEAT' | 'REPLAY'>;
