import { createHash } from 'node:crypto';
import { decodeBase64Strict, decodeHex } from './encoding.js';
import { FerryError } from './errors.js';
import {
  parseEnvelope,
  signEnvelope,
  verifyEnvelope,
  type Envelope,
  type RoleKeys,
  type Signer,
} from './dsse.js';
import { parseIsoUtc } from './time.js';
import { initialFreshness, rootRefusal } from './freshness.js';
import { JsonError, parseJsonStrict } from './json.js';
import type { PublicKey } from './keys.js';

export const ROOT_PAYLOAD_TYPE = 'application/vnd.ferry.root+json';
/** Hard limit on one root envelope, checked before it is parsed. */
export const MAX_ROOT_BYTES = 256 * 1024;
/** Hard limit on a whole chain as a mirror serves it (`GET /v1/root`): years of rotations fit many times over. */
export const MAX_ROOT_CHAIN_BYTES = 4 * 1024 * 1024;
/** Deepest nesting a root payload has: payload → roles → role → keyids. */
const ROOT_DEPTH = 4;

export type RoleName = 'root' | 'bundle';

export interface RootPayload {
  type: 'ferry.root/v1';
  version: number;
  /** When the root was made (signed time: evidence for trusted time). Optional; older roots lack it. */
  created?: string;
  expires: string;
  keys: Record<string, { type: 'ed25519'; public: string }>;
  roles: Record<RoleName, { keyids: string[]; threshold: number }>;
}

/** A root whose signatures have been checked, with its exact bytes. */
export interface TrustedRoot {
  envelope: Envelope;
  payload: RootPayload;
  roles: Record<RoleName, RoleKeys>;
}

