import { execFile } from 'node:child_process';
import { copyFile, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serializeEnvelope, signEnvelope, type Envelope } from '../core/dsse.js';
import { MANIFEST_PAYLOAD_TYPE, MAX_MANIFEST_BYTES, type Manifest } from '../core/manifest.js';
import { ROOT_PAYLOAD_TYPE } from '../core/root.js';
import { isoUtc } from '../core/time.js';
import { buildBundle, ferry, makeKey, makeWorld, REPO, type World } from './helpers/fixtures.js';
import { haveProgram } from './helpers/system.js';
import { entry, GNU_MAGIC, joinArchive, paxRecord, splitArchive } from './helpers/tarcraft.js';

/** The auditor's guide promises a bundle can be checked with standard tools only; this runs that procedure. */
const SCRIPT = join(REPO, 'docs/verify-by-hand.sh');
const tools = ['bash', 'tar', 'jq', 'xxd', 'openssl', 'sha256sum'].every(haveProgram);
const run = promisify(execFile);

async function byHand(bundle: string, root: string, site?: string): Promise<{ code: number; out: string }> {
  try {
    const r = await run('bash', [SCRIPT, bundle, root, ...(site ? [site] : [])]);
    return { code: 0, out: r.stdout + r.stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, out: err.stdout + err.stderr };
  }
}

describe.runIf(tools)('verifying a bundle by hand (docs/verify-by-hand.sh)', () => {
  let w: World;
  let good: string;
  beforeAll(async () => {
    w = await makeWorld();
    good = join(w.dir, 'good.ferry');
    await buildBundle(w, good);
  });
  afterAll(() => w.cleanup());

  it('accepts what ferry accepts', async () => {
    const r = await byHand(good, w.rootPath, 'plant-7');
    expect(r.out).toMatch(/^OK: 1 of 1 bundle signature/m);
    expect(r.code).toBe(0);
  });

  it('refuses a flipped byte, a wrong site and a stranger signature', async () => {
    const bad = join(w.dir, 'bad.ferry');
    await copyFile(good, bad);
    const bytes = await readFile(bad);
    const at = bytes.indexOf(Buffer.alloc(64, 7)) + 100;
    bytes.writeUInt8(bytes.readUInt8(at) ^ 0x80, at);
    await writeFile(bad, bytes);
    expect(await byHand(bad, w.rootPath)).toMatchObject({
      code: 1,
      out: expect.stringMatching(/does not match its digest/) as string,
    });
    expect(await byHand(good, w.rootPath, 'ship-3')).toMatchObject({
      code: 1,
      out: expect.stringMatching(/not for site/) as string,
    });
    const stranger = await makeKey(join(w.dir, 'k2'), 'stranger');
    const forged = join(w.dir, 'forged.ferry');
    await buildBundle(w, forged, { signers: [stranger] });
    expect(await byHand(forged, w.rootPath)).toMatchObject({
      code: 1,
      out: expect.stringMatching(/signed by 0 bundle key/) as string,
    });
  });
});

/**
 * One rule per case (docs/bundle-format.md, "Strict input"): ferry and the by-hand procedure must give the
 * same verdict on every bundle. Each hostile case is built here from a genuine bundle, most of them
 * validly signed, so that only the rule under test can refuse them.
 */
