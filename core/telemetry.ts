/**
 * The formats of the telemetry path home (pure: build, sign, verify, validate;
 * no I/O).
 *
 * A mirror keeps what it accepts in its outbox as *records*, each with the
 * mirror's own sequence number: agent heartbeats (signed by the agent),
 * enrolments (an agent the mirror admitted, with the agent's own signed
 * request), revocations (an agent the site operator shut out), and *batches*
 * relayed from other mirrors. It sends its own records
 * home in **batches** signed with the mirror's key:
 *
 *   {type:'ferry.telemetry-batch/v1', mirror, site, createdAt, from, to, records:[…]}
 *
 * `from..to` is the part of the mirror's sequence the batch covers: every own
 * record of the mirror in that range is in it, so the server sees a removed
 * record as a hole. A batch travels as {envelope, via}: `via` lists the mirrors
 * it crossed, origin first; a mirror that finds itself there refuses it (LOOP).
 *
 * With no link, the mirror writes an **export** for the courier: JSON lines,
 * the first a DSSE envelope over a header
 *
 *   {type:'ferry.telemetry-export/v1', mirror, site, number, prev, createdAt, from, to, count, sha256}
 *
 * and then `count` lines, each one own record or one relayed batch. `sha256`
 * covers the bytes of those lines exactly; `prev` is the hash of the previous
 * export's header (null for the first), so exports form a chain. The server
 * answers with an **ack** signed by its key:
 *
 *   {type:'ferry.telemetry-ack/v1', mirror, number, hash, upTo, createdAt}
 *
 * which the courier carries back so the mirror can trim what arrived.
 */
import { createHash } from 'node:crypto';
import { decodeBase64Strict } from './encoding.js';
import {
  assertEnvelope,
  countSigners,
  signEnvelope,
  verifyEnvelope,
  type Envelope,
  type Signer,
} from './dsse.js';
import { keyIdOf } from './ed25519.js';
import { CodedError } from './errors.js';
import { isAgentId } from './heartbeat.js';
import { parseJsonStrict } from './json.js';

export const BATCH_PAYLOAD_TYPE = 'application/vnd.ferry.telemetry-batch+json';
export const BATCH_TYPE = 'ferry.telemetry-batch/v1';
export const EXPORT_PAYLOAD_TYPE = 'application/vnd.ferry.telemetry-export+json';
export const EXPORT_TYPE = 'ferry.telemetry-export/v1';
export const ACK_PAYLOAD_TYPE = 'application/vnd.ferry.telemetry-ack+json';
export const ACK_TYPE = 'ferry.telemetry-ack/v1';

export const TELEMETRY_LIMITS = {
  /** Records in one batch. */
  batchRecords: 1000,
  /** Bytes of one batch payload. */
  batchBytes: 4 * 1024 * 1024,
  /** Mirrors a batch may cross. */
  viaHops: 16,
  /** Bytes of one export line. */
  exportLineBytes: 8 * 1024 * 1024,
} as const;

export type TelemetryCode =
  | 'TELEMETRY_INVALID' // malformed batch, record, export or ack
  | 'BAD_SIGNATURE' // a signature that does not verify under the key it must
  | 'UNKNOWN_MIRROR' // signed by a mirror the verifier does not know
  | 'LOOP' // a batch that already crossed this mirror
  | 'EXPORT_TAMPERED' // an export whose lines do not match its signed header
  | 'EXPORT_OUT_OF_ORDER' // records not in strictly increasing seq, or an export older than one imported
  | 'ACK_MISMATCH' // an ack for another mirror, or for an export this mirror did not make
  | 'SERVER_KEY_MISSING' // no server key pinned to check an ack with
  | 'SERVER_KEY_MISMATCH'; // a server key other than the pinned one

export class TelemetryError extends CodedError<TelemetryCode> {}

