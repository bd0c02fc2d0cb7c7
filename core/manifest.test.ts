import { describe, expect, it } from 'vitest';
import { decodeManifest, MAX_MANIFEST_BYTES, parseManifestEnvelope } from './manifest.js';

const good = {
  type: 'ferry.manifest/v1',
  publisher: 'acme-ops',
  sequence: 42,
  created: '2026-11-22T10:00:00Z',
  expires: '2027-02-20T10:00:00Z',
  sites: ['plant-7'],
  artifacts: [{ name: 'rotate-logs', kind: 'script', version: '3', sha256: 'a'.repeat(64), size: 812 }],
  rollout: {
    agent: '1.4.2',
    waves: [{ percent: 5, soakMinutes: 30 }, { percent: 100 }],
    window: { days: ['sat'], start: '01:00', end: '05:00', tz: 'Europe/Berlin' },
  },
  pins: { 'group:scada': '1.3.9' },
  minAgentVersion: '1.3.0',
};
const enc = (v: unknown) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v));
const refused = (body: Buffer, code: string, why: RegExp) =>
  expect(() => decodeManifest(body)).toThrowError(
    expect.objectContaining({ code, message: expect.stringMatching(why) as string }) as Error,
  );

describe('decodeManifest: strict fields', () => {
  it('reads the documented manifest', () => {
    expect(decodeManifest(enc(good))).toEqual(good);
  });

  it.each([
    ['top level', { ...good, comment: 'x' }, /manifest: "comment" is not a known field/],
    [
      'an artifact',
      { ...good, artifacts: [{ ...good.artifacts[0], url: 'http://x' }] },
      /artifacts\[0\]\.url is not a known field/,
    ],
    [
      'rollout',
      { ...good, rollout: { ...good.rollout, force: true } },
      /rollout\.force is not a known field/,
    ],
    [
      'a wave',
      { ...good, rollout: { ...good.rollout, waves: [{ percent: 100, groups: 'x' }] } },
      /rollout\.waves\[0\]\.groups is not a known field/,
    ],
    [
      'the window',
      { ...good, rollout: { ...good.rollout, window: { ...good.rollout.window, note: 1 } } },
      /rollout\.window\.note is not a known field/,
    ],
  ])('refuses an unknown field in %s, by name', (_where, v, why) => refused(enc(v), 'MANIFEST_INVALID', why));

  it('refuses duplicate keys, deep nesting and non-JSON before looking at fields', () => {
    const text = JSON.stringify(good);
    refused(
      enc(text.replace('"sequence":42', '"sequence":43,"sequence":42')),
      'MANIFEST_INVALID',
      /duplicate key "sequence"/,
    );
    refused(
      enc(text.replace('"sequence":42', '"sequence":42,"x":[[[[[1]]]]]')),
      'MANIFEST_INVALID',
      /nesting deeper than 4/,
    );
    refused(enc(text.replace('"sequence":42', '"sequence":NaN')), 'MANIFEST_INVALID', /not strict JSON/);
  });

  it('refuses payloads and envelopes over the cap with MANIFEST_TOO_LARGE', () => {
    refused(Buffer.alloc(MAX_MANIFEST_BYTES + 1, 0x20), 'MANIFEST_TOO_LARGE', /limit is/);
    expect(() => parseManifestEnvelope(Buffer.alloc(MAX_MANIFEST_BYTES + 1, 0x20))).toThrowError(
      expect.objectContaining({ code: 'MANIFEST_TOO_LARGE' }) as Error,
    );
  });
});
