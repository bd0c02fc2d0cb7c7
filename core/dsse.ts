import { decodeBase64Strict } from './encoding.js';
import { FerryError } from './errors.js';
import * as ed from './ed25519.js';
import { JsonError, parseJsonStrict } from './json.js';

/** A DSSE v1 envelope as it travels: payload base64, one or more signatures. */
export interface Envelope {
  payloadType: string;
  payload: string;
  signatures: { keyid?: string; sig: string }[];
}

/** PAE = "DSSEv1" SP len(type) SP type SP len(body) SP body, lengths in bytes. */
export function pae(payloadType: string, body: Uint8Array): Buffer {
  // One allocation (this runs once per heartbeat verified): the header, then the body bytes.
  const head = `DSSEv1 ${Buffer.byteLength(payloadType, 'utf8')} ${payloadType} ${body.length} `;
  const n = Buffer.byteLength(head, 'utf8');
  const out = Buffer.allocUnsafe(n + body.length);
  out.write(head, 0, 'utf8');
  out.set(body, n);
  return out;
}

export interface Signer {
  keyid: string;
  seed: Uint8Array;
}

export function signEnvelope(payloadType: string, body: Uint8Array, signers: readonly Signer[]): Envelope {
  const message = pae(payloadType, body);
  return {
    payloadType,
    payload: Buffer.from(body).toString('base64'),
    signatures: signers.map((s) => ({
      keyid: s.keyid,
      sig: Buffer.from(ed.sign(s.seed, message)).toString('base64'),
    })),
  };
}

/** Adds one signature over the exact payload bytes the envelope already carries. */
export function addSignature(env: Envelope, signer: Signer): Envelope {
  const body = decodeBase64Strict(env.payload, 'payload');
  const sig = ed.sign(signer.seed, pae(env.payloadType, body));
  return {
    ...env,
    signatures: [...env.signatures, { keyid: signer.keyid, sig: Buffer.from(sig).toString('base64') }],
  };
}

const MAX_SIGNATURES = 64;
/** The largest envelope ferry reads on its own (a manifest's); smaller formats pass smaller caps. */
export const MAX_ENVELOPE_BYTES = 4 * 1024 * 1024;
/** An envelope nests three deep: the object, its signatures array, one signature. */
const ENVELOPE_DEPTH = 3;
const ENVELOPE_FIELDS = ['payloadType', 'payload', 'signatures'];
const SIGNATURE_FIELDS = ['keyid', 'sig'];

/** Validates the shape of untrusted JSON as a DSSE envelope; names the bad or unknown field. */
export function assertEnvelope(v: unknown, what = 'envelope'): asserts v is Envelope {
  const bad = (m: string) => new FerryError('ENVELOPE_INVALID', `${what}: ${m}`);
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad('not a JSON object');
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o))
    if (!ENVELOPE_FIELDS.includes(k)) throw bad(`unknown field ${JSON.stringify(k)}`);
  if (typeof o.payloadType !== 'string' || o.payloadType === '') throw bad('payloadType must be a string');
  if (typeof o.payload !== 'string') throw bad('payload must be a base64 string');
  if (!Array.isArray(o.signatures)) throw bad('signatures must be an array');
  if (o.signatures.length > MAX_SIGNATURES) throw bad(`more than ${MAX_SIGNATURES} signatures`);
  for (const [i, s] of (o.signatures as unknown[]).entries()) {
    if (typeof s !== 'object' || s === null || Array.isArray(s))
      throw bad(`signatures[${i}] is not an object`);
    const so = s as Record<string, unknown>;
    for (const k of Object.keys(so))
      if (!SIGNATURE_FIELDS.includes(k)) throw bad(`signatures[${i}] has unknown field ${JSON.stringify(k)}`);
    if (typeof so.sig !== 'string') throw bad(`signatures[${i}].sig must be a string`);
    if (so.keyid !== undefined && typeof so.keyid !== 'string')
      throw bad(`signatures[${i}].keyid must be a string`);
  }
}