/** Mirror id = first 32 hex of the keyid of the mirror's public key (same rule as agent ids). */
export function mirrorIdOf(publicKey: Uint8Array): string {
  return keyIdOf(publicKey).slice(0, 32);
}
export const isMirrorId = isAgentId;

const HEX64 = /^[0-9a-f]{64}$/;
const SITE = /^[A-Za-z0-9._-]{1,64}$/;

/** An agent a mirror admitted: what the server needs to check that agent's heartbeats. */
export interface EnrolmentInfo {
  agentId: string;
  /** Lowercase hex of the agent's raw Ed25519 public key. */
  publicKey: string;
  hostname: string;
  platform: string;
  groups: string[];
  enrolledAt: string;
  /** The agent's own signed enrolment request (proof it holds the key), when the mirror kept it. */
  request?: Envelope;
}

/** An agent the site's operator revoked at this mirror: its heartbeats are no longer taken. */
export interface RevocationInfo {
  agentId: string;
  revokedAt: string;
  /** Why, in the operator's words (may be empty). */
  reason: string;
}

/** What a site's mirror decided about a staged rollout (docs/rollout.md), carried home like heartbeats. */
export const ROLLOUT_EVENTS = [
  'started', // the mirror adopted a manifest with a new rollout
  'wave_opened', // a wave opened (soak and evidence met, or approved)
  'halted', // auto-halt (failure rate over maxFailureRate) or an operator's halt
  'approved', // an operator approved the next wave (manual strategy)
  'resumed', // an operator resumed a halted rollout
  'aborted', // an operator aborted (revert: agents sent back to the previous version)
  'completed', // every wave open and the last one soaked
  'superseded', // a newer manifest replaced this rollout mid-way
  'update_now', // an operator let one agent update ahead of its wave
] as const;
export type RolloutEventName = (typeof ROLLOUT_EVENTS)[number];

/** Per-wave (or whole-rollout) counts of agents, as the mirror saw them when it decided. */
export interface RolloutCounts {
  agents: number;
  pending: number;
  updating: number;
  committed: number;
  failed: number;
  rolledBack: number;
  silent: number;
}
export const ROLLOUT_COUNT_KEYS = [
  'agents',
  'pending',
  'updating',
  'committed',
  'failed',
  'rolledBack',
  'silent',
] as const;

export interface RolloutEventInfo {
  /** 64 lowercase hex: names one rollout (same manifest plan, same id at every mirror of the site). */
  rolloutId: string;
  /** Sequence of the manifest that carries the plan. */
  manifestSequence: number;
  /** The agent version the rollout moves the site to. */
  version: string;
  event: RolloutEventName;
  /** 0-based index of the wave the event is about. */
  wave: number;
  /** `mirror` when the mirror decided on its own evidence, else the operator's name as given. */
  actor: string;
  /** Counts in the wave the decision was about. */
  counts?: RolloutCounts;
  /** `maxFailureRate` of the plan, and the failure rate measured, for a halt. */
  threshold?: number;
  failureRate?: number;
  /** For `aborted`: whether updated agents were sent back to the previous version. */
  revert?: boolean;
  reason: string;
}

export type OwnRecord =
  | { kind: 'heartbeat'; seq: number; at: string; agentId: string; counter: number; envelope: Envelope }
  | { kind: 'enrolment'; seq: number; at: string; agent: EnrolmentInfo }
  | { kind: 'revocation'; seq: number; at: string; revocation: RevocationInfo }
  | { kind: 'rollout'; seq: number; at: string; rollout: RolloutEventInfo };

/** A batch from another mirror, held in custody by this one. */
export interface RelayedRecord {
  kind: 'batch';
  seq: number;
  at: string;
  via: string[];
  envelope: Envelope;
}

export type OutboxRecord = OwnRecord | RelayedRecord;

export interface BatchPayload {
  type: typeof BATCH_TYPE;
  mirror: string;
  site: string;
  createdAt: string;
  from: number;
  to: number;
  records: OwnRecord[];
}

