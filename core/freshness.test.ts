/**
 * The one freshness rule, as a table: every row is (what was accepted before,
 * the candidate, the trusted root, the local clock, the caller's policy) → the
 * verdict. The bundle verifier, the mirror and the agent all call this rule.
 */
import { describe, expect, it } from 'vitest';
import {
  decideFreshness,
  initialFreshness,
  markBinds,
  observeRoot,
  rootRefusal,
  trustedTime,
  underRoot,
  type Candidate,
  type Freshness,
  type FreshnessPolicy,
  type FreshnessRoot,
  type FreshnessVerdict,
} from './freshness.js';

const DAY = 86_400_000;
const T0 = Date.parse('2026-11-22T10:00:00Z');
const iso = (ms: number) => new Date(ms).toISOString();
const K = 'a'.repeat(64);
const L = 'b'.repeat(64);
const M = 'c'.repeat(64);

function root(bundle: string[] = [K, L], threshold = 1, over: Partial<FreshnessRoot> = {}): FreshnessRoot {
  return {
    version: 1,
    expires: iso(T0 + 365 * DAY),
    roles: { root: { keyids: [M], threshold: 1 }, bundle: { keyids: bundle, threshold } },
    ...over,
  };
}

function cand(
  sequence: number,
  o: { digest?: string; signers?: string[]; created?: number; expires?: number; sites?: string[] } = {},
): Candidate {
  const created = o.created ?? T0;
  return {
    manifest: {
      sequence,
      created: iso(created),
      expires: iso(o.expires ?? created + 30 * DAY),
      sites: o.sites ?? ['plant-7'],
    },
    payloadDigest: o.digest ?? `d${sequence}`,
    signers: o.signers ?? [K],
  };
}

/** State after accepting sequence 5 (digest d5, signed by K, created T0). */
const held = (signers: string[] | null = [K], signedTime = T0): Freshness => ({
  mark: { sequence: 5, payloadDigest: 'd5', signers },
  signedTime,
});

const keep = (clock = T0 + DAY): FreshnessPolicy => ({ clock, site: 'plant-7', acceptedExpired: 'keep' });
const anySite: FreshnessPolicy = { clock: T0 + DAY, acceptedExpired: 'refuse' };
const refuseOld = (clock = T0 + DAY): FreshnessPolicy => ({
  clock,
  site: 'plant-7',
  acceptedExpired: 'refuse',
});

type Row = [
  string,
  Freshness,
  Candidate,
  FreshnessRoot,
  FreshnessPolicy,
  Partial<FreshnessVerdict> & { kind: string },
];

