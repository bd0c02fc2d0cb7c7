/**
 * A mirror's signed inventory: which blobs a site holds, for the courier to
 * carry home so the next bundle for that site can be exactly the delta it
 * lacks (`ferry bundle create --have`). A DSSE envelope signed with the
 * mirror's own key (the one registered with the server); the payload names
 * the key, so a file damaged on the way is refused, and `--mirror-key` checks
 * it is the site's mirror that signed it.
 *
 * What an inventory can do is limited: it only decides which blobs a bundle
 * leaves out. A false one makes a bundle the site cannot complete (the
 * manifest stays pending); it can never make a site accept anything.
 */
import { FerryError } from './errors.js';
import { decodeBase64Strict, isSha256Hex } from './encoding.js';
import { keyIdOf } from './ed25519.js';
import { parseEnvelope, signEnvelope, verifyEnvelope, type Envelope, type Signer } from './dsse.js';
import { parseJsonStrict } from './json.js';
import { parseIsoUtc } from './time.js';

export const INVENTORY_PAYLOAD_TYPE = 'application/vnd.ferry.inventory+json';
/** Room for about half a million blobs. */
export const MAX_INVENTORY_BYTES = 64 * 1024 * 1024;

export interface InventoryPayload {
  type: 'ferry.inventory/v1';
  site: string;
  /** The signing mirror's public key, hex. */
  publicKey: string;
  created: string;
  /** The active manifest when it was made. */
  active: { sequence: number; digest: string } | null;
  /** Digests held, sorted. */
  blobs: string[];
}

const bad = (why: string) => new FerryError('MANIFEST_INVALID', `inventory: ${why}`);

export function assertInventory(v: unknown): asserts v is InventoryPayload {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad('not an object');
  const o = v as Record<string, unknown>;
  const known = new Set(['type', 'site', 'publicKey', 'created', 'active', 'blobs']);
  for (const k of Object.keys(o)) if (!known.has(k)) throw bad(`unknown field ${JSON.stringify(k)}`);
  if (o.type !== 'ferry.inventory/v1') throw bad('type is not ferry.inventory/v1');
  if (typeof o.site !== 'string' || o.site === '') throw bad('site must be a name');
  if (typeof o.publicKey !== 'string' || !/^[0-9a-f]{64}$/.test(o.publicKey))
    throw bad('publicKey must be 64 hex digits');
  if (parseIsoUtc(o.created) === undefined) throw bad('created must be an ISO UTC time');
  if (o.active !== null) {
    const a = o.active as Record<string, unknown> | undefined;
    if (typeof a !== 'object' || !Number.isSafeInteger(a.sequence) || !isSha256Hex(a.digest))
      throw bad('active must be null or {sequence, digest}');
  }
  if (!Array.isArray(o.blobs) || !o.blobs.every((d) => isSha256Hex(d)))
    throw bad('blobs must be sha256 digests');
}

export function signInventory(p: InventoryPayload, key: Signer): Envelope {
  assertInventory(p);
  return signEnvelope(INVENTORY_PAYLOAD_TYPE, Buffer.from(JSON.stringify(p), 'utf8'), [key]);
}

/**
 * Reads an inventory file: strict JSON, signature checked against the key it names, and, when
 * `mirrorKey` is given, that key must be it.
 */
export function readInventory(bytes: Uint8Array, mirrorKey?: Uint8Array): InventoryPayload {
  const env = parseEnvelope(bytes, 'inventory', MAX_INVENTORY_BYTES);
  const peek = parseJsonStrict(decodeBase64Strict(env.payload, 'inventory payload'), {
    maxBytes: MAX_INVENTORY_BYTES,
  });
  assertInventory(peek);
  const pub = Buffer.from(peek.publicKey, 'hex');
  if (mirrorKey && !pub.equals(Buffer.from(mirrorKey)))
    throw new FerryError(
      'SIGNATURE_THRESHOLD',
      'inventory is signed by another key than the mirror key given',
    );
  const checked = verifyEnvelope(
    env,
    INVENTORY_PAYLOAD_TYPE,
    { keys: new Map([[keyIdOf(pub), pub]]), threshold: 1 },
    'inventory',
  );
  const payload = parseJsonStrict(checked.body, { maxBytes: MAX_INVENTORY_BYTES });
  assertInventory(payload);
  return payload;
}
