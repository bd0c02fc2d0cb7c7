import { describe, expect, it } from 'vitest';
import type { Manifest } from '../core/manifest.js';
import { decideManifest, initialTrust, type TrustState } from './decide.js';

const DAY = 86_400_000;
const T0 = Date.parse('2026-11-22T10:00:00Z');

function manifest(over: Partial<Manifest> = {}): Manifest {
  return {
    type: 'ferry.manifest/v1',
    publisher: 'acme-ops',
    sequence: 5,
    created: new Date(T0).toISOString(),
    expires: new Date(T0 + 30 * DAY).toISOString(),
    sites: ['plant-7'],
    artifacts: [],
    ...over,
  };
}

const ctx = (now = T0 + DAY) => ({ site: 'plant-7', now });
const accepted = (m: Manifest, digest: string, now = T0 + DAY): TrustState => {
  const d = decideManifest(initialTrust(), m, digest, ctx(now));
  if (d.kind !== 'accept') throw new Error(`expected accept, got ${d.kind}`);
  return d.trust;
};

describe('agent manifest decision', () => {
  it('accepts a fresh manifest and records its sequence and time evidence', () => {
    const t = accepted(manifest(), 'aa');
    expect(t.publishers['acme-ops']).toEqual({ sequence: 5, payloadDigest: 'aa' });
    expect(t.highestTime).toBe(T0 + DAY);
  });

  it('treats the same manifest again as same, and a newer one as accept', () => {
    const t = accepted(manifest(), 'aa');
    expect(decideManifest(t, manifest(), 'aa', ctx()).kind).toBe('same');
    expect(decideManifest(t, manifest({ sequence: 6 }), 'bb', ctx()).kind).toBe('accept');
  });

  it.each([
    ['a lower sequence', manifest({ sequence: 4 }), 'cc', 'SEQUENCE_ROLLBACK'],
    ['the same sequence with other content', manifest(), 'cc', 'EQUIVOCATION'],
    ['another site', manifest({ sequence: 6, sites: ['ship-3'] }), 'cc', 'SITE_MISMATCH'],
    [
      'an expired manifest',
      manifest({ sequence: 6, expires: new Date(T0 + DAY / 2).toISOString() }),
      'cc',
      'MANIFEST_EXPIRED',
    ],
  ])('refuses %s and keeps the trusted sequence', (_name, m, digest, code) => {
    const t = accepted(manifest(), 'aa');
    const d = decideManifest(t, m, digest, ctx());
    expect(d).toMatchObject({ kind: 'refuse', code });
    expect(d.trust.publishers).toEqual(t.publishers);
  });

  it('a clock set back cannot revive an expired manifest', () => {
    // the agent has seen time T0 + 40 days; the clock is then reset to T0
    const t = accepted(
      manifest({ sequence: 1, expires: new Date(T0 + 90 * DAY).toISOString() }),
      'aa',
      T0 + 40 * DAY,
    );
    const old = manifest({ sequence: 2, expires: new Date(T0 + 30 * DAY).toISOString() });
    const d = decideManifest(t, old, 'bb', ctx(T0));
    expect(d).toMatchObject({ kind: 'refuse', code: 'MANIFEST_EXPIRED' });
    expect(d.kind === 'refuse' && d.reason).toMatch(/clock is behind/);
    // and the same manifest is fine on a clock that never saw later time
    expect(decideManifest(initialTrust(), old, 'bb', ctx(T0)).kind).toBe('accept');
  });

  it('a signed created time is evidence of time', () => {
    const future = manifest({
      created: new Date(T0 + 10 * DAY).toISOString(),
      expires: new Date(T0 + 60 * DAY).toISOString(),
    });
    expect(accepted(future, 'aa', T0).highestTime).toBe(T0 + 10 * DAY);
  });
});