describe.runIf(tools)('ferry bundle verify and the by-hand procedure agree', () => {
  let w: World;
  beforeAll(async () => {
    w = await makeWorld();
  });
  afterAll(() => w.cleanup());

  it('on every case of a hostile set', { timeout: 600_000 }, async () => {
    const file = join(w.dir, 'genuine.ferry');
    const made = await buildBundle(w, file);
    const m: Manifest = made.manifest;
    const { entries } = splitArchive(await readFile(file));
    const blobs = entries.slice(1);
    const genuineEnv = JSON.parse(entries[0]!.body.toString()) as Envelope;
    const sign = (payload: string): Envelope =>
      signEnvelope(MANIFEST_PAYLOAD_TYPE, Buffer.from(payload), [w.bundleKey]);
    const bundle = (envelopeText: string | Buffer) =>
      joinArchive([entry({ name: 'manifest.dsse.json' }, envelopeText), ...blobs]);
    const text = JSON.stringify(m);
    // '=' padding needs a payload length that is not a multiple of 3: trailing spaces are still the same JSON
    const unpadded = [0, 1, 2].map((k) => sign(text + ' '.repeat(k))).find((e) => e.payload.endsWith('='))!;
    unpadded.payload = unpadded.payload.replace(/=+$/, '');
    // '+' and '/' encode 6-bit values 62 and 63: '~~~' (0x7e) puts one in the last 6 bits of a byte triple
    const tildes = { ...m, rollout: { agent: '1.4.2', strategy: '~~~', waves: [{ percent: 100 }] } };
    const urlSafe = sign(JSON.stringify(tildes));
    expect(urlSafe.payload).toMatch(/[+/]/);
    urlSafe.payload = urlSafe.payload.replace(/\+/g, '-').replace(/\//g, '_');
    const sigUnpadded = {
      ...genuineEnv,
      signatures: [{ ...genuineEnv.signatures[0]!, sig: genuineEnv.signatures[0]!.sig.replace(/=+$/, '') }],
    };
    // an Ed25519 signature is 64 bytes: 86 characters and '==', the last character carrying 4 unused bits
    const sig = genuineEnv.signatures[0]!.sig;
    const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
    const bits = ALPHABET[ALPHABET.indexOf(sig[85]!) + 1]!;
    const sigBits = {
      ...genuineEnv,
      signatures: [{ ...genuineEnv.signatures[0]!, sig: sig.slice(0, 85) + bits + '==' }],
    };
    const decoy = sign(JSON.stringify({ ...m, pins: { 'group:web': '0.0.1' } }));
    const genuineText = serializeEnvelope(genuineEnv);
    const dupPayload = genuineText.replace(
      '"payload": ',
      `"payload": ${JSON.stringify(decoy.payload)},\n  "payload": `,
    );
    const big = sign(text + ' '.repeat(Math.ceil((MAX_MANIFEST_BYTES * 3) / 4)));
    const deep = sign(`${text.slice(0, -1)},"x":${'['.repeat(300)}${']'.repeat(300)}}`);
    // pax: the ustar name says "decoy", the extended header says manifest.dsse.json
    const pax = joinArchive([
      entry({ name: 'PaxHeaders/decoy', typeflag: 'x' }, paxRecord('path', 'manifest.dsse.json')),
      entry({ name: 'decoy' }, genuineText),
      ...blobs,
    ]);
    // pax again, every ustar name in the pattern and in order: the extended header is itself called
    // manifest.dsse.json and renames the next entry (ustar name: an unlisted blob) to the manifest
    const paxRename = joinArchive([
      entry({ name: 'manifest.dsse.json', typeflag: 'x' }, paxRecord('path', 'manifest.dsse.json')),
      entry({ name: `blobs/sha256/${'0'.repeat(64)}` }, genuineText),
      ...blobs,
    ]);
    // GNU long name: a ././@LongLink entry names the next one
    const gnu = joinArchive([
      entry({ name: '././@LongLink', typeflag: 'L', magic: GNU_MAGIC }, 'manifest.dsse.json\0'),
      entry({ name: 'x', magic: GNU_MAGIC }, genuineText),
      ...blobs,
    ]);
    const rootPayload = JSON.parse(Buffer.from(w.root.envelope.payload, 'base64').toString()) as Record<
      string,
      unknown
    >;
    const rootFile = async (name: string, payload: Record<string, unknown>) => {
      const path = join(w.dir, name);
      await writeFile(
        path,
        serializeEnvelope(signEnvelope(ROOT_PAYLOAD_TYPE, Buffer.from(JSON.stringify(payload)), [w.rootKey])),
      );
      return path;
    };
    const rootCreated = await rootFile('root-created.json', {
      ...rootPayload,
      created: isoUtc(Date.now() - 1000),
    });
    const rootUnknown = await rootFile('root-unknown.json', { ...rootPayload, note: 'x' });

    type Verdict = 'accept' | 'refuse';
    const cases: [string, Buffer, Verdict, string?][] = [
      ['the genuine bundle', bundle(genuineText), 'accept'],
      ['the genuine bundle under a root with a created time', bundle(genuineText), 'accept', rootCreated],
      ['unpadded base64 payload', bundle(serializeEnvelope(unpadded)), 'refuse'],
      ['URL-safe base64 payload', bundle(serializeEnvelope(urlSafe)), 'refuse'],
      ['unpadded base64 signature', bundle(serializeEnvelope(sigUnpadded)), 'refuse'],
      ['signature with non-zero unused base64 bits', bundle(serializeEnvelope(sigBits)), 'refuse'],
      ['pax extended header naming the manifest', pax, 'refuse'],
      ['GNU long name naming the manifest', gnu, 'refuse'],
      ['pax header named and renaming to the manifest', paxRename, 'refuse'],
      ['payload twice, a decoy first', bundle(dupPayload), 'refuse'],
      ['unknown top-level envelope field', bundle(JSON.stringify({ ...genuineEnv, note: 'x' })), 'refuse'],
      [
        'unknown signature field',
        bundle(JSON.stringify({ ...genuineEnv, signatures: [{ ...genuineEnv.signatures[0]!, cert: 'x' }] })),
        'refuse',
      ],
      ['two JSON values in the envelope entry', bundle(`${genuineText}{}`), 'refuse'],
      [
        'byte order mark before the envelope',
        bundle(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(genuineText)])),
        'refuse',
      ],
      [
        'signed manifest with an unknown field',
        bundle(serializeEnvelope(sign(JSON.stringify({ ...m, note: 'x' })))),
        'refuse',
      ],
      [
        'signed manifest with a key twice',
        bundle(serializeEnvelope(sign(text.replace('"sequence":1', '"sequence":9,"sequence":1')))),
        'refuse',
      ],
      ['signed manifest nested 300 deep', bundle(serializeEnvelope(deep)), 'refuse'],
      ['signed envelope over 4 MiB', bundle(serializeEnvelope(big)), 'refuse'],
      ['root with an unknown field', bundle(genuineText), 'refuse', rootUnknown],
    ];
    expect(serializeEnvelope(big).length).toBeGreaterThan(MAX_MANIFEST_BYTES);

    const seen: Record<string, { ferry: Verdict; byHand: Verdict; code?: string }> = {};
    const want: Record<string, { ferry: Verdict; byHand: Verdict }> = {};
    for (const [what, bytes, verdict, root] of cases) {
      const path = join(w.dir, 'case.ferry');
      await writeFile(path, bytes);
      const f = await ferry([
        'bundle',
        'verify',
        path,
        '--trust',
        root ?? w.rootPath,
        '--site',
        'plant-7',
        '--json',
      ]);
      const h = await byHand(path, root ?? w.rootPath, 'plant-7');
      const code = f.code === 0 ? undefined : (JSON.parse(f.stdout) as { code: string }).code;
      seen[what] = {
        ferry: f.code === 0 ? 'accept' : 'refuse',
        byHand: h.code === 0 ? 'accept' : 'refuse',
        ...(code && { code }),
      };
      want[what] = { ferry: verdict, byHand: verdict };
      expect([0, 1], `${what}: ferry exit ${f.code}: ${f.stderr}`).toContain(f.code);
      expect([0, 1], `${what}: script exit ${h.code}: ${h.out}`).toContain(h.code);
    }
    // ferry's codes are printed with the verdicts so a failure shows which rule answered
    expect(seen).toMatchObject(want);
  });
});
