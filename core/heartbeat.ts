/**
 * Heartbeats: what an agent tells its mirror about itself, signed with the
 * agent's own Ed25519 key (DSSE), so a relay can carry them but never forge
 * them. Pure format code: build, sign, verify, validate; no I/O.
 *
 * The agent id is derived from the key (first 32 hex of its keyid), so a
 * verifier that knows the agent's public key also knows which id it may speak
 * for: a heartbeat naming another agent's id never verifies.
 */
import { decodeBase64Strict } from './encoding.js';
import { signedByAsync, signEnvelope, verifyEnvelope, type Envelope, type Signer } from './dsse.js';
import { keyIdOf } from './ed25519.js';
import { FerryError } from './errors.js';
import { parseJsonStrict } from './json.js';

export const HEARTBEAT_PAYLOAD_TYPE = 'application/vnd.ferry.heartbeat+json';
export const HEARTBEAT_TYPE = 'ferry.heartbeat/v1';

/** Hard limits on one heartbeat. */
export const HEARTBEAT_LIMITS = {
  maxPayloadBytes: 256 * 1024,
  maxArrayEntries: 1000,
  maxStringBytes: 64 * 1024,
  maxDepth: 8,
} as const;

/** A JSON value as it came off the wire, after bounds checks. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [k: string]: JsonValue };
export type JsonObject = { [k: string]: JsonValue };

export interface Heartbeat {
  type: typeof HEARTBEAT_TYPE;
  agentId: string;
  /** Per agent, strictly increasing: a receiver refuses anything not above the last it accepted. */
  counter: number;
  /** ISO 8601 time the agent built this heartbeat. */
  sentAt: string;
  /** The agent version running. */
  version: string;
  /** Sequence of the manifest the agent last applied, or null before the first. */
  manifestSequence: number | null;
  /** Outcomes of scripts/policies since the previous heartbeat (shape owned by the agent). */
  results: JsonObject[];
  /** Differences between desired and observed state (shape owned by the agent). */
  drift: JsonObject[];
  /** Seconds without a mirror since the last successful poll. */
  disconnectedSec: number;
  resources: { rssBytes: number; load1: number };
  /** The latest self-diagnosis (`ferry agent doctor`'s read-only checks), when the agent has run one. */
  doctor?: DoctorSummary;
}

/**
 * A compact doctor report: the counts, and the checks that are not ok with
 * their evidence, bounded so that a heartbeat stays small whatever the node finds.
 */
export interface DoctorSummary {
  /** ISO 8601 time the checks ran. */
  at: string;
  ok: number;
  warn: number;
  fail: number;
  /** Checks not ok, failures first, at most DOCTOR_LIMITS.maxProblems. */
  problems: DoctorProblem[];
}

export interface DoctorProblem {
  id: string;
  status: 'warn' | 'fail';
  evidence: string;
}

export const DOCTOR_LIMITS = { maxProblems: 32, maxEvidenceChars: 512, maxChecks: 1000 } as const;

const CHECK_ID = /^[a-z0-9][a-z0-9-]{0,63}$/;
const DOCTOR_KEYS = ['at', 'ok', 'warn', 'fail', 'problems'];

