import {
  createHash,
  createPrivateKey,
  createPublicKey,
  type KeyObject,
  randomBytes,
  sign as nodeSign,
  verify as nodeVerify,
} from 'node:crypto';

/**
 * Ed25519 behind one interface, with two interchangeable backends:
 *
 * - libsodium-wrappers (the design's choice), used by the operator and auditor
 *   commands: `ferry keys|trust|bundle|mirror import` select it at start;
 * - Node's built-in node:crypto (OpenSSL), used by long-running services
 *   (`ferry mirror serve`, the agent): it adds nothing to their memory, while
 *   libsodium's WebAssembly heap costs ~15 MB and makes V8 collect garbage far
 *   more often under streaming load.
 *
 * Both produce and accept the same signatures (RFC 8032 is deterministic);
 * core/ed25519.test.ts cross-checks them: sign with one, verify with the other.
 */
export interface KeyPair {
  publicKey: Uint8Array; // 32 bytes
  seed: Uint8Array; // 32 bytes, the private part we store
}

export interface Ed25519Backend {
  name: 'node' | 'libsodium';
  publicFromSeed(seed: Uint8Array): Uint8Array;
  sign(seed: Uint8Array, message: Uint8Array): Uint8Array;
  verify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean;
  /** The same check off the main thread where the backend can (node: libuv's thread pool). */
  verifyAsync(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): Promise<boolean>;
}

const PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
const SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

/*
 * Parsing a private key costs several times the signature itself; a signer
 * that signs again (a mirror's batches, a test's thousands of heartbeats)
 * reuses the parsed object, found by the seed array it holds (weakly: the
 * cache keeps no key alive and no copy of it).
 */
const privateKeys = new WeakMap<Uint8Array, KeyObject>();

function privateKeyOf(seed: Uint8Array): KeyObject {
  let key = privateKeys.get(seed);
  if (!key) {
    key = createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, seed]), format: 'der', type: 'pkcs8' });
    privateKeys.set(seed, key);
  }
  return key;
}

export const nodeBackend: Ed25519Backend = {
  name: 'node',
  publicFromSeed(seed) {
    const spki = createPublicKey(privateKeyOf(seed)).export({ format: 'der', type: 'spki' });
    return new Uint8Array(spki.subarray(SPKI_PREFIX.length));
  },
  sign(seed, message) {
    return new Uint8Array(nodeSign(null, message, privateKeyOf(seed)));
  },
  verify(publicKey, message, signature) {
    try {
      return nodeVerify(null, message, publicKeyObject(publicKey), signature);
    } catch {
      return false;
    }
  },
  verifyAsync(publicKey, message, signature) {
    return new Promise((resolve) => {
      try {
        nodeVerify(null, message, publicKeyObject(publicKey), signature, (err, ok) => resolve(!err && ok));
      } catch {
        resolve(false);
      }
    });
  },
};

/*
 * Parsing a public key costs about as much as a verification; a service that
 * checks the same agents' keys over and over keeps the parsed objects (bounded:
 * the oldest half is dropped when full).
 */
const KEY_CACHE_MAX = 20_000;
const keyCache = new Map<string, KeyObject>();

function publicKeyObject(publicKey: Uint8Array): KeyObject {
  const hex = Buffer.from(publicKey).toString('hex');
  let key = keyCache.get(hex);
  if (!key) {
    key = createPublicKey({ key: Buffer.concat([SPKI_PREFIX, publicKey]), format: 'der', type: 'spki' });
    if (keyCache.size >= KEY_CACHE_MAX) {
      let drop = KEY_CACHE_MAX / 2;
      for (const k of keyCache.keys()) {
        if (drop-- <= 0) break;
        keyCache.delete(k);
      }
    }
    keyCache.set(hex, key);
  }
  return key;
}

/** Loads libsodium (its WebAssembly) and returns a backend over it. */
export async function libsodiumBackend(): Promise<Ed25519Backend> {
  const sodium = (await import('libsodium-wrappers')).default;
  await sodium.ready;
  const verify = (publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean => {
    try {
      return sodium.crypto_sign_verify_detached(signature, message, publicKey);
    } catch {
      return false;
    }
  };
  return {
    name: 'libsodium',
    publicFromSeed: (seed) => sodium.crypto_sign_seed_keypair(seed).publicKey,
    sign: (seed, message) =>
      sodium.crypto_sign_detached(message, sodium.crypto_sign_seed_keypair(seed).privateKey),
    verify,
    verifyAsync: (publicKey, message, signature) => Promise.resolve(verify(publicKey, message, signature)),
  };
}

let backend: Ed25519Backend = nodeBackend;

export function useBackend(b: Ed25519Backend): void {
  backend = b;
}

export function backendName(): Ed25519Backend['name'] {
  return backend.name;
}

/** Selects libsodium for this process (the operator and auditor commands). */
export async function useLibsodium(): Promise<void> {
  useBackend(await libsodiumBackend());
}

/** Kept for callers that want an explicit await point; every backend is ready once selected. */
export function ready(): Promise<void> {
  return Promise.resolve();
}

export function generateKeyPair(): KeyPair {
  const seed = new Uint8Array(randomBytes(32));
  return { publicKey: backend.publicFromSeed(seed), seed };
}

export function publicFromSeed(seed: Uint8Array): Uint8Array {
  return backend.publicFromSeed(seed);
}

export function sign(seed: Uint8Array, message: Uint8Array): Uint8Array {
  return backend.sign(seed, message);
}

export function verify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  if (publicKey.length !== 32 || signature.length !== 64) return false;
  return backend.verify(publicKey, message, signature);
}

/** verify(), off the main thread when the backend can: for services checking many signatures. */
export function verifyAsync(
  publicKey: Uint8Array,
  message: Uint8Array,
  signature: Uint8Array,
): Promise<boolean> {
  if (publicKey.length !== 32 || signature.length !== 64) return Promise.resolve(false);
  return backend.verifyAsync(publicKey, message, signature);
}

/** keyid = lowercase hex SHA-256 of the raw 32-byte public key. */
export function keyIdOf(publicKey: Uint8Array): string {
  return createHash('sha256').update(publicKey).digest('hex');
}