/** A signed batch on its way: the envelope and the mirrors it crossed, origin first. */
export interface CarriedBatch {
  envelope: Envelope;
  via: string[];
}

export interface ExportHeader {
  type: typeof EXPORT_TYPE;
  mirror: string;
  site: string;
  /** 1 for a mirror's first export, then +1 each time. */
  number: number;
  /** sha256 hex of the previous export's header payload, null for the first. */
  prev: string | null;
  createdAt: string;
  /** The mirror's sequence range the export covers (from > to when it holds nothing new). */
  from: number;
  to: number;
  count: number;
  /** sha256 hex of every byte after the header line. */
  sha256: string;
}

export interface AckPayload {
  type: typeof ACK_TYPE;
  mirror: string;
  number: number;
  /** sha256 hex of the acknowledged export's header payload. */
  hash: string;
  /** Everything of the mirror's sequence up to here arrived. */
  upTo: number;
  createdAt: string;
}

const invalid = (m: string) => new TelemetryError('TELEMETRY_INVALID', m);

function obj(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalid(`${what}: not a JSON object`);
  return v as Record<string, unknown>;
}

function onlyKeys(o: Record<string, unknown>, keys: readonly string[], what: string): void {
  for (const k of Object.keys(o))
    if (!keys.includes(k)) throw invalid(`${what}: unknown field ${JSON.stringify(k)}`);
}

const isSeq = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 1;
const isTime = (v: unknown): v is string =>
  typeof v === 'string' && v.length <= 64 && !Number.isNaN(Date.parse(v));

function envelopeField(v: unknown, what: string): Envelope {
  try {
    assertEnvelope(v, what);
  } catch (e) {
    throw invalid((e as Error).message);
  }
  return v;
}

export function assertEnrolmentInfo(v: unknown, what = 'enrolment'): asserts v is EnrolmentInfo {
  const o = obj(v, what);
  onlyKeys(o, ['agentId', 'publicKey', 'hostname', 'platform', 'groups', 'enrolledAt', 'request'], what);
  if (!isAgentId(o.agentId)) throw invalid(`${what}: agentId must be 32 lowercase hex characters`);
  if (typeof o.publicKey !== 'string' || !HEX64.test(o.publicKey))
    throw invalid(`${what}: publicKey must be 64 lowercase hex characters`);
  if (typeof o.hostname !== 'string' || o.hostname.length > 253) throw invalid(`${what}: hostname`);
  if (typeof o.platform !== 'string' || o.platform.length > 64) throw invalid(`${what}: platform`);
  if (
    !Array.isArray(o.groups) ||
    o.groups.length > 64 ||
    o.groups.some((g) => typeof g !== 'string' || g.length > 64)
  )
    throw invalid(`${what}: groups must be at most 64 strings`);
  if (!isTime(o.enrolledAt)) throw invalid(`${what}: enrolledAt must be an ISO 8601 time`);
  if (o.request !== undefined) envelopeField(o.request, `${what}.request`);
}

export function assertOwnRecord(v: unknown, what = 'record'): asserts v is OwnRecord {
  const o = obj(v, what);
  if (!isSeq(o.seq)) throw invalid(`${what}: seq must be a positive integer`);
  if (!isTime(o.at)) throw invalid(`${what}: at must be an ISO 8601 time`);
  if (o.kind === 'heartbeat') {
    onlyKeys(o, ['kind', 'seq', 'at', 'agentId', 'counter', 'envelope'], what);
    if (!isAgentId(o.agentId)) throw invalid(`${what}: agentId must be 32 lowercase hex characters`);
    if (!Number.isSafeInteger(o.counter) || (o.counter as number) < 0)
      throw invalid(`${what}: counter must be a non-negative integer`);
    envelopeField(o.envelope, `${what}.envelope`);
  } else if (o.kind === 'enrolment') {
    onlyKeys(o, ['kind', 'seq', 'at', 'agent'], what);
    assertEnrolmentInfo(o.agent, `${what}.agent`);
  } else if (o.kind === 'revocation') {
    onlyKeys(o, ['kind', 'seq', 'at', 'revocation'], what);
    assertRevocationInfo(o.revocation, `${what}.revocation`);
  } else if (o.kind === 'rollout') {
    onlyKeys(o, ['kind', 'seq', 'at', 'rollout'], what);
    assertRolloutEventInfo(o.rollout, `${what}.rollout`);
  } else throw invalid(`${what}: kind must be heartbeat, enrolment, revocation or rollout`);
}

