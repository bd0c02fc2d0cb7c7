import { describe, expect, it } from 'vitest';
import { accept, activate, decide, type ManifestRef, type MirrorState } from '../mirror/state.js';

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
    publishers: {},
    quarantine: [],
    imports: [],
    ...over,
  };
}

const meta = (r: ManifestRef, sites = ['plant-7']) => ({ sites, expires: r.expires });

describe('mirror decision: accepting a verified manifest', () => {
  const held = accept(state(), ref(5, 'b'));

  it('accepts the first manifest of a publisher and a higher sequence', () => {
    expect(decide(state(), meta(ref(1)), ref(1), NOW, 'plant-7')).toEqual({ kind: 'accept' });
    expect(decide(held, meta(ref(6, 'c')), ref(6, 'c'), NOW, 'plant-7')).toEqual({ kind: 'accept' });
  });

  it('refuses a lower sequence as a rollback', () => {
    expect(decide(held, meta(ref(4)), ref(4), NOW, 'plant-7')).toMatchObject({
      kind: 'refuse',
      code: 'SEQUENCE_ROLLBACK',
    });
  });

  it('refuses the same sequence with other content as equivocation', () => {
    expect(decide(held, meta(ref(5, 'c')), ref(5, 'c'), NOW, 'plant-7')).toMatchObject({
      kind: 'refuse',
      code: 'EQUIVOCATION',
    });
  });

  it('treats the same sequence and content as known (volumes, re-imports)', () => {
    expect(decide(held, meta(ref(5, 'b')), ref(5, 'b'), NOW, 'plant-7')).toEqual({
      kind: 'known',
      where: 'pending',
    });
    const live = activate(held, new Set([hex('b')]), NOW).state;
    expect(decide(live, meta(ref(5, 'b')), ref(5, 'b'), NOW, 'plant-7')).toEqual({
      kind: 'known',
      where: 'active',
    });
  });

  it('judges content by the signed payload, not the envelope (an added signature is the same manifest)', () => {
    const resigned = { ...ref(5, 'b'), digest: hex('e') };
    expect(decide(held, meta(resigned), resigned, NOW, 'plant-7')).toMatchObject({ kind: 'known' });
  });

  it('refuses another site and an expired manifest', () => {
    expect(decide(state(), meta(ref(1), ['plant-9']), ref(1), NOW, 'plant-7')).toMatchObject({
      code: 'SITE_MISMATCH',
    });
    expect(decide(state(), meta(ref(1), ['*']), ref(1), NOW, 'plant-7')).toEqual({ kind: 'accept' });
    const old = ref(1, 'a', 'acme-ops', '2026-11-22T09:59:59Z');
    expect(decide(state(), meta(old), old, NOW, 'plant-7')).toMatchObject({ code: 'MANIFEST_EXPIRED' });
  });

  it('keeps publishers apart', () => {
    const other = ref(1, 'c', 'other-ops');
    expect(decide(held, meta(other), other, NOW, 'plant-7')).toEqual({ kind: 'accept' });
  });
});

describe('mirror decision: activation', () => {
  it('activates only a complete manifest, and retires lower pending ones', () => {
    let s = accept(accept(state(), ref(2, 'b')), ref(3, 'c'));
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

  it('never newly applies a manifest that expired while waiting for blobs', () => {
    const r = ref(2, 'b', 'acme-ops', '2026-11-22T09:00:00Z');
    const step = activate(accept(state(), r), new Set([r.digest]), NOW);
    expect(step.activated).toBeNull();
    expect(step.state.active).toBeNull();
    expect(step.retired).toEqual([r]);
  });

  it('replaces the active manifest and retires the old one', () => {
    const first = activate(accept(state(), ref(1, 'a')), new Set([hex('a')]), NOW).state;
    const step = activate(accept(first, ref(2, 'b')), new Set([hex('b')]), NOW);
    expect(step.state.active).toEqual(ref(2, 'b'));
    expect(step.retired).toEqual([ref(1, 'a')]);
  });
});
