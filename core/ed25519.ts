import {
  createHash,
  createPrivateKey,
  createPublicKey,
  type KeyObject,
  randomBytes,
  sign as nodeSign,
  verify as nodeVerify,
} from 'node:crypto';
import { createRequire } from 'node:module';
import { VerifyWorker } from './verify-worker.js';

/**
 * Ed25519 behind one interface, with three interchangeable backends:
 *
 * - libsodium-wrappers (the project's chosen Ed25519 library), used by the operator and auditor
 *   commands: `ferry keys|trust|bundle|mirror import` select it at start;
 * - Node's built-in node:crypto (OpenSSL), used by long-running services
 *   (`ferry mirror serve`, the agent): it adds nothing to their memory, while
 *   libsodium's WebAssembly heap costs ~15 MB and makes V8 collect garbage far
 *   more often under streaming load.
 *
 * - sodium-native, the same libsodium as a native binding (prebuilt inside its
 *   package): the services that check every agent's heartbeat select it at
 *   start (`useSodiumNative({ worker: true })`). Its verification is ~2.3x
 *   cheaper than node:crypto's, and verifyAsync hands each event-loop turn's
 *   checks to one worker thread as a batch (core/verify-worker.ts), where
 *   node:crypto's costs a hop to libuv's thread pool and back per signature
 *   (docs/decisions.md; `node dist/bench/ed25519.js` measures the three).
 *   Where it cannot load, the service keeps node:crypto.
 *
 * All produce and accept the same signatures (RFC 8032 is deterministic);
 * core/ed25519.test.ts cross-checks them: sign with one, verify with another.
 */
export interface KeyPair {
  publicKey: Uint8Array; // 32 bytes
  seed: Uint8Array; // 32 bytes, the private part we store
}

export interface Ed25519Backend {
  name: 'node' | 'libsodium' | 'sodium-native';
  publicFromSeed(seed: Uint8Array): Uint8Array;
  sign(seed: Uint8Array, message: Uint8Array): Uint8Array;
  verify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean;
  /**
   * The same check, in the way that costs a busy service least: node:crypto's in libuv's thread pool;
   * sodium-native's in batches on its worker thread, or inline without one.
   */
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

export interface SodiumNativeOptions {
  /** verifyAsync in batches on a worker thread (core/verify-worker.ts) rather than inline. */
  worker?: boolean;
  /** Told if that worker fails (its checks then run inline). */
  onWorkerFailure?: (e: Error) => void;
}

/** Loads sodium-native (a native addon, prebuilt in its package) and returns a backend over it. */
export async function sodiumNativeBackend(o: SodiumNativeOptions = {}): Promise<Ed25519Backend> {
  const sn = (await import('sodium-native')).default;
  // libsodium signs with seed ‖ public key; derived once per seed array, like privateKeyOf above
  const secretKeys = new WeakMap<Uint8Array, Uint8Array>();
  const pair = (seed: Uint8Array) => {
    if (seed.length !== 32) throw new RangeError('an Ed25519 seed is 32 bytes');
    const pk = new Uint8Array(32);
    const sk = new Uint8Array(64);
    sn.crypto_sign_seed_keypair(pk, sk, seed);
    return { pk, sk };
  };
  const secretOf = (seed: Uint8Array) => {
    let sk = secretKeys.get(seed);
    if (!sk) secretKeys.set(seed, (sk = pair(seed).sk));
    return sk;
  };
  const verify = (publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean => {
    if (publicKey.length !== 32 || signature.length !== 64) return false;
    try {
      return sn.crypto_sign_verify_detached(signature, message, publicKey);
    } catch {
      return false;
    }
  };
  const worker = o.worker
    ? new VerifyWorker(createRequire(import.meta.url).resolve('sodium-native'), verify, o.onWorkerFailure)
    : undefined;
  return {
    name: 'sodium-native',
    publicFromSeed: (seed) => pair(seed).pk,
    sign(seed, message) {
      const sig = new Uint8Array(64);
      sn.crypto_sign_detached(sig, message, secretOf(seed));
      return sig;
    },
    verify,
    verifyAsync: worker
      ? (publicKey, message, signature) =>
          publicKey.length !== 32 || signature.length !== 64
            ? Promise.resolve(false)
            : worker.verify(publicKey, message, signature)
      : (publicKey, message, signature) => Promise.resolve(verify(publicKey, message, signature)),
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

/**
 * Selects sodium-native for this process (the services that verify every heartbeat). Where the addon
 * cannot load (a platform its package has no build for), node:crypto stays selected and the reason is
 * returned for the caller to log.
 */
export async function useSodiumNative(
  o: SodiumNativeOptions = {},
): Promise<{ ok: true } | { ok: false; reason: string }> {
  try {
    useBackend(await sodiumNativeBackend(o));
    return { ok: true };
  } catch (e) {
    return { ok: false, reason: (e as Error).message.split('\n')[0]! };
  }
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