const isCount = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0;
const isRate = (v: unknown) => typeof v === 'number' && v >= 0 && v <= 1;

export function assertRolloutEventInfo(v: unknown, what = 'rollout'): asserts v is RolloutEventInfo {
  const o = obj(v, what);
  onlyKeys(
    o,
    [
      'rolloutId',
      'manifestSequence',
      'version',
      'event',
      'wave',
      'actor',
      'counts',
      'threshold',
      'failureRate',
      'revert',
      'reason',
    ],
    what,
  );
  if (typeof o.rolloutId !== 'string' || !HEX64.test(o.rolloutId))
    throw invalid(`${what}: rolloutId must be 64 lowercase hex characters`);
  if (!isSeq(o.manifestSequence)) throw invalid(`${what}: manifestSequence must be a positive integer`);
  if (typeof o.version !== 'string' || o.version === '' || o.version.length > 128)
    throw invalid(`${what}: version must be a string of 1-128 characters`);
  if (!(ROLLOUT_EVENTS as readonly unknown[]).includes(o.event))
    throw invalid(`${what}: event must be one of ${ROLLOUT_EVENTS.join(', ')}`);
  if (!Number.isSafeInteger(o.wave) || (o.wave as number) < 0 || (o.wave as number) > 1000)
    throw invalid(`${what}: wave must be an integer 0-1000`);
  if (typeof o.actor !== 'string' || o.actor === '' || o.actor.length > 128)
    throw invalid(`${what}: actor must be a string of 1-128 characters`);
  if (o.counts !== undefined) {
    const c = obj(o.counts, `${what}.counts`);
    onlyKeys(c, ROLLOUT_COUNT_KEYS, `${what}.counts`);
    for (const k of ROLLOUT_COUNT_KEYS)
      if (!isCount(c[k])) throw invalid(`${what}.counts.${k} must be a non-negative integer`);
  }
  if (o.threshold !== undefined && !isRate(o.threshold)) throw invalid(`${what}: threshold must be 0-1`);
  if (o.failureRate !== undefined && !isRate(o.failureRate))
    throw invalid(`${what}: failureRate must be 0-1`);
  if (o.revert !== undefined && typeof o.revert !== 'boolean')
    throw invalid(`${what}: revert must be a boolean`);
  if (typeof o.reason !== 'string' || o.reason.length > 512)
    throw invalid(`${what}: reason must be a string of at most 512 characters`);
}

export function assertRevocationInfo(v: unknown, what = 'revocation'): asserts v is RevocationInfo {
  const o = obj(v, what);
  onlyKeys(o, ['agentId', 'revokedAt', 'reason'], what);
  if (!isAgentId(o.agentId)) throw invalid(`${what}: agentId must be 32 lowercase hex characters`);
  if (!isTime(o.revokedAt)) throw invalid(`${what}: revokedAt must be an ISO 8601 time`);
  if (typeof o.reason !== 'string' || o.reason.length > 512)
    throw invalid(`${what}: reason must be a string of at most 512 characters`);
}

export function assertVia(v: unknown, what = 'via'): asserts v is string[] {
  if (!Array.isArray(v) || v.length === 0 || v.length > TELEMETRY_LIMITS.viaHops)
    throw invalid(`${what}: must list 1-${TELEMETRY_LIMITS.viaHops} mirror ids`);
  if (!v.every(isMirrorId)) throw invalid(`${what}: every entry must be a mirror id`);
  if (new Set(v).size !== v.length) throw new TelemetryError('LOOP', `${what}: a mirror appears twice`);
}