/**
 * Parses envelope bytes: at most `maxBytes` (checked before anything is decoded),
 * strict JSON (core/json.ts: no duplicate keys, so no decoy `payload` another
 * reader could pick), strict shape, no unknown fields.
 */
export function parseEnvelope(
  bytes: Uint8Array | string,
  what = 'envelope',
  maxBytes = MAX_ENVELOPE_BYTES,
): Envelope {
  let v: unknown;
  try {
    v = parseJsonStrict(bytes, { maxBytes, maxDepth: ENVELOPE_DEPTH });
  } catch (e) {
    if (!(e instanceof JsonError)) throw e;
    const why =
      e.code === 'JSON_TOO_LARGE' ? `larger than ${maxBytes} bytes` : `not strict JSON: ${e.message}`;
    throw new FerryError('ENVELOPE_INVALID', `${what}: ${why}`, { cause: e });
  }
  assertEnvelope(v, what);
  return v;
}

/** A role's authorised keys (raw public keys by keyid) and how many must sign. */
export interface RoleKeys {
  keys: ReadonlyMap<string, Uint8Array>;
  threshold: number;
}

export interface VerifiedEnvelope {
  body: Buffer; // the exact payload bytes that were signed
  signers: string[]; // distinct authorised keyids whose signature verified
}

/**
 * Verifies an envelope against a role: counts *distinct* authorised keys whose
 * signature verifies over PAE(type, exact payload bytes). keyid is only a hint:
 * each signature is tried against every authorised key not yet counted, so a
 * wrong or missing keyid neither helps nor hurts. Duplicates add nothing.
 */
export function verifyEnvelope(
  env: Envelope,
  expectedType: string,
  role: RoleKeys,
  what = 'envelope',
): VerifiedEnvelope {
  if (env.payloadType !== expectedType) {
    throw new FerryError(
      'PAYLOAD_TYPE_MISMATCH',
      `${what}: payloadType is ${JSON.stringify(env.payloadType)}, expected ${expectedType}`,
    );
  }
  const body = decodeBase64Strict(env.payload, `${what} payload`);
  const signers = countSigners(env, body, role.keys);
  if (signers.length < role.threshold) {
    throw new FerryError(
      'SIGNATURE_THRESHOLD',
      `${what}: ${signers.length} valid signature(s) from authorised keys, threshold is ${role.threshold}`,
    );
  }
  return { body, signers };
}

export function countSigners(
  env: Envelope,
  body: Uint8Array,
  keys: ReadonlyMap<string, Uint8Array>,
): string[] {
  const message = pae(env.payloadType, body);
  const counted = new Set<string>();
  for (const s of env.signatures) {
    let sig: Buffer;
    try {
      sig = decodeBase64Strict(s.sig, 'signature');
    } catch {
      continue; // a garbage signature counts for nothing
    }
    if (sig.length !== 64) continue;
    // Try the hinted key first, then the rest; stop at the first that verifies.
    const order = [...keys.keys()].sort((a, b) => Number(b === s.keyid) - Number(a === s.keyid));
    for (const keyid of order) {
      if (counted.has(keyid)) continue;
      if (ed.verify(keys.get(keyid)!, message, sig)) {
        counted.add(keyid);
        break;
      }
    }
  }
  return [...counted];
}

/** Whether one of the envelope's signatures over PAE(type, body) verifies under `publicKey` (body already decoded). */
export async function signedByAsync(
  env: Envelope,
  body: Uint8Array,
  publicKey: Uint8Array,
): Promise<boolean> {
  const message = pae(env.payloadType, body);
  for (const s of env.signatures) {
    let sig: Buffer;
    try {
      sig = decodeBase64Strict(s.sig, 'signature');
    } catch {
      continue;
    }
    if (sig.length === 64 && (await ed.verifyAsync(publicKey, message, sig))) return true;
  }
  return false;
}

/** Stable serialisation of an envelope as it is written to disk. */
export function serializeEnvelope(env: Envelope): string {
  return (
    JSON.stringify(
      { payloadType: env.payloadType, payload: env.payload, signatures: env.signatures },
      null,
      2,
    ) + '\n'
  );
}
