/**
 * Key types shared by the trust code. Reading and writing key files is I/O and
 * lives in platform/keyfile.ts; here are only the shapes the pure code needs.
 */
import type { Signer } from './dsse.js';

/** What a `.pub` file holds; a `.key` file holds this plus the private seed. */
export interface PublicKey {
  keyid: string;
  publicKey: Uint8Array;
}

export interface PrivateKey extends PublicKey, Signer {}

export function isPrivate(k: PublicKey | PrivateKey): k is PrivateKey {
  return 'seed' in k;
}