/** Validates a heartbeat's `doctor` field; names the bad part. */
export function assertDoctorSummary(v: unknown, field = 'doctor'): asserts v is DoctorSummary {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad(`${field} must be an object`);
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o))
    if (!DOCTOR_KEYS.includes(k)) throw bad(`${field} has unknown field ${JSON.stringify(k)}`);
  if (typeof o.at !== 'string' || o.at.length > 64 || Number.isNaN(Date.parse(o.at)))
    throw bad(`${field}.at must be an ISO 8601 time`);
  for (const k of ['ok', 'warn', 'fail'] as const) {
    const n = o[k];
    if (!Number.isSafeInteger(n) || (n as number) < 0 || (n as number) > DOCTOR_LIMITS.maxChecks)
      throw bad(`${field}.${k} must be an integer of 0-${DOCTOR_LIMITS.maxChecks}`);
  }
  if (!Array.isArray(o.problems) || o.problems.length > DOCTOR_LIMITS.maxProblems)
    throw bad(`${field}.problems must be an array of at most ${DOCTOR_LIMITS.maxProblems}`);
  o.problems.forEach((p: unknown, i) => {
    const f = `${field}.problems[${i}]`;
    if (typeof p !== 'object' || p === null || Array.isArray(p)) throw bad(`${f} must be an object`);
    const q = p as Record<string, unknown>;
    if (Object.keys(q).some((k) => k !== 'id' && k !== 'status' && k !== 'evidence'))
      throw bad(`${f} has unknown fields`);
    if (typeof q.id !== 'string' || !CHECK_ID.test(q.id)) throw bad(`${f}.id must be a check id`);
    if (q.status !== 'warn' && q.status !== 'fail') throw bad(`${f}.status must be warn or fail`);
    if (typeof q.evidence !== 'string' || q.evidence.length > DOCTOR_LIMITS.maxEvidenceChars)
      throw bad(`${f}.evidence must be a string of at most ${DOCTOR_LIMITS.maxEvidenceChars} characters`);
  });
}

const AGENT_ID = /^[0-9a-f]{32}$/;

/** agentId = first 32 hex of sha256(publicKey), i.e. the first half of the keyid. */
export function agentIdOf(publicKey: Uint8Array): string {
  return keyIdOf(publicKey).slice(0, 32);
}

export function isAgentId(v: unknown): v is string {
  return typeof v === 'string' && AGENT_ID.test(v);
}

const bad = (m: string) => new FerryError('ENVELOPE_INVALID', `heartbeat: ${m}`);

/**
 * checkJson's verdict without building a field name for every value it visits (the per-heartbeat
 * cost): true when checkJson would pass. When false, checkJson itself runs to name the bad field.
 */
function jsonOk(v: unknown, depth: number): boolean {
  if (depth > HEARTBEAT_LIMITS.maxDepth) return false;
  if (v === null || typeof v === 'boolean') return true;
  if (typeof v === 'number') return Number.isFinite(v);
  if (typeof v === 'string')
    // at most 3 UTF-8 bytes per UTF-16 unit: short strings need no byte count
    return (
      v.length * 3 <= HEARTBEAT_LIMITS.maxStringBytes ||
      Buffer.byteLength(v, 'utf8') <= HEARTBEAT_LIMITS.maxStringBytes
    );
  if (Array.isArray(v)) {
    if (v.length > HEARTBEAT_LIMITS.maxArrayEntries) return false;
    for (const x of v) if (!jsonOk(x, depth + 1)) return false;
    return true;
  }
  if (typeof v === 'object') {
    for (const x of Object.values(v)) if (!jsonOk(x, depth + 1)) return false;
    return true;
  }
  return false;
}

function checkJson(v: unknown, field: string, depth: number): asserts v is JsonValue {
  if (depth > HEARTBEAT_LIMITS.maxDepth) throw bad(`${field} nests deeper than ${HEARTBEAT_LIMITS.maxDepth}`);
  if (v === null || typeof v === 'boolean') return;
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw bad(`${field} is not a finite number`);
    return;
  }
  if (typeof v === 'string') {
    if (Buffer.byteLength(v, 'utf8') > HEARTBEAT_LIMITS.maxStringBytes)
      throw bad(`${field} is longer than ${HEARTBEAT_LIMITS.maxStringBytes} bytes`);
    return;
  }
  if (Array.isArray(v)) {
    if (v.length > HEARTBEAT_LIMITS.maxArrayEntries)
      throw bad(`${field} has more than ${HEARTBEAT_LIMITS.maxArrayEntries} entries`);
    v.forEach((x, i) => checkJson(x, `${field}[${i}]`, depth + 1));
    return;
  }
  if (typeof v === 'object') {
    for (const [k, x] of Object.entries(v)) checkJson(x, `${field}.${k}`, depth + 1);
    return;
  }
  throw bad(`${field} is not JSON`);
}

