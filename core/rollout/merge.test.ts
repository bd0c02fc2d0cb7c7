import { describe, expect, it } from 'vitest';
import { generateKeyPair, keyIdOf } from '../ed25519.js';
import type { Manifest } from '../manifest.js';
import {
  openSiteEntry,
  signSiteEntry,
  SITE_LOG_TYPE,
  type SiteLogBody,
  type SiteLogPayload,
} from '../site-log.js';
import { mirrorIdOf } from '../telemetry.js';
import { initialGate, step, type GateState, type OperatorEvent } from './gate.js';
import { decide, reconcile, type RolloutBody, type RolloutEntry } from './merge.js';
import { planOf } from './plan.js';

const R = 'a'.repeat(64);
const OTHER = 'b'.repeat(64);
let n = 0;
/** An entry with a made-up id (decide reads only ids and bodies). */
function entry(action: RolloutBody['action'], extra: Partial<RolloutBody> = {}, id?: string): RolloutEntry {
  const body: RolloutBody = { kind: 'rollout', rolloutId: R, action, actor: 'op', reason: '', ...extra };
  return { id: id ?? (++n).toString(16).padStart(64, '0'), body };
}

function permutations<T>(xs: readonly T[]): T[][] {
  if (xs.length <= 1) return [[...xs]];
  return xs.flatMap((x, i) => permutations([...xs.slice(0, i), ...xs.slice(i + 1)]).map((p) => [x, ...p]));
}

describe('decide: a set of entries, any order', () => {
  const h1 = entry('halt', { actor: 'alice', reason: 'smoke' });
  const h2 = entry('halt', { actor: 'mirror', reason: 'wave 0: 1 of 2 failed' });
  const r1 = entry('resume', { lifts: [h1.id] });
  const r12 = entry('resume', { lifts: [h1.id, h2.id] });
  const a1 = entry('approve', { wave: 1 });
  const a1b = entry('approve', { wave: 1, actor: 'bob' });
  const a2 = entry('approve', { wave: 2 });
  const ab = entry('abort', { revert: false });
  const abR = entry('abort', { revert: true });
  const un = entry('update-now', { agentId: 'c'.repeat(32), groups: ['web'] });
  const other = entry('halt', { rolloutId: OTHER });

  const cases: {
    name: string;
    set: RolloutEntry[];
    halted: string[];
    aborted: boolean | null;
    approved: number;
  }[] = [
    { name: 'a halt alone halts', set: [h1], halted: [h1.id], aborted: null, approved: 0 },
    {
      name: 'a late old halt does not re-halt after its resume',
      set: [r1, h1],
      halted: [],
      aborted: null,
      approved: 0,
    },
    {
      name: 'a resume that never heard of a halt leaves it in force',
      set: [h1, h2, r1],
      halted: [h2.id],
      aborted: null,
      approved: 0,
    },
    { name: 'a resume naming both lifts both', set: [h2, r12, h1], halted: [], aborted: null, approved: 0 },
    {
      name: 'abort is final, whatever follows',
      set: [ab, r12, h1, a2],
      halted: [],
      aborted: false,
      approved: 2,
    },
    { name: 'any abort with revert reverts', set: [ab, abR], halted: [], aborted: true, approved: 0 },
    {
      name: 'approvals are per wave and idempotent',
      set: [a1, a1b, a2, a1],
      halted: [],
      aborted: null,
      approved: 2,
    },
    { name: 'another rollout does not count', set: [other, a1], halted: [], aborted: null, approved: 1 },
    { name: 'update-now once per agent', set: [un, un, h1], halted: [h1.id], aborted: null, approved: 0 },
  ];
  for (const c of cases)
    it(c.name, () => {
      const results = permutations(c.set).map((p) => decide(p, R));
      for (const d of results) expect(d).toEqual(results[0]);
      const d = results[0]!;
      expect(d.halts.map((h) => h.id)).toEqual([...c.halted].sort());
      expect(d.aborted === null ? null : d.aborted.revert).toBe(c.aborted);
      expect(d.approved).toBe(c.approved);
    });
});

function manifest(strategy: 'staggered' | 'manual'): Manifest {
  return {
    type: 'ferry.manifest/v1',
    publisher: 'acme',
    sequence: 7,
    created: '2026-11-28T00:00:00Z',
    expires: '2027-11-28T00:00:00Z',
    sites: ['plant'],
    artifacts: [
      {
        name: 'ferry-agent',
        kind: 'agent',
        version: '2.0.0',
        platform: 'linux-x64',
        sha256: 'a'.repeat(64),
        size: 1,
      },
    ],
    rollout: { agent: '2.0.0', strategy, waves: [{ percent: 50 }, { percent: 100 }], maxFailureRate: 0.5 },
  };
}

const T0 = Date.parse('2026-11-28T12:00:00Z');

/** A gate running `strategy` with one agent, and the rollout id. */
function running(strategy: 'staggered' | 'manual'): { s: GateState; id: string } {
  const plan = planOf(manifest(strategy))!;
  const s = step(
    initialGate(),
    { type: 'plan', plan, roster: [{ agentId: 'd'.repeat(32), groups: [] }] },
    T0,
  ).state;
  return { s, id: plan.id };
}

/** Steps what reconcile says, as mirror/rollout.ts converge does. */
function converge(s: GateState, events: OperatorEvent[]): GateState {
  for (const e of events) {
    const r = step(s, e, T0 + 1000);
    expect(r.refused).toBeUndefined();
    s = r.state;
  }
  return s;
}

