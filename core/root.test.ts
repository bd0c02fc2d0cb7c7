import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { chmod, writeFile } from 'node:fs/promises';
import { makeKey, makeRootEnvelope, tempDir } from '../test/helpers/fixtures.js';
import { parseEnvelope, serializeEnvelope, signEnvelope } from './dsse.js';
import { loadPrivateKey, loadPublicKey, type PrivateKey } from '../platform/keyfile.js';
import {
  assertRootNotExpired,
  buildRootPayload,
  loadPinnedRoot,
  signRoot,
  ROOT_PAYLOAD_TYPE,
  trustPinnedRoot,
  verifyNextRoot,
  walkRootChain,
  type RootPayload,
} from './root.js';
import { isoUtc } from './time.js';

let dir: string;
let cleanup: () => Promise<void>;
const k: Record<string, PrivateKey> = {};

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir());
  for (const name of ['r1', 'r2', 'r3', 'n1', 'n2', 'b1', 'b2', 'evil']) k[name] = await makeKey(dir, name);
});
afterAll(() => cleanup());

const code = (c: string) => expect.objectContaining({ code: c }) as Error;

describe('keys', () => {
  it('writes the private key 0600, refuses it once group/world readable, accepts .key where a .pub is asked', async () => {
    const keyPath = join(dir, 'r1.key');
    const pub = await loadPublicKey(join(dir, 'r1.pub'));
    expect(pub.keyid).toBe(k.r1!.keyid);
    expect((await loadPublicKey(keyPath)).keyid).toBe(k.r1!.keyid);
    await chmod(keyPath, 0o640);
    await expect(loadPrivateKey(keyPath)).rejects.toThrowError(code('KEY_PERMISSIONS'));
    await chmod(keyPath, 0o604);
    await expect(loadPrivateKey(keyPath)).rejects.toThrowError(code('KEY_PERMISSIONS'));
    await chmod(keyPath, 0o600);
    await expect(loadPrivateKey(keyPath)).resolves.toMatchObject({ keyid: k.r1!.keyid });
    await expect(loadPrivateKey(join(dir, 'r1.pub'))).rejects.toThrowError(code('KEY_INVALID'));
  });

  it('refuses a key file whose keyid does not match its public key', async () => {
    const path = join(dir, 'bad.pub');
    const pub = {
      type: 'ferry.pub/v1',
      keytype: 'ed25519',
      keyid: k.r2!.keyid,
      public: Buffer.from(k.r1!.publicKey).toString('hex'),
    };
    await writeFile(path, JSON.stringify(pub));
    await expect(loadPublicKey(path)).rejects.toThrowError(code('KEY_INVALID'));
  });
});

