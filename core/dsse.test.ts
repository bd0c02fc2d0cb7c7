import { createPublicKey, verify as nodeVerify } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  addSignature,
  countSigners,
  pae,
  parseEnvelope,
  signEnvelope,
  verifyEnvelope,
  type Envelope,
} from './dsse.js';
import { decodeBase64Strict } from './encoding.js';
import * as ed from './ed25519.js';
import { FerryError } from './errors.js';

const TYPE = 'http://example.com/HelloWorld';
const BODY = Buffer.from('hello world');

/** The DSSE specification's published test vector (protocol.md, "Test Vectors"). */
const SPEC_VECTOR = {
  pae: 'DSSEv1 29 http://example.com/HelloWorld 11 hello world',
  envelope: {
    payload: 'aGVsbG8gd29ybGQ=',
    payloadType: 'http://example.com/HelloWorld',
    signatures: [
      { sig: 'A3JqsQGtVsJ2O2xqrI5IcnXip5GToJ3F+FnZ+O88SjtR6rDAajabZKciJTfUiHqJPcIAriEGAHTVeCUjW2JIZA==' },
    ],
  },
  // ECDSA P-256 public key, decimal coordinates as the spec prints them
  x: 46950820868899156662930047687818585632848591499744589407958293238635476079160n,
  y: 5640078356564379163099075877009565129882514886557779369047442380624545832820n,
};

const b64url = (n: bigint) => Buffer.from(n.toString(16).padStart(64, '0'), 'hex').toString('base64url');

function keyring(...kps: ed.KeyPair[]) {
  return new Map(kps.map((k) => [ed.keyIdOf(k.publicKey), k.publicKey] as const));
}
const signer = (k: ed.KeyPair) => ({ keyid: ed.keyIdOf(k.publicKey), seed: k.seed });

