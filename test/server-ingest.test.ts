/**
 * Ingest rules of the server, in process against a real data directory:
 * carried batches (stored, duplicate, unknown mirror, foreign key), heartbeats
 * a relay altered, replays, parking until the enrolment arrives, wrong site,
 * and a state rebuilt from the journal when state.json is lost or corrupt.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chainStatus } from '../server/exports.js';
import type { BatchOutcome } from '../server/ingest.js';
import { addRange, has, hasRange, holes, type Interval } from '../server/intervals.js';
import { registerMirror } from '../server/mirrors.js';
import { ServerStore } from '../server/store.js';
import { snapshotDir } from './helpers/fixtures.js';
import type { CarriedBatch, OwnRecord } from '../core/telemetry.js';
import {
  altered,
  batch,
  enrolment,
  heartbeat,
  makeAgent,
  makeMirror,
  type TestMirror,
} from './helpers/server-fixtures.js';

let root: string;
let m1: TestMirror;
let m2: TestMirror;
let m3: TestMirror; // another site
let stranger: TestMirror; // never registered

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'ferry-server-'));
  m1 = await makeMirror(root, 'm1', 'plant-7');
  m2 = await makeMirror(root, 'm2', 'plant-7');
  m3 = await makeMirror(root, 'm3', 'ship-3');
  stranger = await makeMirror(root, 'stranger', 'plant-7');
});
afterAll(() => rm(root, { recursive: true, force: true }));

async function newStore(): Promise<{ dir: string; store: ServerStore }> {
  const dir = await mkdtemp(join(root, 'data-'));
  for (const m of [m1, m2, m3]) await registerMirror(dir, m.key.publicKey, m.site);
  return { dir, store: await ServerStore.open(dir) };
}

const send = (store: ServerStore, ...batches: CarriedBatch[]): Promise<BatchOutcome[]> =>
  store.ingest('test', async (ing) => {
    const out: BatchOutcome[] = [];
    for (const b of batches) out.push(await ing.carried(b));
    return out;
  });

const tally = (o: BatchOutcome | undefined) => {
  if (!o?.ok) throw new Error(`batch refused: ${JSON.stringify(o)}`);
  return o.tally;
};

describe('intervals', () => {
  it('merges, finds and reports holes', () => {
    const s: Interval[] = [];
    addRange(s, 5, 7);
    addRange(s, 1, 2);
    addRange(s, 10, 10);
    addRange(s, 3, 3);
    expect(s).toEqual([
      [1, 3],
      [5, 7],
      [10, 10],
    ]);
    addRange(s, 4, 9);
    expect(s).toEqual([[1, 10]]);
    addRange(s, 20, 25);
    addRange(s, 12, 30);
    expect(s).toEqual([
      [1, 10],
      [12, 30],
    ]);
    expect(has(s, 11)).toBe(false);
    expect(has(s, 12)).toBe(true);
    expect(hasRange(s, 13, 30)).toBe(true);
    expect(hasRange(s, 9, 13)).toBe(false);
    expect(holes(s)).toEqual([[11, 11]]);
    expect(holes([[4, 5]], 1)).toEqual([[1, 3]]);
  });
});

describe('export chain', () => {
  const h = (n: number, prev: string | null) =>
    ({ number: n, prev, mirror: 'm' }) as Parameters<typeof chainStatus>[1];
  const a = 'a'.repeat(64);
  const b = 'b'.repeat(64);
  const p = {
    coverage: [],
    lastExport: 2,
    lastExportHash: b,
    lastExportAt: null,
    exports: { '1': a, '2': b },
  };
  it('says ok, already imported, gap, or refuses an older one', () => {
    expect(chainStatus(undefined, h(1, null), a)).toEqual({ status: 'ok' });
    expect(chainStatus(p, h(3, b), 'c'.repeat(64))).toEqual({ status: 'ok' });
    expect(chainStatus(p, h(2, a), b)).toEqual({ status: 'already imported' });
    expect(chainStatus(p, h(5, a), 'c'.repeat(64))).toMatchObject({ status: 'gap', missing: [3, 4] });
    expect(chainStatus(p, h(3, a), 'c'.repeat(64))).toMatchObject({ status: 'gap', missing: null });
    expect(() => chainStatus(p, h(1, null), 'c'.repeat(64))).toThrow(/already imported with another/);
    expect(() => chainStatus({ ...p, exports: { '2': b } }, h(1, null), a)).toThrow(/older/);
  });
});

describe('carried batches', () => {
  it('stores, counts a re-delivery as duplicate, and reports overlap record by record', async () => {
    const { store } = await newStore();
    const a = makeAgent();
    const b1 = batch(m1, 1, 3, [enrolment(a, 1), heartbeat(a, 2, 1), heartbeat(a, 3, 2)]);
    const [r1] = await send(store, b1);
    expect(r1).toMatchObject({
      ok: true,
      duplicate: false,
      tally: { stored: 2, enrolments: 1, duplicates: 0 },
    });
    const head = store.journalHead;
    const [again] = await send(store, b1);
    expect(again).toMatchObject({ ok: true, duplicate: true, tally: { stored: 0, duplicates: 3 } });
    expect(store.journalHead).toBe(head); // nothing stored
    const [overlap] = await send(store, batch(m1, 3, 4, [heartbeat(a, 3, 2), heartbeat(a, 4, 3)]));
    expect(tally(overlap)).toMatchObject({ stored: 1, duplicates: 1 });
    const [view] = store.fleet();
    expect(view).toMatchObject({
      id: a.id,
      site: 'plant-7',
      heartbeats: 3,
      lastCounter: 3,
      version: '1.0.0',
    });
    expect(store.state.mirrors[m1.id]?.coverage).toEqual([[1, 4]]);
    await store.close();
  });

  it('refuses a whole batch from an unknown mirror or signed by another key: counted, never journaled', async () => {
    const { dir, store } = await newStore();
    const files = async () =>
      Object.fromEntries(Object.entries(await snapshotDir(dir)).filter(([k]) => k !== 'lock'));
    const before = await files();
    const a = makeAgent();
    const [unknown, forged] = await send(
      store,
      batch(stranger, 1, 1, [enrolment(a, 1)]),
      batch(m1, 1, 1, [enrolment(a, 1)], stranger.key),
    );
    expect(unknown).toMatchObject({ ok: false, code: 'UNKNOWN_MIRROR' });
    expect(forged).toMatchObject({ ok: false, code: 'BAD_SIGNATURE' });
    const bad = { ...batch(m1, 1, 1, [enrolment(a, 1)]), via: [m2.id, m1.id] };
    const [wrongOrigin] = await send(store, bad);
    expect(wrongOrigin).toMatchObject({ ok: false, code: 'TELEMETRY_INVALID' });
    const [loop] = await send(store, { ...batch(m1, 1, 1, [enrolment(a, 1)]), via: [m1.id, m2.id, m1.id] });
    expect(loop).toMatchObject({ ok: false, code: 'LOOP' });
    expect(store.fleet()).toEqual([]);
    expect(store.state.mirrors[m1.id]).toBeUndefined(); // nothing covered: a good copy is still welcome
    // none of them authenticated as a registered mirror: counted, and nothing written
    expect(Object.fromEntries(store.unauthenticated)).toEqual({
      UNKNOWN_MIRROR: 1,
      BAD_SIGNATURE: 1,
      TELEMETRY_INVALID: 1,
      LOOP: 1,
    });
    expect(store.journalHead).toBe(0);
    expect(await files()).toEqual(before);
    await store.close();
    expect(await files()).toEqual(before);
    const again = await ServerStore.open(dir);
    expect(again.state.rejectionCounts).toEqual({});
    await again.close();
  });

  it('marks an agent revoked by a mirror of its site, also when the revocation arrives before its enrolment', async () => {
    const { dir, store } = await newStore();
    const a = makeAgent();
    const b = makeAgent();
    const revocation = (x: typeof a, seq: number, reason: string): OwnRecord => ({
      kind: 'revocation',
      seq,
      at: new Date().toISOString(),
      revocation: { agentId: x.id, revokedAt: '2026-11-29T08:00:00.000Z', reason },
    });
    // b's revocation (m2) comes home before its enrolment (m1); a mirror of another site cannot revoke a
    await send(store, batch(m1, 1, 1, [enrolment(a, 1)]), batch(m2, 1, 1, [revocation(b, 1, 'lost')]));
    const [foreign] = await send(store, batch(m3, 1, 1, [revocation(a, 1, 'not yours')]));
    expect(foreign).toMatchObject({ ok: true, tally: { rejected: [{ code: 'WRONG_SITE' }] } });
    await send(store, batch(m1, 2, 2, [enrolment(b, 2)]));
    const view = () => new Map(store.fleet().map((x) => [x.id, x.revoked]));
    expect(view().get(a.id)).toBeNull();
    expect(view().get(b.id)).toEqual({ at: '2026-11-29T08:00:00.000Z', by: m2.id, reason: 'lost' });
    // enrolling again does not lift it, and it survives a restart (replayed from the journal)
    await send(store, batch(m2, 2, 2, [enrolment(b, 2)]));
    expect(view().get(b.id)).toMatchObject({ reason: 'lost' });
    await store.close();
    const again = await ServerStore.open(dir);
    expect(new Map(again.fleet().map((x) => [x.id, x.revoked])).get(b.id)).toMatchObject({ by: m2.id });
    await again.close();
  });

  it('keeps what the mirror of a site decided about a rollout, per site, across a restart; a malformed event is refused', async () => {
    const { dir, store } = await newStore();
    const event = (seq: number, ev: string, extra: object = {}): OwnRecord =>
      ({
        kind: 'rollout',
        seq,
        at: new Date().toISOString(),
        rollout: {
          rolloutId: 'ab'.repeat(32),
          manifestSequence: 42,
          version: '1.4.2',
          event: ev,
          wave: 0,
          actor: 'mirror',
          reason: 'test',
          ...extra,
        },
      }) as OwnRecord;
    const counts = { agents: 2, pending: 0, updating: 0, committed: 1, failed: 1, rolledBack: 0, silent: 0 };
    const [ok] = await send(
      store,
      batch(m1, 1, 2, [
        event(1, 'wave_opened'),
        event(2, 'halted', { counts, threshold: 0.1, failureRate: 0.5 }),
      ]),
    );
    expect(ok).toMatchObject({ ok: true, tally: { rolloutEvents: 2 } });
    // the same check guards signing and ingest: an unknown event never makes a batch
    expect(() => batch(m1, 3, 3, [event(3, 'exploded')])).toThrow(/event must be one of/);
    expect(() => batch(m1, 3, 3, [event(3, 'halted', { failureRate: 2 })])).toThrow(/failureRate/);
    const events = (s: ServerStore) => (s.state.rollouts?.['plant-7'] ?? []).map((r) => r.rollout.event);
    expect(events(store)).toEqual(['wave_opened', 'halted']);
    expect(store.state.rollouts?.['plant-7']?.[1]?.rollout).toMatchObject({ counts, failureRate: 0.5 });
    await store.close();
    const again = await ServerStore.open(dir);
    expect(events(again)).toEqual(['wave_opened', 'halted']);
    await again.close();
  });

  it('rejects heartbeats a relay altered (payload or outer counter) and replays in a new slot', async () => {
    const { store } = await newStore();
    const a = makeAgent();
    const hb = heartbeat(a, 2, 1);
    const hb2 = heartbeat(a, 3, 2);
    if (hb.kind !== 'heartbeat' || hb2.kind !== 'heartbeat') throw new Error('fixture');
    const payloadChanged = {
      ...hb,
      envelope: altered(hb.envelope, (p) => {
        p.version = '6.6.6';
      }),
    };
    const counterChanged = { ...hb2, counter: 7 };
    const [r] = await send(store, batch(m1, 1, 3, [enrolment(a, 1), payloadChanged, counterChanged]));
    expect(tally(r)).toMatchObject({ stored: 0, enrolments: 1 });
    expect(tally(r).rejected.map((x) => [x.seq, x.code])).toEqual([
      [2, 'BAD_SIGNATURE'],
      [3, 'BAD_HEARTBEAT'],
    ]);
    expect(store.fleet()[0]).toMatchObject({ heartbeats: 0, version: null });

    const good = heartbeat(a, 4, 5);
    const [ok] = await send(store, batch(m1, 4, 4, [good]));
    expect(tally(ok).stored).toBe(1);
    // the same signed heartbeat again, in another mirror's slot
    const [replay] = await send(store, batch(m2, 1, 1, [{ ...good, seq: 1 }]));
    expect(tally(replay).rejected).toEqual([expect.objectContaining({ seq: 1, code: 'REPLAY' })]);
    expect(store.fleet()[0]).toMatchObject({ heartbeats: 1 });
    expect(store.state.rejectionCounts).toEqual({ BAD_SIGNATURE: 1, BAD_HEARTBEAT: 1, REPLAY: 1 });
    await store.close();
  });

  it('parks a heartbeat that arrives before its enrolment, then stores it', async () => {
    const { dir, store } = await newStore();
    const a = makeAgent();
    // the heartbeat came home over m2; the enrolment, made by m1, is still on its way
    const [early] = await send(store, batch(m2, 1, 2, [heartbeat(a, 1, 1), heartbeat(a, 2, 2)]));
    expect(tally(early)).toMatchObject({ stored: 0, parked: 2 });
    expect(store.fleet()).toEqual([]);
    await store.close();
    const reopened = await ServerStore.open(dir); // parked survives a restart
    expect(reopened.state.totals.parked).toBe(2);
    const [late] = await send(reopened, batch(m1, 1, 1, [enrolment(a, 1)]));
    expect(tally(late)).toMatchObject({ enrolments: 1, stored: 2 });
    expect(reopened.fleet()[0]).toMatchObject({ id: a.id, heartbeats: 2, lastCounter: 2 });
    expect(reopened.state.parked).toEqual({});
    await reopened.close();
  });

  it('rejects heartbeats relayed by a mirror of another site (WRONG_SITE)', async () => {
    const { store } = await newStore();
    const a = makeAgent();
    await send(store, batch(m1, 1, 1, [enrolment(a, 1)]));
    const [r] = await send(store, batch(m3, 1, 1, [heartbeat(a, 1, 1)]));
    expect(tally(r).rejected).toEqual([expect.objectContaining({ code: 'WRONG_SITE' })]);
    // a batch naming another site than its mirror's registration
    const lying = { ...m3, site: 'plant-7' };
    const [w] = await send(store, batch(lying, 2, 2, [heartbeat(a, 2, 2)]));
    expect(w).toMatchObject({ ok: false, code: 'WRONG_SITE' });
    expect(store.fleet()[0]?.heartbeats).toBe(0);
    await store.close();
  });

  it('refuses a bad enrolment (id not derived from the key, request for another key)', async () => {
    const { store } = await newStore();
    const a = makeAgent();
    const b = makeAgent();
    const e = enrolment(a, 1);
    if (e.kind !== 'enrolment') throw new Error('fixture');
    const wrongId = { ...e, agent: { ...e.agent, agentId: b.id } };
    const eb = enrolment(b, 2);
    if (eb.kind !== 'enrolment') throw new Error('fixture');
    const otherRequest = { ...eb, agent: { ...eb.agent, request: e.agent.request! } };
    const [r] = await send(store, batch(m1, 1, 2, [wrongId, otherRequest]));
    expect(tally(r).rejected.map((x) => x.code)).toEqual(['BAD_ENROLMENT', 'BAD_ENROLMENT']);
    expect(store.fleet()).toEqual([]);
    await store.close();
  });
});

describe('crash safety', () => {
  it('rebuilds the same state from the journal when state.json is missing or corrupt', async () => {
    const { dir, store } = await newStore();
    const agents = [makeAgent(), makeAgent(), makeAgent()];
    let seq = 0;
    const records = agents.flatMap((a) => [
      enrolment(a, ++seq),
      heartbeat(a, ++seq, 1),
      heartbeat(a, ++seq, 3),
    ]);
    await send(store, batch(m1, 1, seq, records));
    await send(store, batch(m2, 1, 1, [heartbeat(agents[0]!, 1, 1)])); // a replay: a rejection
    const fleet = store.fleet();
    const state = structuredClone(store.state);
    await store.close();

    await rm(join(dir, 'state.json'));
    const rebuilt = await ServerStore.open(dir);
    expect(rebuilt.fleet()).toEqual(fleet);
    expect(rebuilt.state).toEqual(state);
    await rebuilt.close();

    await writeFile(join(dir, 'state.json'), '{"version":1,"journalSeq":');
    const again = await ServerStore.open(dir);
    expect(again.state).toEqual(state);
    expect(again.fleet()[0]?.counterGaps).toEqual({ missing: 1, first: ['2'] });
    await again.close();
  });
});
