/**
 * The site log (docs/mirror.md "Site log"): what one mirror of a site decided
 * that every other mirror of the site must honour — operator rollout actions,
 * the gate's own halts, enrolments and revocations. Each entry is a DSSE
 * envelope signed by the deciding mirror's own key; its id is the sha256 of
 * the exact payload bytes signed. Entries are facts, never commands: the merge
 * rule (core/rollout/merge.ts) reads them as a set, so arrival order cannot let
 * a mirror that has not heard of a decision undo it.
 */
import { createHash } from 'node:crypto';
import { decodeBase64Strict } from './encoding.js';
import { assertEnvelope, countSigners, signEnvelope, type Envelope, type Signer } from './dsse.js';
import { CodedError } from './errors.js';
import { parseJsonStrict } from './json.js';
import { isAgentId } from './heartbeat.js';

export const SITE_LOG_PAYLOAD_TYPE = 'application/vnd.ferry.site-log+json';
export const SITE_LOG_TYPE = 'ferry.site-log/v1';

export const SITE_LOG_LIMITS = {
  /** One entry's envelope, as JSON. */
  maxEntryBytes: 8 * 1024,
  /** Entries in one answer of `GET /v1/site-log`. */
  maxPerPage: 256,
} as const;

export type SiteLogCode =
  | 'SITE_LOG_INVALID'
  | 'SITE_LOG_TOO_LARGE'
  | 'SITE_LOG_UNKNOWN_MIRROR'
  | 'SITE_LOG_BAD_SIGNATURE'
  | 'SITE_LOG_WRONG_SITE';

export class SiteLogError extends CodedError<SiteLogCode> {}

export type RolloutAction = 'approve' | 'halt' | 'resume' | 'abort' | 'update-now';

export type SiteLogBody =
  | {
      kind: 'rollout';
      rolloutId: string;
      action: RolloutAction;
      actor: string;
      reason: string;
      /** approve: the wave it opens. */
      wave?: number;
      /** resume: the ids of the halt entries it lifts (those the resuming mirror knew of). */
      lifts?: string[];
      /** abort: whether updated agents go back. */
      revert?: boolean;
      /** update-now: the agent let go, with its groups. */
      agentId?: string;
      groups?: string[];
    }
  | {
      kind: 'enrol';
      agentId: string;
      publicKey: string;
      hostname: string;
      platform: string;
      groups: string[];
      enrolledAt: string;
    }
  | { kind: 'revoke'; agentId: string; revokedAt: string; reason: string };

export type SiteLogPayload = SiteLogBody & {
  type: typeof SITE_LOG_TYPE;
  site: string;
  /** The deciding mirror's id (core/telemetry.ts mirrorIdOf). */
  mirror: string;
  /** When it decided (ms since the epoch, its own clock): shown, never used to order. */
  at: number;
};

export interface SiteEntry {
  id: string;
  envelope: Envelope;
  payload: SiteLogPayload;
}

const ACTIONS: readonly string[] = ['approve', 'halt', 'resume', 'abort', 'update-now'];
const HEX64 = /^[0-9a-f]{64}$/;
const invalid = (m: string) => new SiteLogError('SITE_LOG_INVALID', `site log entry: ${m}`);

function str(o: Record<string, unknown>, k: string, max: number, empty = false): string {
  const v = o[k];
  if (typeof v !== 'string' || v.length > max || (!empty && v === ''))
    throw invalid(`${k} must be a string of at most ${max} characters`);
  return v;
}

function strList(o: Record<string, unknown>, k: string, max: number, each: (s: string) => boolean): string[] {
  const v = o[k];
  if (!Array.isArray(v) || v.length > max || !v.every((x) => typeof x === 'string' && each(x)))
    throw invalid(`${k} must be a list of at most ${max} valid strings`);
  return v as string[];
}

const GROUP = /^[A-Za-z0-9._*-]{1,64}$/;

const ALLOWED: Record<SiteLogBody['kind'], readonly string[]> = {
  rollout: ['rolloutId', 'action', 'actor', 'reason', 'wave', 'lifts', 'revert', 'agentId', 'groups'],
  enrol: ['agentId', 'publicKey', 'hostname', 'platform', 'groups', 'enrolledAt'],
  revoke: ['agentId', 'revokedAt', 'reason'],
};