describe('reconcile: a gate brought to the site decision', () => {
  it('halts, then resumes only once every known halt is lifted', () => {
    const { s, id } = running('staggered');
    const h1 = entry('halt', { rolloutId: id });
    const h2 = entry('halt', { rolloutId: id });
    const halted = converge(s, reconcile(s, decide([h1], id)));
    expect(halted.run?.phase).toBe('halted');
    // A resume that heard of h1 only, then h2 arriving: still halted, nothing to do.
    const partial = decide([h1, entry('resume', { rolloutId: id, lifts: [h1.id] }), h2], id);
    expect(reconcile(halted, partial)).toEqual([]);
    const lifted = decide([h1, h2, entry('resume', { rolloutId: id, lifts: [h1.id, h2.id] })], id);
    expect(converge(halted, reconcile(halted, lifted)).run?.phase).toBe('running');
    // The same halt arriving again after its resume changes nothing.
    expect(reconcile(converge(halted, reconcile(halted, lifted)), lifted)).toEqual([]);
  });

  it('an abort wins over a halt and is final', () => {
    const { s, id } = running('staggered');
    const d = decide([entry('halt', { rolloutId: id }), entry('abort', { rolloutId: id, revert: true })], id);
    const after = converge(s, reconcile(s, d));
    expect(after.run?.phase).toBe('aborted');
    expect(after.run?.revert).toBe(true);
    expect(reconcile(after, decide([], id))).toEqual([]);
  });

  it('an approval waits until the gate awaits it, then opens that wave once', () => {
    const { s, id } = running('manual');
    const d = decide([entry('approve', { rolloutId: id, wave: 1 })], id);
    expect(s.run?.phase).toBe('running');
    expect(reconcile(s, d)).toEqual([]);
    const awaiting: GateState = { ...s, run: { ...s.run!, phase: 'awaiting-approval' } };
    const opened = converge(awaiting, reconcile(awaiting, d));
    expect(opened.run?.wave).toBe(1);
    expect(reconcile(opened, d)).toEqual([]);
  });

  it('entries of a rollout not running here wait', () => {
    const { s } = running('staggered');
    expect(reconcile(s, decide([entry('halt', { rolloutId: OTHER })], OTHER))).toEqual([]);
  });
});

describe('site log entries: who may speak for the site', () => {
  const a = generateKeyPair();
  const b = generateKeyPair();
  const idA = mirrorIdOf(a.publicKey);
  const idB = mirrorIdOf(b.publicKey);
  const listed = new Map([[idA, a.publicKey]]);
  const body: SiteLogBody = { kind: 'rollout', rolloutId: R, action: 'halt', actor: 'op', reason: '' };
  const payload = (mirror: string, site = 'plant'): SiteLogPayload => ({
    ...body,
    type: SITE_LOG_TYPE,
    site,
    mirror,
    at: T0,
  });
  const signer = (k: typeof a) => ({ keyid: keyIdOf(k.publicKey), seed: k.seed });
  const json = (v: unknown) => JSON.parse(JSON.stringify(v)) as unknown;

  it('accepts an entry a listed mirror signed; its id is the digest of the signed bytes', () => {
    const e = signSiteEntry(payload(idA), signer(a));
    const opened = openSiteEntry(json(e.envelope), listed, 'plant');
    expect(opened.id).toBe(e.id);
    expect(opened.payload).toEqual(e.payload);
  });

  const refusals: { name: string; code: string; make: () => unknown }[] = [
    {
      name: 'an unlisted mirror',
      code: 'SITE_LOG_UNKNOWN_MIRROR',
      make: () => signSiteEntry(payload(idB), signer(b)).envelope,
    },
    {
      name: 'a listed mirror named, another key signing',
      code: 'SITE_LOG_BAD_SIGNATURE',
      make: () => signSiteEntry(payload(idA), signer(b)).envelope,
    },
    {
      name: 'a payload changed after signing',
      code: 'SITE_LOG_BAD_SIGNATURE',
      make: () => {
        const env = signSiteEntry(payload(idA), signer(a)).envelope;
        const p = { ...payload(idA), action: 'resume', lifts: [] };
        return { ...env, payload: Buffer.from(JSON.stringify(p)).toString('base64') };
      },
    },
    {
      name: 'another site',
      code: 'SITE_LOG_WRONG_SITE',
      make: () => signSiteEntry(payload(idA, 'elsewhere'), signer(a)).envelope,
    },
    {
      name: 'duplicate keys in the payload',
      code: 'SITE_LOG_INVALID',
      make: () => {
        const text = JSON.stringify(payload(idA)).replace(
          '"action":"halt"',
          '"action":"resume","action":"halt"',
        );
        const env = signSiteEntry(payload(idA), signer(a)).envelope;
        return { ...env, payload: Buffer.from(text).toString('base64') };
      },
    },
    {
      name: 'an unknown field',
      code: 'SITE_LOG_INVALID',
      make: () => ({
        ...signSiteEntry(payload(idA), signer(a)).envelope,
        payload: Buffer.from(JSON.stringify({ ...payload(idA), extra: 1 })).toString('base64'),
      }),
    },
    {
      name: 'an entry past the size cap',
      code: 'SITE_LOG_TOO_LARGE',
      make: () => ({ ...signSiteEntry(payload(idA), signer(a)).envelope, padding: 'x'.repeat(9000) }),
    },
  ];
  for (const r of refusals)
    it(`refuses ${r.name} with ${r.code}`, () => {
      expect(() => openSiteEntry(json(r.make()), listed, 'plant')).toThrow(
        expect.objectContaining({ code: r.code }),
      );
    });
});
