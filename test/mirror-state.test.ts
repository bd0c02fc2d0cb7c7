/**
 * The mirror's pure steps around the freshness rule (core/freshness.ts, which
 * has its own table): what a verdict means for the store, activation in
 * acceptance order over the one sequence space, retiring what a new root no
 * longer authorises, and migrating a state.json that kept a mark per publisher.
 */
import { describe, expect, it } from 'vitest';
import type { Freshness } from '../core/freshness.js';
import {
  accept,
  activate,
  decide,
  retire,
  type ManifestRef,
  type MirrorState,
} from '../mirror/trust-state.js';
import { parseMirrorState } from '../mirror/statefile.js';

const NOW = Date.parse('2026-11-22T10:00:00Z');
const LATER = '2027-02-20T10:00:00Z';
const hex = (c: string) => c.repeat(64);

function ref(sequence: number, content = 'a', publisher = 'acme-ops', expires = LATER): ManifestRef {
  return { publisher, sequence, digest: hex(content), payloadDigest: hex(content), expires };
}

function state(over: Partial<MirrorState> = {}): MirrorState {
  return {
    format: 'ferry.mirror-state/v1',
    site: 'plant-7',
    roots: ['x'],
    active: null,
    pending: [],
    mark: null,
    signedTime: 0,
    quarantine: [],
    imports: [],
    ...over,
  };
}

const next = (r: ManifestRef, signedTime = NOW): Freshness => ({
  mark: { sequence: r.sequence, payloadDigest: r.payloadDigest, signers: [hex('f')] },
  signedTime,
});
const take = (s: MirrorState, r: ManifestRef) => accept(s, r, next(r));

describe('mirror: what a freshness verdict means for the store', () => {
  it('accept moves the one mark and the signed time; same is known where it sits', () => {
    const s = take(state(), ref(5, 'b'));
    expect(s.mark).toEqual({ sequence: 5, payloadDigest: hex('b'), signers: [hex('f')] });
    expect(s.signedTime).toBe(NOW);
    const same = { kind: 'same' as const, expired: false, next: next(ref(5, 'b')) };
    expect(decide(s, same, ref(5, 'b'))).toEqual({ kind: 'known', where: 'pending' });
    const live = activate(s, new Set([hex('b')]), NOW).state;
    expect(decide(live, same, ref(5, 'b'))).toEqual({ kind: 'known', where: 'active' });
    // an added signature changes the envelope, not the manifest
    expect(decide(live, same, { ...ref(5, 'b'), digest: hex('e') })).toEqual({
      kind: 'known',
      where: 'active',
    });
    expect(decide(live, { kind: 'accept', next: next(ref(6)) }, ref(6))).toEqual({ kind: 'accept' });
  });
});

describe('mirror: activation', () => {
  it('activates only a complete manifest, and retires the pending ones accepted before it', () => {
    let s = take(take(state(), ref(2, 'b')), ref(3, 'c'));
    const none = activate(s, new Set(), NOW);
    expect(none.activated).toBeNull();
    expect(none.state.pending).toHaveLength(2);
    const step = activate(s, new Set([hex('c')]), NOW);
    expect(step.activated).toEqual(ref(3, 'c'));
    expect(step.state.pending).toEqual([]);
    expect(step.retired).toEqual([ref(2, 'b')]);
    s = step.state;
    expect(s.active).toEqual(ref(3, 'c'));
  });

  it('keeps pending a later manifest still waiting for blobs', () => {
    const s = take(take(state(), ref(2, 'b')), ref(3, 'c'));
    const step = activate(s, new Set([hex('b')]), NOW);
    expect(step.state.active).toEqual(ref(2, 'b'));
    expect(step.state.pending).toEqual([ref(3, 'c')]);
  });

  it('never newly applies a manifest that expired (by trusted time) while waiting for blobs', () => {
    const r = ref(2, 'b', 'acme-ops', '2026-11-22T09:00:00Z');
    const step = activate(take(state(), r), new Set([r.digest]), NOW);
    expect(step.activated).toBeNull();
    expect(step.state.active).toBeNull();
    expect(step.retired).toEqual([r]);
  });

  it('replaces the active manifest and retires the old one, whatever the publisher labels', () => {
    const first = activate(take(state(), ref(20, 'a', 'acme-ops')), new Set([hex('a')]), NOW).state;
    const step = activate(take(first, ref(21, 'b', 'other-ops')), new Set([hex('b')]), NOW);
    expect(step.state.active).toEqual(ref(21, 'b', 'other-ops'));
    expect(step.retired).toEqual([ref(20, 'a', 'acme-ops')]);
  });

  it('after a recovery, what was accepted last wins even with a lower sequence', () => {
    const compromised = activate(take(state(), ref(2 ** 53 - 1, 'k')), new Set([hex('k')]), NOW).state;
    const honest = activate(
      take(retire(compromised, [ref(2 ** 53 - 1, 'k')]), ref(1, 'h')),
      new Set([hex('h')]),
      NOW,
    );
    expect(honest.state.active).toEqual(ref(1, 'h'));
  });
});

describe('mirror: retiring what a new root no longer authorises', () => {
  it('drops the revoked active and pending manifests and keeps the rest', () => {
    const s = state({ active: ref(3, 'a'), pending: [ref(4, 'b'), ref(5, 'c')] });
    expect(retire(s, [ref(3, 'a'), ref(5, 'c')])).toMatchObject({ active: null, pending: [ref(4, 'b')] });
    expect(retire(s, [])).toBe(s);
  });
});

describe('mirror state.json migration to one sequence space', () => {
  it('turns marks per publisher into the single highest mark, of unknown signers, with no time memory', () => {
    const old = {
      ...state(),
      mark: undefined,
      signedTime: undefined,
      publishers: {
        'acme-ops': { sequence: 21, payloadDigest: hex('a') },
        'new-ops': { sequence: 1, payloadDigest: hex('b') },
      },
    };
    const s = parseMirrorState(JSON.stringify(old));
    expect(s.mark).toEqual({ sequence: 21, payloadDigest: hex('a'), signers: null });
    expect(s.signedTime).toBe(0);
    expect(s).not.toHaveProperty('publishers');
  });

  it('refuses a malformed old mark, naming it', () => {
    const old = {
      ...state(),
      mark: undefined,
      signedTime: undefined,
      publishers: { x: { sequence: 'nine' } },
    };
    expect(() => parseMirrorState(JSON.stringify(old))).toThrowError(/publishers\.x/);
  });
});