function objectList(v: unknown, field: string): JsonObject[] {
  if (!Array.isArray(v)) throw bad(`${field} must be an array`);
  if (!jsonOk(v, 1)) checkJson(v, field, 1);
  v.forEach((x, i) => {
    if (typeof x !== 'object' || x === null || Array.isArray(x))
      throw bad(`${field}[${i}] must be an object`);
  });
  return v as JsonObject[];
}

const nonNegative = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v) && v >= 0;
const KEYS = new Set([
  'type',
  'agentId',
  'counter',
  'sentAt',
  'version',
  'manifestSequence',
  'results',
  'drift',
  'disconnectedSec',
  'resources',
  'doctor',
]);

/** Validates untrusted JSON as a heartbeat payload; names the bad field. */
export function assertHeartbeat(v: unknown): asserts v is Heartbeat {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad('not a JSON object');
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!KEYS.has(k)) throw bad(`unknown field ${JSON.stringify(k)}`);
  if (o.type !== HEARTBEAT_TYPE) throw bad(`type must be ${HEARTBEAT_TYPE}`);
  if (!isAgentId(o.agentId)) throw bad('agentId must be 32 lowercase hex characters');
  if (!Number.isSafeInteger(o.counter) || (o.counter as number) < 0)
    throw bad('counter must be a non-negative integer');
  if (typeof o.sentAt !== 'string' || o.sentAt.length > 64 || Number.isNaN(Date.parse(o.sentAt)))
    throw bad('sentAt must be an ISO 8601 time');
  if (typeof o.version !== 'string' || o.version === '' || o.version.length > 128)
    throw bad('version must be a string of 1-128 characters');
  if (
    o.manifestSequence !== null &&
    (!Number.isSafeInteger(o.manifestSequence) || (o.manifestSequence as number) < 0)
  )
    throw bad('manifestSequence must be a non-negative integer or null');
  objectList(o.results, 'results');
  objectList(o.drift, 'drift');
  if (!nonNegative(o.disconnectedSec)) throw bad('disconnectedSec must be a non-negative number');
  const r = o.resources as Record<string, unknown> | null;
  if (typeof r !== 'object' || r === null || Array.isArray(r)) throw bad('resources must be an object');
  if (Object.keys(r).some((k) => k !== 'rssBytes' && k !== 'load1'))
    throw bad('resources has unknown fields');
  if (!nonNegative(r.rssBytes)) throw bad('resources.rssBytes must be a non-negative number');
  if (!nonNegative(r.load1)) throw bad('resources.load1 must be a non-negative number');
  if (o.doctor !== undefined) assertDoctorSummary(o.doctor);
}

/** Serialises and signs a heartbeat with the agent's key; refuses one that breaks the limits. */
export function signHeartbeat(payload: Heartbeat, agentKey: Signer): Envelope {
  assertHeartbeat(payload);
  const body = Buffer.from(JSON.stringify(payload), 'utf8');
  if (body.length > HEARTBEAT_LIMITS.maxPayloadBytes)
    throw bad(`payload is larger than ${HEARTBEAT_LIMITS.maxPayloadBytes} bytes`);
  return signEnvelope(HEARTBEAT_PAYLOAD_TYPE, body, [agentKey]);
}

function decodeBody(env: Envelope): Buffer {
  // base64 of the largest payload allowed, plus padding: refuse before decoding anything bigger
  if (env.payload.length > Math.ceil(HEARTBEAT_LIMITS.maxPayloadBytes / 3) * 4)
    throw bad(`payload is larger than ${HEARTBEAT_LIMITS.maxPayloadBytes} bytes`);
  return decodeBase64Strict(env.payload, 'heartbeat payload');
}

