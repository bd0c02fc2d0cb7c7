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
  | 'STORE_UNAVAILABLE'; // the durable log failed; the store must be reopened

export class ServerError extends CodedError<ServerCode> {}

/** Why a record or a whole batch was not stored; every one is journaled. */
export type RejectionCode =
  TelemetryCode | Extract<WireCode, 'WRONG_SITE' | 'BAD_ENROLMENT' | 'BAD_HEARTBEAT' | 'REPLAY'>;
