import {
  createHash,
  createPrivateKey,
  createPublicKey,
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
}

const PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
const SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

const privateKeyOf = (seed: Uint8Array) =>
  createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, seed]), format: 'der', type: 'pkcs8' });

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
      const key = createPublicKey({
        key: Buffer.concat([SPKI_PREFIX, publicKey]),
        format: 'der',
        type: 'spki',
      });
      return nodeVerify(null, message, key, signature);
    } catch {
      return false;
    }
  },
};

/** Loads libsodium (its WebAssembly) and returns a backend over it. */
export async function libsodiumBackend(): Promise<Ed25519Backend> {
  const sodium = (await import('libsodium-wrappers')).default;
  await sodium.ready;
  return {
    name: 'libsodium',
    publicFromSeed: (seed) => sodium.crypto_sign_seed_keypair(seed).publicKey,
    sign: (seed, message) =>
      sodium.crypto_sign_detached(message, sodium.crypto_sign_seed_keypair(seed).privateKey),
    verify(publicKey, message, signature) {
      try {
        return sodium.crypto_sign_verify_detached(signature, message, publicKey);
      } catch {
        return false;
      }
    },
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

/** keyid = lowercase hex SHA-256 of the raw 32-byte public key. */
export function keyIdOf(publicKey: Uint8Array): string {
  return createHash('sha256').update(publicKey).digest('hex');
}