/**
 * Strict JSON (core/json.ts): no duplicate keys, capped in size; two levels of
 * nesting above the limit so that assertHeartbeat names the field that nests too deep.
 */
function parseBody(body: Buffer): unknown {
  try {
    return parseJsonStrict(body, {
      maxBytes: HEARTBEAT_LIMITS.maxPayloadBytes,
      maxDepth: HEARTBEAT_LIMITS.maxDepth + 2,
    });
  } catch (e) {
    throw new FerryError(
      'ENVELOPE_INVALID',
      `heartbeat: payload is not strict UTF-8 JSON: ${(e as Error).message}`,
      {
        cause: e,
      },
    );
  }
}

/**
 * Verifies a heartbeat against the one key of the agent it names (threshold 1)
 * and returns its validated payload. A signature that does not verify is
 * SIGNATURE_THRESHOLD; a payload that names an agent id other than the key's is too.
 */
export function verifyHeartbeat(env: Envelope, agentPublicKey: Uint8Array): Heartbeat {
  decodeBody(env); // size bound before any signature work
  const keyid = keyIdOf(agentPublicKey);
  const { body } = verifyEnvelope(
    env,
    HEARTBEAT_PAYLOAD_TYPE,
    { keys: new Map([[keyid, agentPublicKey]]), threshold: 1 },
    'heartbeat',
  );
  return validHeartbeat(parseBody(body), agentPublicKey);
}

/** The payload type, then the size bound, then one decode: before any signature work. */
function heartbeatBody(env: Envelope): Buffer {
  if (env.payloadType !== HEARTBEAT_PAYLOAD_TYPE)
    throw new FerryError('PAYLOAD_TYPE_MISMATCH', `heartbeat: payloadType must be ${HEARTBEAT_PAYLOAD_TYPE}`);
  return decodeBody(env);
}

/** The signature over the decoded body, by the service's verifier (core/ed25519.ts verifyAsync). */
async function checkSignedAsync(env: Envelope, body: Buffer, key: Uint8Array): Promise<void> {
  if (!(await signedByAsync(env, body, key)))
    throw new FerryError('SIGNATURE_THRESHOLD', 'heartbeat: not signed by the agent it names');
}

/** The payload's shape, and that it names the agent whose key signed it. */
function validHeartbeat(v: unknown, key: Uint8Array): Heartbeat {
  assertHeartbeat(v);
  if (v.agentId !== agentIdOf(key))
    throw new FerryError('SIGNATURE_THRESHOLD', 'heartbeat: signed by a key that is not the named agent');
  return v;
}

/**
 * verifyHeartbeat for services verifying many: the payload decoded once, the signature checked by the
 * service's verifier before the payload is parsed.
 */
export async function verifyHeartbeatAsync(env: Envelope, agentPublicKey: Uint8Array): Promise<Heartbeat> {
  const body = heartbeatBody(env);
  await checkSignedAsync(env, body, agentPublicKey);
  return validHeartbeat(parseBody(body), agentPublicKey);
}

/**
 * The receiving end's one pass over a heartbeat: decodes and parses the payload
 * once, finds the key of the agent it names with `keyOf` (undefined: unknown
 * agent, returned as such), checks the signature off the main thread, then
 * validates the payload. Same refusals as verifyHeartbeat.
 */
export async function openHeartbeatAsync(
  env: Envelope,
  keyOf: (agentId: string) => Promise<Uint8Array | undefined>,
): Promise<{ heartbeat: Heartbeat } | { unknownAgent: string }> {
  const body = heartbeatBody(env);
  const v = parseBody(body);
  const id = typeof v === 'object' && v !== null ? (v as Record<string, unknown>).agentId : undefined;
  if (!isAgentId(id)) throw bad('agentId must be 32 lowercase hex characters');
  const key = await keyOf(id);
  if (!key) return { unknownAgent: id };
  await checkSignedAsync(env, body, key);
  return { heartbeat: validHeartbeat(v, key) };
}

