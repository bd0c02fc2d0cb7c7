import { describe, expect, it } from 'vitest';
import { pae } from './dsse.js';
import { libsodiumBackend, nodeBackend, sodiumNativeBackend, type Ed25519Backend } from './ed25519.js';

/** RFC 8032 section 7.1, TEST 1 and TEST 2: seed, public key, message, signature. */
const RFC8032 = [
  {
    seed: '9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60',
    pub: 'd75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a',
    msg: '',
    sig: 'e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b',
  },
  {
    seed: '4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb',
    pub: '3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c',
    msg: '72',
    sig: '92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00',
  },
];

const hex = (s: string) => new Uint8Array(Buffer.from(s, 'hex'));
const sodium = await libsodiumBackend();
const native = await sodiumNativeBackend();
const backends: Ed25519Backend[] = [nodeBackend, sodium, native];

describe.each(backends.map((b) => [b.name, b] as const))('Ed25519 backend %s', (_name, b) => {
  it.each(RFC8032.map((v, i) => [i + 1, v] as const))('matches RFC 8032 test %i', (_i, v) => {
    expect(Buffer.from(b.publicFromSeed(hex(v.seed))).toString('hex')).toBe(v.pub);
    expect(Buffer.from(b.sign(hex(v.seed), hex(v.msg))).toString('hex')).toBe(v.sig);
    expect(b.verify(hex(v.pub), hex(v.msg), hex(v.sig))).toBe(true);
    const bad = hex(v.sig);
    bad[10] = bad[10]! ^ 1;
    expect(b.verify(hex(v.pub), hex(v.msg), bad)).toBe(false);
  });

  it('refuses malformed keys and signatures without throwing', () => {
    expect(b.verify(new Uint8Array(32), new Uint8Array(1), new Uint8Array(64))).toBe(false);
    expect(b.verify(hex(RFC8032[0]!.pub), new Uint8Array(0), new Uint8Array(63))).toBe(false);
  });
});

describe('the backends agree', () => {
  it('each verifies what the others signed, over the DSSE spec vector PAE', async () => {
    const message = pae('http://example.com/HelloWorld', Buffer.from('hello world'));
    for (let i = 0; i < 20; i++) {
      const seed = new Uint8Array(Buffer.alloc(32, i + 1));
      const pub = nodeBackend.publicFromSeed(seed);
      const sigs = backends.map((b) => {
        expect(Buffer.from(b.publicFromSeed(seed))).toEqual(Buffer.from(pub));
        return b.sign(seed, message);
      });
      for (const s of sigs) expect(Buffer.from(s)).toEqual(Buffer.from(sigs[0]!)); // deterministic
      for (const b of backends) {
        expect(b.verify(pub, message, sigs[0]!)).toBe(true);
        expect(await b.verifyAsync(pub, message, sigs[0]!)).toBe(true);
        const bad = Uint8Array.from(sigs[0]!);
        bad[63] = bad[63]! ^ 0x10;
        expect(await b.verifyAsync(pub, message, bad)).toBe(false);
      }
    }
  });

  it('signs again with the same seed array (the cached secret key) and with a fresh copy alike', () => {
    const seed = new Uint8Array(Buffer.alloc(32, 9));
    const a = native.sign(seed, Buffer.from('one'));
    const b = native.sign(seed, Buffer.from('two'));
    expect(Buffer.from(native.sign(Uint8Array.from(seed), Buffer.from('one')))).toEqual(Buffer.from(a));
    expect(nodeBackend.verify(native.publicFromSeed(seed), Buffer.from('two'), b)).toBe(true);
  });
});