const rows: Row[] = [
  // first manifest, site
  ['first manifest ever', initialFreshness(), cand(1), root(), keep(), { kind: 'accept' }],
  [
    'another site',
    initialFreshness(),
    cand(1, { sites: ['plant-9'] }),
    root(),
    keep(),
    { kind: 'refuse', code: 'SITE_MISMATCH' },
  ],
  ['any site ("*")', initialFreshness(), cand(1, { sites: ['*'] }), root(), keep(), { kind: 'accept' }],
  [
    'no site given (bundle verify without --site)',
    initialFreshness(),
    cand(1, { sites: ['plant-9'] }),
    root(),
    anySite,
    { kind: 'accept' },
  ],
  [
    'another site even for the accepted manifest',
    held(),
    cand(5, { digest: 'd5', sites: ['plant-9'] }),
    root(),
    keep(),
    { kind: 'refuse', code: 'SITE_MISMATCH' },
  ],
  // sequence: one space
  ['a higher sequence', held(), cand(6), root(), keep(), { kind: 'accept' }],
  [
    'a lower sequence (rollback)',
    held(),
    cand(4),
    root(),
    keep(),
    { kind: 'refuse', code: 'SEQUENCE_ROLLBACK' },
  ],
  [
    'sequence 1 after 5, whatever the publisher label',
    held(),
    cand(1, { digest: 'other-publisher' }),
    root(),
    keep(),
    { kind: 'refuse', code: 'SEQUENCE_ROLLBACK' },
  ],
  [
    'the same sequence with other content (equivocation)',
    held(),
    cand(5, { digest: 'evil' }),
    root(),
    keep(),
    { kind: 'refuse', code: 'EQUIVOCATION' },
  ],
  [
    'the same manifest again',
    held(),
    cand(5, { digest: 'd5' }),
    root(),
    keep(),
    { kind: 'same', expired: false },
  ],
  [
    'the same manifest, re-signed by another authorised key',
    held(),
    cand(5, { digest: 'd5', signers: [L] }),
    root(),
    keep(),
    { kind: 'same', expired: false },
  ],
  // expiry
  [
    'a new manifest that has expired',
    held(),
    cand(6, { expires: T0 + DAY / 2 }),
    root(),
    keep(),
    { kind: 'refuse', code: 'MANIFEST_EXPIRED' },
  ],
  [
    'a new manifest expiring exactly now',
    held(),
    cand(6, { expires: T0 + DAY }),
    root(),
    keep(),
    { kind: 'refuse', code: 'MANIFEST_EXPIRED' },
  ],
  [
    'the accepted manifest, since expired (agent: keep running, report)',
    held(),
    cand(5, { digest: 'd5' }),
    root(),
    keep(T0 + 31 * DAY),
    { kind: 'same', expired: true },
  ],
  [
    'the accepted manifest, since expired (mirror import: refuse)',
    held(),
    cand(5, { digest: 'd5' }),
    root(),
    refuseOld(T0 + 31 * DAY),
    { kind: 'refuse', code: 'MANIFEST_EXPIRED' },
  ],
  [
    'the accepted manifest, unexpired, under the refusing policy',
    held(),
    cand(5, { digest: 'd5' }),
    root(),
    refuseOld(),
    { kind: 'same', expired: false },
  ],
  // trusted time
  [
    'clock behind signed time: expired by signed time though not by the clock',
    held([K], T0 + 40 * DAY),
    cand(6, { expires: T0 + 30 * DAY }),
    root(),
    keep(T0 + DAY),
    { kind: 'refuse', code: 'MANIFEST_EXPIRED' },
  ],
  [
    'clock behind signed time: fresh by signed time',
    held([K], T0 + 40 * DAY),
    cand(6, { created: T0 + 39 * DAY }),
    root(),
    keep(T0 + DAY),
    { kind: 'accept' },
  ],
  [
    "clock behind the root's signed created time",
    initialFreshness(),
    cand(1, { expires: T0 + 30 * DAY }),
    root([K], 1, { created: iso(T0 + 60 * DAY) }),
    keep(T0),
    { kind: 'refuse', code: 'MANIFEST_EXPIRED' },
  ],
  [
    'a clock ahead is used, but only for this decision',
    held(),
    cand(6, { expires: T0 + 30 * DAY }),
    root(),
    keep(T0 + 100 * DAY),
    { kind: 'refuse', code: 'MANIFEST_EXPIRED' },
  ],
  // root expiry
  [
    'an expired trusted root',
    held(),
    cand(6),
    root([K], 1, { expires: iso(T0) }),
    keep(),
    { kind: 'refuse', code: 'ROOT_EXPIRED' },
  ],
  [
    'a root expired by signed time though not by the clock',
    held([K], T0 + 400 * DAY),
    cand(6),
    root(),
    keep(T0 + DAY),
    { kind: 'refuse', code: 'ROOT_EXPIRED' },
  ],
  // key-compromise recovery
  [
    'mark no longer binding: its only signer was removed from the bundle role',
    held([K]),
    cand(1, { signers: [L] }),
    root([L]),
    keep(),
    { kind: 'accept' },
  ],
  [
    'mark still binding: one of its signers remains and the threshold is 1',
    held([K, L]),
    cand(1, { signers: [L] }),
    root([L]),
    keep(),
    { kind: 'refuse', code: 'SEQUENCE_ROLLBACK' },
  ],
  [
    'mark no longer binding: the threshold was raised above its signers',
    held([K]),
    cand(1, { signers: [K, L] }),
    root([K, L], 2),
    keep(),
    { kind: 'accept' },
  ],
  [
    'a mark of unknown signers (migrated) always binds',
    held(null),
    cand(1, { signers: [L] }),
    root([L]),
    keep(),
    { kind: 'refuse', code: 'SEQUENCE_ROLLBACK' },
  ],
  [
    'a non-binding mark does not protect against equivocation it cannot judge',
    held([K]),
    cand(5, { digest: 'other', signers: [L] }),
    root([L]),
    keep(),
    { kind: 'accept' },
  ],
  [
    'a stolen key pushed signed time far ahead: after recovery that time no longer counts',
    held([K], T0 + 3000 * DAY),
    cand(1, { signers: [L] }),
    root([L], 1, { created: iso(T0) }),
    keep(),
    { kind: 'accept', next: { mark: { sequence: 1, payloadDigest: 'd1', signers: [L] }, signedTime: T0 } },
  ],
  [
    'while the key still binds, the far-ahead signed time it vouched for stands',
    held([K], T0 + 3000 * DAY),
    cand(6),
    root(),
    keep(),
    { kind: 'refuse', code: 'ROOT_EXPIRED' },
  ],
  [
    'recovery never lets an expired manifest in',
    held([K]),
    cand(1, { signers: [L], expires: T0 + DAY / 2 }),
    root([L]),
    keep(),
    { kind: 'refuse', code: 'MANIFEST_EXPIRED' },
  ],
];