/*
 * Enrolment request: the other signed message an agent sends its mirror. It
 * lives here, beside the heartbeat, because agent and mirror both need it.
 */
export const ENROLL_PAYLOAD_TYPE = 'application/vnd.ferry.enroll+json';
export const ENROLL_TYPE = 'ferry.enroll/v1';

export interface EnrollPayload {
  type: typeof ENROLL_TYPE;
  /** Lowercase hex of the raw 32-byte Ed25519 public key; the envelope must verify under it. */
  publicKey: string;
  hostname: string;
  platform: string;
  groups: string[];
  /** Enrolment token (time-limited tokens come later); absent when none was given. */
  token?: string;
  /** ISO 8601 time the request was signed. */
  at: string;
}

const ENROLL_KEYS = new Set(['type', 'publicKey', 'hostname', 'platform', 'groups', 'token', 'at']);
const GROUP = /^[A-Za-z0-9._-]{1,64}$/;
const HOSTNAME = /^[A-Za-z0-9._-]{1,253}$/;

export function assertEnrollPayload(v: unknown): asserts v is EnrollPayload {
  const no = (m: string) => new FerryError('ENVELOPE_INVALID', `enrolment: ${m}`);
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw no('not a JSON object');
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!ENROLL_KEYS.has(k)) throw no(`unknown field ${JSON.stringify(k)}`);
  if (o.type !== ENROLL_TYPE) throw no(`type must be ${ENROLL_TYPE}`);
  if (typeof o.publicKey !== 'string' || !/^[0-9a-f]{64}$/.test(o.publicKey))
    throw no('publicKey must be 64 lowercase hex characters');
  if (typeof o.hostname !== 'string' || !HOSTNAME.test(o.hostname))
    throw no('hostname must be 1-253 of A-Z a-z 0-9 . _ -');
  if (typeof o.platform !== 'string' || !/^[A-Za-z0-9._/-]{1,64}$/.test(o.platform))
    throw no('platform must be 1-64 of A-Z a-z 0-9 . _ / -');
  if (!Array.isArray(o.groups) || o.groups.length > 64) throw no('groups must be an array of at most 64');
  o.groups.forEach((g, i) => {
    if (typeof g !== 'string' || !GROUP.test(g)) throw no(`groups[${i}] must be 1-64 of A-Z a-z 0-9 . _ -`);
  });
  if (o.token !== undefined && (typeof o.token !== 'string' || o.token === '' || o.token.length > 4096))
    throw no('token must be a string of 1-4096 characters');
  if (typeof o.at !== 'string' || o.at.length > 64 || Number.isNaN(Date.parse(o.at)))
    throw no('at must be an ISO 8601 time');
}

/** The signed enrolment request: proves the sender holds the key it asks to enrol. */
export function signEnrollRequest(payload: EnrollPayload, agentKey: Signer): Envelope {
  assertEnrollPayload(payload);
  return signEnvelope(ENROLL_PAYLOAD_TYPE, Buffer.from(JSON.stringify(payload), 'utf8'), [agentKey]);
}

/**
 * Verifies an enrolment request under the public key it carries (proof of
 * possession) and returns its validated payload.
 */
export function verifyEnrollRequest(env: Envelope): EnrollPayload {
  if (env.payloadType !== ENROLL_PAYLOAD_TYPE)
    throw new FerryError('PAYLOAD_TYPE_MISMATCH', `enrolment: payloadType must be ${ENROLL_PAYLOAD_TYPE}`);
  const v = parseBody(decodeBase64Strict(env.payload, 'enrolment payload'));
  assertEnrollPayload(v);
  const publicKey = Buffer.from(v.publicKey, 'hex');
  verifyEnvelope(
    env,
    ENROLL_PAYLOAD_TYPE,
    { keys: new Map([[keyIdOf(publicKey), publicKey]]), threshold: 1 },
    'enrolment',
  );
  return v;
}