export function assertRelayedRecord(v: unknown, what = 'record'): asserts v is RelayedRecord {
  const o = obj(v, what);
  onlyKeys(o, ['kind', 'seq', 'at', 'via', 'envelope'], what);
  if (o.kind !== 'batch') throw invalid(`${what}: kind must be batch`);
  if (!isSeq(o.seq)) throw invalid(`${what}: seq must be a positive integer`);
  if (!isTime(o.at)) throw invalid(`${what}: at must be an ISO 8601 time`);
  assertVia(o.via, `${what}.via`);
  envelopeField(o.envelope, `${what}.envelope`);
}

export function assertOutboxRecord(v: unknown, what = 'record'): asserts v is OutboxRecord {
  if (obj(v, what).kind === 'batch') assertRelayedRecord(v, what);
  else assertOwnRecord(v, what);
}

/** Structure of a carried batch, without its signature: what a relay can check. */
export function assertCarriedBatch(v: unknown, what = 'batch'): asserts v is CarriedBatch {
  const o = obj(v, what);
  onlyKeys(o, ['envelope', 'via'], what);
  const env = envelopeField(o.envelope, `${what}.envelope`);
  if (env.payloadType !== BATCH_PAYLOAD_TYPE)
    throw invalid(`${what}: payloadType must be ${BATCH_PAYLOAD_TYPE}`);
  if (env.payload.length > Math.ceil(TELEMETRY_LIMITS.batchBytes / 3) * 4)
    throw invalid(`${what}: payload is larger than ${TELEMETRY_LIMITS.batchBytes} bytes`);
  assertVia(o.via, `${what}.via`);
}

/**
 * Deepest nesting of ferry's telemetry formats: batch → records → record →
 * agent → request envelope → signatures → signature.
 */
const TELEMETRY_DEPTH = 8;

/** A signed payload as strict JSON (core/json.ts): no duplicate keys, capped in size and depth. */
function parseJson(body: Buffer, what: string, maxBytes: number = TELEMETRY_LIMITS.batchBytes): unknown {
  try {
    return parseJsonStrict(body, { maxBytes, maxDepth: TELEMETRY_DEPTH });
  } catch (e) {
    throw invalid(`${what}: payload is not strict UTF-8 JSON: ${(e as Error).message}`);
  }
}

export function assertBatchPayload(v: unknown): asserts v is BatchPayload {
  const o = obj(v, 'batch');
  onlyKeys(o, ['type', 'mirror', 'site', 'createdAt', 'from', 'to', 'records'], 'batch');
  if (o.type !== BATCH_TYPE) throw invalid(`batch: type must be ${BATCH_TYPE}`);
  if (!isMirrorId(o.mirror)) throw invalid('batch: mirror must be a mirror id');
  if (typeof o.site !== 'string' || !SITE.test(o.site)) throw invalid('batch: site');
  if (!isTime(o.createdAt)) throw invalid('batch: createdAt must be an ISO 8601 time');
  if (!isSeq(o.from) || !isSeq(o.to) || o.to < o.from) throw invalid('batch: from..to must be a seq range');
  if (!Array.isArray(o.records) || o.records.length > TELEMETRY_LIMITS.batchRecords)
    throw invalid(`batch: records must be an array of at most ${TELEMETRY_LIMITS.batchRecords}`);
  let last = o.from - 1;
  o.records.forEach((r, i) => {
    assertOwnRecord(r, `batch.records[${i}]`);
    if (r.seq <= last || r.seq > (o.to as number))
      throw new TelemetryError(
        'EXPORT_OUT_OF_ORDER',
        `batch.records[${i}]: seq ${r.seq} out of order or range`,
      );
    last = r.seq;
  });
}