describe('the freshness rule', () => {
  it.each(rows)('%s', (_name, f, c, r, policy, want) => {
    const before = structuredClone(f);
    const v = decideFreshness(f, c, r, policy);
    expect(v).toMatchObject(want);
    expect(f).toEqual(before); // pure: the input is never changed
    if (v.kind === 'refuse') expect(v.reason).toMatch(/^[^\n]+$/);
  });

  it('an accepted manifest becomes the mark with its signers, and its signed created time is remembered', () => {
    const v = decideFreshness(
      held(),
      cand(6, { signers: [L, K], created: T0 + 2 * DAY }),
      root(),
      keep(T0 + 3 * DAY),
    );
    expect(v).toEqual({
      kind: 'accept',
      next: { mark: { sequence: 6, payloadDigest: 'd6', signers: [K, L] }, signedTime: T0 + 2 * DAY },
    });
  });

  it('never persists a clock reading: a clock far ahead leaves signed time where it was', () => {
    const v = decideFreshness(held(), cand(6), root(), keep(T0 + 20 * DAY));
    expect(v.kind === 'accept' && v.next.signedTime).toBe(T0);
    const same = decideFreshness(held(), cand(5, { digest: 'd5' }), root(), keep(T0 + 200 * DAY));
    expect(same).toEqual({ kind: 'same', expired: true, next: held() });
  });

  it('says why when the clock is behind signed time', () => {
    const v = decideFreshness(
      held([K], T0 + 40 * DAY),
      cand(6, { expires: T0 + 30 * DAY }),
      root(),
      keep(T0),
    );
    expect(v.kind === 'refuse' && v.reason).toMatch(/local clock is behind signed time/);
  });

  it('what still holds under a root: all of it while the mark binds, nothing of it once the mark does not', () => {
    const f = held([K], T0 + 50 * DAY);
    expect(underRoot(f, root([K, L], 1, { created: iso(T0) }))).toEqual(f);
    expect(underRoot(f, root([K, L], 1, { created: iso(T0 + 60 * DAY) })).signedTime).toBe(T0 + 60 * DAY);
    expect(underRoot(f, root([L], 1, { created: iso(T0) }))).toEqual({ mark: null, signedTime: T0 });
    expect(underRoot(f, root([L], 1))).toEqual({ mark: null, signedTime: 0 });
    expect(underRoot(held(null, T0 + 50 * DAY), root([L]))).toEqual(held(null, T0 + 50 * DAY));
  });

  it('trusted time is the latest of the clock, the signed time seen and the root created', () => {
    expect(trustedTime(held([K], T0), T0 + 1)).toBe(T0 + 1);
    expect(trustedTime(held([K], T0 + 5), T0)).toBe(T0 + 5);
    expect(trustedTime(held([K], T0), T0, { created: iso(T0 + 9000) })).toBe(T0 + 9000);
    expect(observeRoot(held([K], T0), { created: iso(T0 + 9000) }).signedTime).toBe(T0 + 9000);
    expect(observeRoot(held([K], T0 + 9000), { created: iso(T0) }).signedTime).toBe(T0 + 9000);
    expect(observeRoot(held([K], T0), {}).signedTime).toBe(T0);
  });

  it('a mark binds while its distinct signers still meet the bundle threshold', () => {
    const mark = { sequence: 5, payloadDigest: 'd5', signers: [K, K, M] };
    expect(markBinds(mark, root([K, L], 1))).toBe(true);
    expect(markBinds(mark, root([K, L], 2))).toBe(false); // K twice counts once; M is not in the role
    expect(markBinds({ ...mark, signers: [] }, root([K], 1))).toBe(false);
  });

  it('judges the root against trusted time', () => {
    const r = root([K], 1, { expires: iso(T0 + 10 * DAY) });
    expect(rootRefusal(initialFreshness(), r, T0)).toBeUndefined();
    expect(rootRefusal(initialFreshness(), r, T0 + 10 * DAY)).toMatchObject({ code: 'ROOT_EXPIRED' });
    expect(rootRefusal(held([K], T0 + 11 * DAY), r, T0)).toMatchObject({
      code: 'ROOT_EXPIRED',
      reason: expect.stringMatching(/clock is behind/) as string,
    });
  });
});
