/** The subset of sodium-native's API that core/ed25519.ts uses (the package ships no types). */
declare module 'sodium-native' {
  export function crypto_sign_seed_keypair(pk: Uint8Array, sk: Uint8Array, seed: Uint8Array): void;
  export function crypto_sign_detached(sig: Uint8Array, message: Uint8Array, sk: Uint8Array): void;
  export function crypto_sign_verify_detached(sig: Uint8Array, message: Uint8Array, pk: Uint8Array): boolean;
}