describe('trust root', () => {
  it('pins a root only when a threshold of its own root keys signed it', () => {
    const two = makeRootEnvelope({
      rootKeys: [k.r1!, k.r2!],
      rootThreshold: 2,
      bundleKeys: [k.b1!],
      signers: [k.r1!],
    });
    expect(() => trustPinnedRoot(two)).toThrowError(code('ROOT_SIGNATURE'));
    const ok = makeRootEnvelope({ rootKeys: [k.r1!, k.r2!], rootThreshold: 2, bundleKeys: [k.b1!] });
    expect(trustPinnedRoot(ok).payload.version).toBe(1);
    expect(loadPinnedRoot(serializeEnvelope(ok)).roles.bundle.threshold).toBe(1);
  });

  it('rotation: v2 needs a threshold of v1 root keys AND of its own', () => {
    const v1 = trustPinnedRoot(
      makeRootEnvelope({ rootKeys: [k.r1!, k.r2!], rootThreshold: 2, bundleKeys: [k.b1!] }),
    );
    const spec = { version: 2, rootKeys: [k.n1!, k.n2!], rootThreshold: 2, bundleKeys: [k.b2!] };
    // only the new keys signed: the old root never approved it
    expect(() => verifyNextRoot(v1, makeRootEnvelope({ ...spec, signers: [k.n1!, k.n2!] }))).toThrowError(
      code('ROOT_SIGNATURE'),
    );
    // only the old keys signed: the new root keys never accepted the role
    expect(() => verifyNextRoot(v1, makeRootEnvelope({ ...spec, signers: [k.r1!, k.r2!] }))).toThrowError(
      code('ROOT_SIGNATURE'),
    );
    // one old key short of the old threshold
    expect(() =>
      verifyNextRoot(v1, makeRootEnvelope({ ...spec, signers: [k.r1!, k.n1!, k.n2!] })),
    ).toThrowError(code('ROOT_SIGNATURE'));
    const v2 = verifyNextRoot(v1, makeRootEnvelope({ ...spec, signers: [k.r1!, k.r2!, k.n1!, k.n2!] }));
    expect(v2.payload.version).toBe(2);
    expect([...v2.roles.bundle.keys.keys()]).toEqual([k.b2!.keyid]);
  });

  it('walks the chain one version at a time, never skipping or going back', () => {
    const v1env = makeRootEnvelope({ rootKeys: [k.r1!], bundleKeys: [k.b1!] });
    const v1 = trustPinnedRoot(v1env);
    const v2env = makeRootEnvelope({
      version: 2,
      rootKeys: [k.r2!],
      bundleKeys: [k.b1!],
      signers: [k.r1!, k.r2!],
    });
    const v3env = makeRootEnvelope({
      version: 3,
      rootKeys: [k.r3!],
      bundleKeys: [k.b2!],
      signers: [k.r2!, k.r3!],
    });
    const skip3 = makeRootEnvelope({
      version: 3,
      rootKeys: [k.r3!],
      bundleKeys: [k.b2!],
      signers: [k.r1!, k.r3!],
    });

    const walked = walkRootChain(v1, [v3env, v1env, v2env]);
    expect(walked.root.payload.version).toBe(3);
    expect(walked.adopted.map((r) => r.payload.version)).toEqual([2, 3]);
    // v1 → v3 directly, even when signed by v1's key, is a skip
    expect(() => walkRootChain(v1, [skip3])).toThrowError(code('ROOT_CHAIN_BROKEN'));
    expect(() => verifyNextRoot(v1, skip3)).toThrowError(code('ROOT_CHAIN_BROKEN'));
    // a trusted v2 never goes back to v1
    const v2 = verifyNextRoot(v1, v2env);
    expect(() => verifyNextRoot(v2, v1env)).toThrowError(code('ROOT_ROLLBACK'));
    expect(walkRootChain(v2, [v1env]).root.payload.version).toBe(2);
    // a v3 signed by an attacker who holds no v2 root key
    const evil3 = makeRootEnvelope({
      version: 3,
      rootKeys: [k.evil!],
      bundleKeys: [k.evil!],
      signers: [k.evil!],
    });
    expect(() => walkRootChain(v2, [evil3])).toThrowError(code('ROOT_SIGNATURE'));
  });

  it('refuses an expired final root', () => {
    const old = trustPinnedRoot(
      makeRootEnvelope({ rootKeys: [k.r1!], bundleKeys: [k.b1!], expires: isoUtc(Date.now() + 1000) }),
    );
    expect(() => assertRootNotExpired(old, Date.now() + 5000)).toThrowError(code('ROOT_EXPIRED'));
  });

  it('carries an optional signed created time (evidence for trusted time)', () => {
    const payload = buildRootPayload({
      version: 1,
      created: '2026-11-22T10:00:00Z',
      expires: isoUtc(Date.now() + 86_400_000),
      rootKeys: [k.r1!],
      rootThreshold: 1,
      bundleKeys: [k.b1!],
      bundleThreshold: 1,
    });
    const root = trustPinnedRoot(signRoot(payload, [k.r1!]));
    expect(root.payload.created).toBe('2026-11-22T10:00:00Z');
    expect(
      trustPinnedRoot(makeRootEnvelope({ rootKeys: [k.r1!], bundleKeys: [k.b1!] })).payload.created,
    ).toBe(undefined);
  });

  it('refuses root documents with inconsistent keys or roles', () => {
    const env = makeRootEnvelope({ rootKeys: [k.r1!], bundleKeys: [k.b1!] });
    type Doc = Omit<RootPayload, 'type'> & { type: string };
    const payload = JSON.parse(Buffer.from(env.payload, 'base64').toString()) as Doc;
    const mutate = (f: (p: Doc) => void) => {
      const p = structuredClone(payload);
      f(p);
      return parseEnvelope(
        JSON.stringify({ ...env, payload: Buffer.from(JSON.stringify(p)).toString('base64') }),
      );
    };
    const bad = [
      mutate((p) => (p.roles.root.threshold = 2)),
      mutate((p) => (p.roles.bundle.keyids = ['00'.repeat(32)])),
      mutate((p) => (p.version = 0)),
      mutate((p) => {
        const id = Object.keys(p.keys)[0]!;
        p.keys['ab'.repeat(32)] = p.keys[id]!;
      }),
      mutate((p) => (p.type = 'ferry.root/v2')),
      mutate((p) => (p.created = 'yesterday')),
      mutate((p) => (p.created = '2026-11-22T10:00:00+01:00')),
    ];
    for (const e of bad) expect(() => trustPinnedRoot(e)).toThrowError(code('ROOT_INVALID'));
  });
});