function bad(message: string): FerryError {
  return new FerryError('ROOT_INVALID', `root: ${message}`);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const FIELDS = ['type', 'version', 'expires', 'created', 'keys', 'roles'];
const ROLE_NAMES = ['root', 'bundle'];

/** A signed document means only what ferry reads: a field it does not know is refused, by name. */
function onlyKnown(o: Record<string, unknown>, known: readonly string[], at: string): void {
  for (const k of Object.keys(o))
    if (!known.includes(k)) throw bad(`${at}${JSON.stringify(k)} is not a known field`);
}

export function assertRootPayload(v: unknown): asserts v is RootPayload {
  if (!isObject(v)) throw bad('payload is not a JSON object');
  onlyKnown(v, FIELDS, '');
  if (v.type !== 'ferry.root/v1') throw bad('type must be "ferry.root/v1"');
  if (!Number.isSafeInteger(v.version) || (v.version as number) < 1)
    throw bad('version must be a positive integer');
  const expires = parseIsoUtc(v.expires);
  if (expires === undefined) throw bad('expires must be an ISO UTC time');
  if (v.created !== undefined) {
    const created = parseIsoUtc(v.created);
    if (created === undefined) throw bad('created must be an ISO UTC time');
    if (created >= expires) throw bad('created must be before expires');
  }
  if (!isObject(v.keys)) throw bad('keys must be an object');
  for (const [keyid, k] of Object.entries(v.keys)) {
    if (!isObject(k) || k.type !== 'ed25519' || typeof k.public !== 'string')
      throw bad(`keys.${keyid} must be {type:"ed25519", public}`);
    onlyKnown(k, ['type', 'public'], `keys.${keyid}.`);
    const pub = decodeHex(k.public, 32, `root keys.${keyid}.public`);
    if (createHash('sha256').update(pub).digest('hex') !== keyid)
      throw bad(`keys.${keyid}: keyid is not the SHA-256 of the public key`);
  }
  if (!isObject(v.roles)) throw bad('roles must be an object');
  onlyKnown(v.roles, ROLE_NAMES, 'roles.');
  for (const role of ['root', 'bundle'] as const) {
    const r = v.roles[role];
    if (!isObject(r) || !Array.isArray(r.keyids)) throw bad(`roles.${role} must be {keyids, threshold}`);
    onlyKnown(r, ['keyids', 'threshold'], `roles.${role}.`);
    const ids = r.keyids as unknown[];
    if (ids.length === 0) throw bad(`roles.${role} has no keys`);
    if (new Set(ids).size !== ids.length) throw bad(`roles.${role} lists a key twice`);
    for (const id of ids)
      if (typeof id !== 'string' || !Object.hasOwn(v.keys, id))
        throw bad(`roles.${role} names unknown key ${String(id)}`);
    const t = r.threshold;
    if (!Number.isSafeInteger(t) || (t as number) < 1 || (t as number) > ids.length) {
      throw bad(`roles.${role}.threshold must be between 1 and ${ids.length}`);
    }
  }
}

function roleKeys(p: RootPayload, role: RoleName): RoleKeys {
  const keys = new Map<string, Uint8Array>();
  for (const id of p.roles[role].keyids) keys.set(id, Buffer.from(p.keys[id]!.public, 'hex'));
  return { keys, threshold: p.roles[role].threshold };
}

/** The exact payload bytes as strict JSON (core/json.ts), capped and no deeper than a root nests. */
function decodePayload(body: Buffer): RootPayload {
  let v: unknown;
  try {
    v = parseJsonStrict(body, { maxBytes: MAX_ROOT_BYTES, maxDepth: ROOT_DEPTH });
  } catch (e) {
    if (!(e instanceof JsonError)) throw e;
    throw new FerryError('ROOT_INVALID', `root: payload is not strict JSON: ${e.message}`, { cause: e });
  }
  assertRootPayload(v);
  return v;
}

/** Reads the payload without checking signatures (for display and chain ordering only). */
export function peekRootPayload(env: Envelope): RootPayload {
  if (env.payloadType !== ROOT_PAYLOAD_TYPE)
    throw new FerryError('PAYLOAD_TYPE_MISMATCH', 'root: wrong payloadType');
  return decodePayload(decodeBase64Strict(env.payload, 'root payload'));
}

function asRootSignatureError(e: unknown, message: string): unknown {
  return e instanceof FerryError && e.code === 'SIGNATURE_THRESHOLD'
    ? new FerryError('ROOT_SIGNATURE', message, { cause: e })
    : e;
}

/**
 * The root an operator pins: it must be signed by a threshold of its own root
 * keys. Whether to trust it at all is the operator's decision at install.
 */
export function trustPinnedRoot(env: Envelope): TrustedRoot {
  const payload = peekRootPayload(env);
  const own = roleKeys(payload, 'root');
  try {
    const { body } = verifyEnvelope(env, ROOT_PAYLOAD_TYPE, own, `root v${payload.version}`);
    const checked = decodePayload(body);
    return { envelope: env, payload: checked, roles: { root: own, bundle: roleKeys(checked, 'bundle') } };
  } catch (e) {
    throw asRootSignatureError(
      e,
      `root v${payload.version} is not signed by a threshold of its own root keys`,
    );
  }
}

/**
 * One step of the chain: v(N+1) must be signed by a threshold of v(N)'s root
 * keys AND by a threshold of its own root keys. Never skips, never goes back.
 */
export function verifyNextRoot(trusted: TrustedRoot, env: Envelope): TrustedRoot {
  const next = peekRootPayload(env);
  const want = trusted.payload.version + 1;
  if (next.version < want) {
    throw new FerryError(
      'ROOT_ROLLBACK',
      `root v${next.version} is not newer than the trusted root v${trusted.payload.version}`,
    );
  }
  if (next.version !== want) {
    throw new FerryError(
      'ROOT_CHAIN_BROKEN',
      `root chain skips from v${trusted.payload.version} to v${next.version}`,
    );
  }
  try {
    verifyEnvelope(env, ROOT_PAYLOAD_TYPE, trusted.roles.root, `root v${next.version}`);
  } catch (e) {
    throw asRootSignatureError(
      e,
      `root v${next.version} is not signed by a threshold of v${trusted.payload.version}'s root keys`,
    );
  }
  return trustPinnedRoot(env);
}

/**
 * Walks a set of root envelopes forward from `trusted`. Versions at or below
 * the trusted one are ignored; the rest must form an unbroken chain.
 */
export function walkRootChain(
  trusted: TrustedRoot,
  envelopes: readonly Envelope[],
): { root: TrustedRoot; adopted: TrustedRoot[] } {
  const newer = envelopes
    .map((env) => ({ env, version: peekRootPayload(env).version }))
    .filter((r) => r.version > trusted.payload.version)
    .sort((a, b) => a.version - b.version);
  let current = trusted;
  const adopted: TrustedRoot[] = [];
  for (const { env } of newer) {
    current = verifyNextRoot(current, env);
    adopted.push(current);
  }
  return { root: current, adopted };
}

/** ROOT_EXPIRED unless `root` is unexpired at `time` (pass trusted time, core/freshness.ts). */
export function assertRootNotExpired(root: TrustedRoot, time: number): void {
  const refused = rootRefusal(initialFreshness(), root.payload, time);
  if (refused) throw new FerryError(refused.code, refused.reason);
}

export interface RootSpec {
  version: number;
  /** ISO UTC time the root is made; recorded as the root's signed `created`. */
  created?: string;
  expires: string;
  rootKeys: readonly PublicKey[];
  rootThreshold: number;
  bundleKeys: readonly PublicKey[];
  bundleThreshold: number;
}

export function buildRootPayload(spec: RootSpec): RootPayload {
  const keys: RootPayload['keys'] = {};
  for (const k of [...spec.rootKeys, ...spec.bundleKeys])
    keys[k.keyid] = { type: 'ed25519', public: Buffer.from(k.publicKey).toString('hex') };
  const payload: RootPayload = {
    type: 'ferry.root/v1',
    version: spec.version,
    ...(spec.created !== undefined && { created: spec.created }),
    expires: spec.expires,
    keys,
    roles: {
      root: { keyids: [...new Set(spec.rootKeys.map((k) => k.keyid))], threshold: spec.rootThreshold },
      bundle: { keyids: [...new Set(spec.bundleKeys.map((k) => k.keyid))], threshold: spec.bundleThreshold },
    },
  };
  assertRootPayload(payload);
  return payload;
}

export function signRoot(payload: RootPayload, signers: readonly Signer[]): Envelope {
  return signEnvelope(ROOT_PAYLOAD_TYPE, Buffer.from(JSON.stringify(payload), 'utf8'), signers);
}

/** Parses and checks a root file the operator pinned. */
export function loadPinnedRoot(bytes: Uint8Array | string): TrustedRoot {
  if (bytes.length > MAX_ROOT_BYTES)
    throw new FerryError('ROOT_INVALID', `root file is larger than ${MAX_ROOT_BYTES} bytes`);
  return trustPinnedRoot(parseEnvelope(bytes, 'root', MAX_ROOT_BYTES));
}

/**
 * Re-verifies a stored chain (pinned root first, then each next version, as
 * exact envelope bytes in base64) and returns its newest root. Mirrors and
 * agents keep their chain this way and check it on every start.
 */
export function trustStoredChain(rootsBase64: readonly string[]): TrustedRoot {
  if (rootsBase64.length === 0) throw new FerryError('ROOT_INVALID', 'no pinned root');
  const envs = rootsBase64.map((b64, i) =>
    parseEnvelope(decodeBase64Strict(b64, `roots[${i}]`), 'root', MAX_ROOT_BYTES),
  );
  let root = trustPinnedRoot(envs[0]!);
  for (const env of envs.slice(1)) root = verifyNextRoot(root, env);
  return root;
}

/**
 * The fingerprint an operator hands out for a root: lowercase hex SHA-256 of the root file's exact bytes
 * (the envelope as written, not a re-serialisation), so that `sha256sum root.json` or
 * `openssl dgst -sha256 root.json` on any machine gives the same answer (docs/install.md).
 */
export function rootFingerprint(bytes: Uint8Array | string): string {
  return createHash('sha256').update(bytes).digest('hex');
}