describe('DSSE v1', () => {
  it('computes the PAE of the specification test vector byte for byte', () => {
    expect(pae(TYPE, BODY).toString('utf8')).toBe(SPEC_VECTOR.pae);
  });

  it('verifies the specification ECDSA signature over our PAE of the decoded envelope', () => {
    const env = parseEnvelope(JSON.stringify(SPEC_VECTOR.envelope));
    const body = decodeBase64Strict(env.payload);
    expect(body.toString()).toBe('hello world');
    const key = createPublicKey({
      key: { kty: 'EC', crv: 'P-256', x: b64url(SPEC_VECTOR.x), y: b64url(SPEC_VECTOR.y) },
      format: 'jwk',
    });
    const sig = decodeBase64Strict(env.signatures[0]!.sig);
    const message = pae(env.payloadType, body);
    expect(nodeVerify('sha256', message, { key, dsaEncoding: 'ieee-p1363' }, sig)).toBe(true);
    // one changed byte of the PAE and the same signature fails: the check above is not vacuous
    expect(
      nodeVerify(
        'sha256',
        pae(env.payloadType, Buffer.from('hello World')),
        { key, dsaEncoding: 'ieee-p1363' },
        sig,
      ),
    ).toBe(false);
  });

  it('uses byte lengths, not character counts, for non-ASCII types and bodies', () => {
    expect(pae('tÿpe', Buffer.from('héllo')).toString('utf8')).toBe('DSSEv1 5 tÿpe 6 héllo');
  });

  it('signs the spec vector with Ed25519 and verifies it; tampering breaks it', () => {
    const k = ed.generateKeyPair();
    const env = signEnvelope(TYPE, BODY, [signer(k)]);
    expect(env.payload).toBe(SPEC_VECTOR.envelope.payload);
    expect(verifyEnvelope(env, TYPE, { keys: keyring(k), threshold: 1 }).body.toString()).toBe('hello world');
    const tampered: Envelope = { ...env, payload: Buffer.from('hello worle').toString('base64') };
    expect(() => verifyEnvelope(tampered, TYPE, { keys: keyring(k), threshold: 1 })).toThrow(
      /threshold is 1/,
    );
    expect(() =>
      verifyEnvelope({ ...env, payloadType: 'other' }, TYPE, { keys: keyring(k), threshold: 1 }),
    ).toThrowError(expect.objectContaining({ code: 'PAYLOAD_TYPE_MISMATCH' }) as Error);
  });

  it('counts distinct authorised keys only: duplicates, unknown keys and garbage add nothing', () => {
    const a = ed.generateKeyPair();
    const b = ed.generateKeyPair();
    const stranger = ed.generateKeyPair();
    let env = signEnvelope(TYPE, BODY, [signer(a), signer(a), signer(stranger)]);
    env = {
      ...env,
      signatures: [
        ...env.signatures,
        { sig: '!!!not-base64!!!' },
        { sig: Buffer.alloc(64).toString('base64') },
      ],
    };
    const role = { keys: keyring(a, b), threshold: 2 };
    expect(countSigners(env, BODY, role.keys)).toEqual([ed.keyIdOf(a.publicKey)]);
    expect(() => verifyEnvelope(env, TYPE, role)).toThrowError(
      expect.objectContaining({ code: 'SIGNATURE_THRESHOLD' }) as Error,
    );
    const both = addSignature(env, signer(b));
    expect(verifyEnvelope(both, TYPE, role).signers.sort()).toEqual(
      [ed.keyIdOf(a.publicKey), ed.keyIdOf(b.publicKey)].sort(),
    );
  });

  it('treats keyid as a hint only: a wrong or missing keyid neither helps nor hurts', () => {
    const a = ed.generateKeyPair();
    const b = ed.generateKeyPair();
    const env = signEnvelope(TYPE, BODY, [signer(a)]);
    const lying = { ...env, signatures: [{ keyid: ed.keyIdOf(b.publicKey), sig: env.signatures[0]!.sig }] };
    const none = { ...env, signatures: [{ sig: env.signatures[0]!.sig }] };
    expect(verifyEnvelope(lying, TYPE, { keys: keyring(a, b), threshold: 1 }).signers).toEqual([
      ed.keyIdOf(a.publicKey),
    ]);
    expect(verifyEnvelope(none, TYPE, { keys: keyring(a, b), threshold: 1 }).signers).toEqual([
      ed.keyIdOf(a.publicKey),
    ]);
    // a signature whose keyid names an authorised key but was made by a stranger counts for nothing
    const stranger = ed.generateKeyPair();
    const forged = signEnvelope(TYPE, BODY, [{ keyid: ed.keyIdOf(a.publicKey), seed: stranger.seed }]);
    expect(() => verifyEnvelope(forged, TYPE, { keys: keyring(a), threshold: 1 })).toThrow(FerryError);
  });

  it('verifies over the exact payload bytes, never re-serialised JSON', () => {
    const k = ed.generateKeyPair();
    const odd = Buffer.from('{ "b":1,  "a":2 }');
    const env = signEnvelope('application/x', odd, [signer(k)]);
    expect(verifyEnvelope(env, 'application/x', { keys: keyring(k), threshold: 1 }).body.equals(odd)).toBe(
      true,
    );
    const reserialised = {
      ...env,
      payload: Buffer.from(JSON.stringify(JSON.parse(odd.toString()))).toString('base64'),
    };
    expect(() => verifyEnvelope(reserialised, 'application/x', { keys: keyring(k), threshold: 1 })).toThrow(
      /threshold/,
    );
  });

  it('refuses malformed envelopes with ENVELOPE_INVALID naming the field', () => {
    const cases: [string, RegExp][] = [
      ['[]', /not a JSON object/],
      ['{"payload":"aGk=","signatures":[]}', /payloadType/],
      ['{"payloadType":"t","payload":5,"signatures":[]}', /payload must be/],
      ['{"payloadType":"t","payload":"aGk=","signatures":{}}', /signatures must be an array/],
      ['{"payloadType":"t","payload":"aGk=","signatures":[{"keyid":1,"sig":"x"}]}', /keyid/],
      ['not json', /not strict JSON/],
      ['{"payloadType":"t","payload":"aGk=","signatures":[],"extra":1}', /unknown field "extra"/],
      [
        '{"payloadType":"t","payload":"aGk=","signatures":[{"sig":"x","cert":"y"}]}',
        /signatures\[0\] has unknown field "cert"/,
      ],
      [
        '{"payloadType":"t","payload":"ZGVjb3k=","payload":"aGk=","signatures":[]}',
        /duplicate key "payload"/,
      ],
      ['{"payloadType":"t","payload":"aGk=","signatures":[[[]]]}', /nesting deeper than 3/],
    ];
    for (const [text, why] of cases) {
      expect(() => parseEnvelope(text)).toThrowError(
        expect.objectContaining({
          code: 'ENVELOPE_INVALID',
          message: expect.stringMatching(why) as string,
        }) as Error,
      );
    }
  });
});

describe('strict base64', () => {
  it('accepts the standard alphabet with its padding, as base64 -w0 prints it', () => {
    const bytes = Buffer.from([0xfb, 0xff, 0xfe, 0x01]);
    expect(decodeBase64Strict('+//+AQ==').equals(bytes)).toBe(true);
    expect(decodeBase64Strict('aGk=').toString()).toBe('hi');
    expect(decodeBase64Strict('').length).toBe(0);
  });

  it.each([
    ['garbage characters', 'aGVsbG8*d29ybGQ='],
    ['embedded whitespace', 'aGVs bG8='],
    ['newline', 'aGVsbG8=\n'],
    ['mixed alphabets', 'a+b_'],
    ['standard alphabet without padding', 'aGV+bG8'],
    ['URL-safe alphabet, padded', '-__-AQ=='],
    ['URL-safe alphabet, unpadded', '-__-AQ'],
    ['unpadded text that fits both alphabets', 'aGVsbG8'],
    ['too much padding', 'aGk==='],
    ['non-canonical trailing bits', 'aGl='],
    ['data after padding', 'aGk=aGk='],
  ])('refuses %s', (_name, s) => {
    expect(() => decodeBase64Strict(s)).toThrowError(
      expect.objectContaining({ code: 'ENVELOPE_INVALID' }) as Error,
    );
  });
});