describe('root payload: strict fields', () => {
  const payloadOf = (env: { payload: string }) =>
    JSON.parse(Buffer.from(env.payload, 'base64').toString()) as Record<string, unknown>;
  const signed = (body: string) => signEnvelope(ROOT_PAYLOAD_TYPE, Buffer.from(body), [k.r1!]);
  const base = () => payloadOf(makeRootEnvelope({ rootKeys: [k.r1!], bundleKeys: [k.b1!] }));

  it('accepts an optional created time and refuses a bad one', () => {
    const p = base();
    const expires = String(p.expires);
    expect(
      trustPinnedRoot(signed(JSON.stringify({ ...p, created: isoUtc(Date.now()) }))).payload.created,
    ).toMatch(/Z$/);
    for (const created of ['yesterday', 12, expires, isoUtc(Date.parse(expires) + 1000)])
      expect(() => trustPinnedRoot(signed(JSON.stringify({ ...p, created })))).toThrowError(
        expect.objectContaining({
          code: 'ROOT_INVALID',
          message: expect.stringMatching(/created/) as string,
        }),
      );
  });

  it('refuses an unknown field at every level, naming it, although validly signed', () => {
    const p = base();
    const keyid = Object.keys(p.keys as object)[0]!;
    const roles = p.roles as Record<string, Record<string, unknown>>;
    const keys = p.keys as Record<string, Record<string, unknown>>;
    const cases: [unknown, RegExp][] = [
      [{ ...p, extra: { note: 1 } }, /"extra" is not a known field/],
      [
        { ...p, keys: { ...keys, [keyid]: { ...keys[keyid], note: 'x' } } },
        /keys\.[0-9a-f]+\."note" is not a known field/,
      ],
      [{ ...p, roles: { ...roles, admin: roles.root } }, /roles\."admin" is not a known field/],
      [
        { ...p, roles: { ...roles, bundle: { ...roles.bundle, quorum: 1 } } },
        /roles\.bundle\."quorum" is not a known field/,
      ],
    ];
    for (const [payload, why] of cases)
      expect(() => trustPinnedRoot(signed(JSON.stringify(payload)))).toThrowError(
        expect.objectContaining({ code: 'ROOT_INVALID', message: expect.stringMatching(why) as string }),
      );
  });

  it('refuses a payload with a duplicate key or deeper than a root nests', () => {
    const text = JSON.stringify(base());
    const dup = text.replace('"version":1', '"version":2,"version":1');
    expect(() => trustPinnedRoot(signed(dup))).toThrowError(
      expect.objectContaining({
        code: 'ROOT_INVALID',
        message: expect.stringMatching(/duplicate key "version"/) as string,
      }),
    );
    const deep = text.replace('"version":1', '"version":1,"x":[[[[[[1]]]]]]');
    expect(() => trustPinnedRoot(signed(deep))).toThrowError(
      expect.objectContaining({
        code: 'ROOT_INVALID',
        message: expect.stringMatching(/nesting deeper/) as string,
      }),
    );
    // a key named like an Object.prototype member is not a key the root holds
    const proto = JSON.parse(text) as { roles: { bundle: { keyids: string[] } } };
    proto.roles.bundle.keyids = ['constructor'];
    expect(() => trustPinnedRoot(signed(JSON.stringify(proto)))).toThrowError(
      expect.objectContaining({
        code: 'ROOT_INVALID',
        message: expect.stringMatching(/unknown key constructor/) as string,
      }),
    );
  });
});