/** Signs a batch of this mirror's own records. */
export function signBatch(p: BatchPayload, mirrorKey: Signer): Envelope {
  assertBatchPayload(p);
  return signEnvelope(BATCH_PAYLOAD_TYPE, Buffer.from(JSON.stringify(p), 'utf8'), [mirrorKey]);
}

function verifyOne(env: Envelope, payloadType: string, publicKey: Uint8Array, what: string): Buffer {
  try {
    return verifyEnvelope(
      env,
      payloadType,
      { keys: new Map([[keyIdOf(publicKey), publicKey]]), threshold: 1 },
      what,
    ).body;
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === 'SIGNATURE_THRESHOLD')
      throw new TelemetryError('BAD_SIGNATURE', `${what}: not signed by its mirror`);
    throw invalid((e as Error).message);
  }
}

/** A batch decoded and parsed once, before its signature is checked: `mirror` names the key to check it with. */
export interface ClaimedBatch {
  mirror: string;
  body: Buffer;
  payload: unknown;
}

export function claimBatch(env: Envelope): ClaimedBatch {
  if (env.payloadType !== BATCH_PAYLOAD_TYPE)
    throw invalid(`batch: payloadType must be ${BATCH_PAYLOAD_TYPE}`);
  const body = decodeBase64Strict(env.payload, 'batch payload');
  const payload = parseJson(body, 'batch');
  const mirror = obj(payload, 'batch').mirror;
  if (!isMirrorId(mirror)) throw invalid('batch: mirror must be a mirror id');
  return { mirror, body, payload };
}

/** Verifies a claimed batch under its origin mirror's key (no second decode or parse); returns the validated payload. */
export function verifyClaimedBatch(
  env: Envelope,
  c: ClaimedBatch,
  mirrorPublicKey: Uint8Array,
): BatchPayload {
  if (countSigners(env, c.body, new Map([[keyIdOf(mirrorPublicKey), mirrorPublicKey]])).length === 0)
    throw new TelemetryError('BAD_SIGNATURE', 'batch: not signed by its mirror');
  assertBatchPayload(c.payload);
  if (c.payload.mirror !== mirrorIdOf(mirrorPublicKey))
    throw new TelemetryError('BAD_SIGNATURE', 'batch: signed by a key that is not the named mirror');
  return c.payload;
}

/** Verifies a batch under its origin mirror's key; returns the validated payload. */
export function verifyBatch(env: Envelope, mirrorPublicKey: Uint8Array): BatchPayload {
  return verifyClaimedBatch(env, claimBatch(env), mirrorPublicKey);
}

export const sha256Hex = (b: Uint8Array | string) => createHash('sha256').update(b).digest('hex');

export function assertExportHeader(v: unknown): asserts v is ExportHeader {
  const o = obj(v, 'export header');
  onlyKeys(
    o,
    ['type', 'mirror', 'site', 'number', 'prev', 'createdAt', 'from', 'to', 'count', 'sha256'],
    'export header',
  );
  if (o.type !== EXPORT_TYPE) throw invalid(`export header: type must be ${EXPORT_TYPE}`);
  if (!isMirrorId(o.mirror)) throw invalid('export header: mirror must be a mirror id');
  if (typeof o.site !== 'string' || !SITE.test(o.site)) throw invalid('export header: site');
  if (!isSeq(o.number)) throw invalid('export header: number must be a positive integer');
  if (o.prev !== null && (typeof o.prev !== 'string' || !HEX64.test(o.prev)))
    throw invalid('export header: prev must be a sha256 hex or null');
  if ((o.number === 1) !== (o.prev === null))
    throw invalid('export header: prev is null exactly for number 1');
  if (!isTime(o.createdAt)) throw invalid('export header: createdAt must be an ISO 8601 time');
  if (!isSeq(o.from) || !Number.isSafeInteger(o.to) || (o.to as number) < o.from - 1)
    throw invalid('export header: from..to must be a seq range');
  if (!Number.isSafeInteger(o.count) || (o.count as number) < 0) throw invalid('export header: count');
  if (typeof o.sha256 !== 'string' || !HEX64.test(o.sha256)) throw invalid('export header: sha256');
}

