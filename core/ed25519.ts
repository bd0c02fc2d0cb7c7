import { createHash } from 'node:crypto';
import sodium from 'libsodium-wrappers';

/**
 * Ed25519 through libsodium. The WebAssembly module is initialised when this
 * module loads (top-level await), so no caller can reach a half-ready library:
 * the functions below are synchronous and always safe to call.
 */
await sodium.ready;

/** Kept for callers that want an explicit await point; the library is ready once imported. */
export function ready(): Promise<void> {
  return Promise.resolve();
}

export interface KeyPair {
  publicKey: Uint8Array; // 32 bytes
  seed: Uint8Array; // 32 bytes, the private part we store
}

export function generateKeyPair(): KeyPair {
  const seed = sodium.randombytes_buf(sodium.crypto_sign_SEEDBYTES);
  const kp = sodium.crypto_sign_seed_keypair(seed);
  return { publicKey: kp.publicKey, seed };
}

export function publicFromSeed(seed: Uint8Array): Uint8Array {
  return sodium.crypto_sign_seed_keypair(seed).publicKey;
}

export function sign(seed: Uint8Array, message: Uint8Array): Uint8Array {
  const kp = sodium.crypto_sign_seed_keypair(seed);
  return sodium.crypto_sign_detached(message, kp.privateKey);
}

export function verify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  if (publicKey.length !== 32 || signature.length !== 64) return false;
  try {
    return sodium.crypto_sign_verify_detached(signature, message, publicKey);
  } catch {
    return false;
  }
}

/** keyid = lowercase hex SHA-256 of the raw 32-byte public key. */
export function keyIdOf(publicKey: Uint8Array): string {
  return createHash('sha256').update(publicKey).digest('hex');
}