/** Checks an untrusted payload field by field; names the bad one. */
export function assertSitePayload(v: unknown): asserts v is SiteLogPayload {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalid('not an object');
  const o = v as Record<string, unknown>;
  if (o.type !== SITE_LOG_TYPE) throw invalid(`type must be ${SITE_LOG_TYPE}`);
  str(o, 'site', 64);
  if (!isAgentId(o.mirror)) throw invalid('mirror must be 32 lowercase hex digits');
  if (!Number.isSafeInteger(o.at) || (o.at as number) < 0) throw invalid('at must be a time in ms');
  const kind = o.kind;
  if (kind !== 'rollout' && kind !== 'enrol' && kind !== 'revoke') throw invalid('unknown kind');
  const known = new Set(['type', 'site', 'mirror', 'at', 'kind', ...ALLOWED[kind]]);
  for (const k of Object.keys(o)) if (!known.has(k)) throw invalid(`unknown field ${k}`);
  if (!isAgentId(o.agentId) && (kind !== 'rollout' || o.agentId !== undefined))
    throw invalid('agentId must be 32 lowercase hex digits');
  if (kind === 'enrol') {
    if (typeof o.publicKey !== 'string' || !/^[0-9a-f]{64}$/.test(o.publicKey))
      throw invalid('publicKey must be 64 lowercase hex digits');
    str(o, 'hostname', 255);
    str(o, 'platform', 64);
    strList(o, 'groups', 64, (g) => GROUP.test(g));
    if (Number.isNaN(Date.parse(str(o, 'enrolledAt', 40)))) throw invalid('enrolledAt must be a time');
    return;
  }
  if (kind === 'revoke') {
    if (Number.isNaN(Date.parse(str(o, 'revokedAt', 40)))) throw invalid('revokedAt must be a time');
    str(o, 'reason', 512, true);
    return;
  }
  if (typeof o.rolloutId !== 'string' || !HEX64.test(o.rolloutId)) throw invalid('rolloutId must be 64 hex');
  const action = o.action;
  if (typeof action !== 'string' || !ACTIONS.includes(action)) throw invalid('unknown action');
  str(o, 'actor', 128);
  str(o, 'reason', 512, true);
  const need = (k: string, ok: boolean) => {
    if (ok !== (o[k] !== undefined))
      throw invalid(`${k} is ${ok ? 'required' : 'not allowed'} for ${action}`);
  };
  need('wave', action === 'approve');
  need('lifts', action === 'resume');
  need('revert', action === 'abort');
  need('agentId', action === 'update-now');
  need('groups', action === 'update-now');
  if (
    o.wave !== undefined &&
    (!Number.isSafeInteger(o.wave) || (o.wave as number) < 1 || (o.wave as number) > 100)
  )
    throw invalid('wave must be 1-100');
  if (o.lifts !== undefined) strList(o, 'lifts', 256, (x) => HEX64.test(x));
  if (o.revert !== undefined && typeof o.revert !== 'boolean') throw invalid('revert must be a boolean');
  if (o.groups !== undefined) strList(o, 'groups', 64, (g) => GROUP.test(g));
}

export const entryIdOf = (body: Uint8Array): string => createHash('sha256').update(body).digest('hex');

/** Signs one entry with the deciding mirror's key. */
export function signSiteEntry(p: SiteLogPayload, key: Signer): SiteEntry {
  assertSitePayload(p);
  const body = Buffer.from(JSON.stringify(p), 'utf8');
  const envelope = signEnvelope(SITE_LOG_PAYLOAD_TYPE, body, [key]);
  return { id: entryIdOf(body), envelope, payload: p };
}

/**
 * Opens an untrusted entry (an envelope as parsed JSON): well-formed, small, of `site`, and signed by
 * the key of the mirror it names, which must be among `mirrors` (mirror id → public key).
 */
export function openSiteEntry(v: unknown, mirrors: ReadonlyMap<string, Uint8Array>, site: string): SiteEntry {
  if (Buffer.byteLength(JSON.stringify(v ?? null)) > SITE_LOG_LIMITS.maxEntryBytes)
    throw new SiteLogError(
      'SITE_LOG_TOO_LARGE',
      `a site log entry is at most ${SITE_LOG_LIMITS.maxEntryBytes} bytes`,
    );
  try {
    assertEnvelope(v, 'site log entry');
  } catch (e) {
    throw invalid((e as Error).message);
  }
  if (v.payloadType !== SITE_LOG_PAYLOAD_TYPE) throw invalid(`payloadType must be ${SITE_LOG_PAYLOAD_TYPE}`);
  let body: Buffer;
  let payload: unknown;
  try {
    body = decodeBase64Strict(v.payload, 'payload');
    payload = parseJsonStrict(body, { maxBytes: SITE_LOG_LIMITS.maxEntryBytes, maxDepth: 4 });
  } catch (e) {
    throw invalid((e as Error).message);
  }
  assertSitePayload(payload);
  const key = mirrors.get(payload.mirror);
  if (!key)
    throw new SiteLogError(
      'SITE_LOG_UNKNOWN_MIRROR',
      `mirror ${payload.mirror} is not a listed peer of this site`,
    );
  if (countSigners(v, body, new Map([['k', key]])).length !== 1)
    throw new SiteLogError('SITE_LOG_BAD_SIGNATURE', `not signed by mirror ${payload.mirror}`);
  if (payload.site !== site)
    throw new SiteLogError('SITE_LOG_WRONG_SITE', `entry is for site ${payload.site}, not ${site}`);
  return {
    id: entryIdOf(body),
    envelope: { payloadType: v.payloadType, payload: v.payload, signatures: v.signatures },
    payload,
  };
}