/** The header line of an export: a DSSE envelope over the header, signed by the mirror. */
export function signExportHeader(h: ExportHeader, mirrorKey: Signer): { line: string; hash: string } {
  assertExportHeader(h);
  const body = Buffer.from(JSON.stringify(h), 'utf8');
  return {
    line: JSON.stringify(signEnvelope(EXPORT_PAYLOAD_TYPE, body, [mirrorKey])),
    hash: sha256Hex(body),
  };
}

/** Parses an export's header line without checking its signature (to find the mirror's key). */
export function readExportHeader(line: string): { envelope: Envelope; header: ExportHeader; hash: string } {
  let v: unknown;
  try {
    v = parseJsonStrict(line, { maxBytes: TELEMETRY_LIMITS.exportLineBytes, maxDepth: 3 });
  } catch (e) {
    throw invalid(`export: first line is not strict JSON: ${(e as Error).message}`);
  }
  const envelope = envelopeField(v, 'export header');
  if (envelope.payloadType !== EXPORT_PAYLOAD_TYPE)
    throw invalid(`export header: payloadType must be ${EXPORT_PAYLOAD_TYPE}`);
  const body = decodeBase64Strict(envelope.payload, 'export header payload');
  const header = parseJson(body, 'export header');
  assertExportHeader(header);
  return { envelope, header, hash: sha256Hex(body) };
}

/** Checks an export header's signature under the mirror's key. */
export function verifyExportHeader(
  envelope: Envelope,
  header: ExportHeader,
  mirrorPublicKey: Uint8Array,
): void {
  verifyOne(envelope, EXPORT_PAYLOAD_TYPE, mirrorPublicKey, 'export');
  if (header.mirror !== mirrorIdOf(mirrorPublicKey))
    throw new TelemetryError('BAD_SIGNATURE', 'export: signed by a key that is not the named mirror');
}

export function assertAck(v: unknown): asserts v is AckPayload {
  const o = obj(v, 'ack');
  onlyKeys(o, ['type', 'mirror', 'number', 'hash', 'upTo', 'createdAt'], 'ack');
  if (o.type !== ACK_TYPE) throw invalid(`ack: type must be ${ACK_TYPE}`);
  if (!isMirrorId(o.mirror)) throw invalid('ack: mirror must be a mirror id');
  if (!isSeq(o.number)) throw invalid('ack: number must be a positive integer');
  if (typeof o.hash !== 'string' || !HEX64.test(o.hash)) throw invalid('ack: hash must be a sha256 hex');
  if (!Number.isSafeInteger(o.upTo) || (o.upTo as number) < 0) throw invalid('ack: upTo');
  if (!isTime(o.createdAt)) throw invalid('ack: createdAt must be an ISO 8601 time');
}

export function signAck(p: AckPayload, serverKey: Signer): Envelope {
  assertAck(p);
  return signEnvelope(ACK_PAYLOAD_TYPE, Buffer.from(JSON.stringify(p), 'utf8'), [serverKey]);
}

/** Verifies an ack under the server key the mirror pinned. */
export function verifyAck(v: unknown, serverPublicKey: Uint8Array): AckPayload {
  const env = envelopeField(v, 'ack');
  let body: Buffer;
  try {
    body = verifyEnvelope(
      env,
      ACK_PAYLOAD_TYPE,
      { keys: new Map([[keyIdOf(serverPublicKey), serverPublicKey]]), threshold: 1 },
      'ack',
    ).body;
  } catch (e) {
    if ((e as { code?: string }).code === 'SIGNATURE_THRESHOLD')
      throw new TelemetryError('BAD_SIGNATURE', 'ack: not signed by the pinned server key');
    throw invalid((e as Error).message);
  }
  const p = parseJson(body, 'ack');
  assertAck(p);
  return p;
}
