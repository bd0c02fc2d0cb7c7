/**
 * `ferry server register-mirror | identity | import-telemetry | agents` as
 * real processes of the built CLI: exports stored, re-imported idempotently,
 * every kind of tampering refused with nothing changed, chain gaps reported,
 * and the ack verifying under the server's pinned key.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadPublicKey } from '../platform/keyfile.js';
import { verifyAck, type OutboxRecord } from '../core/telemetry.js';
import { ferry, snapshotDir, tempDir } from './helpers/fixtures.js';
import {
  batch,
  enrolment,
  heartbeat,
  makeAgent,
  makeMirror,
  writeExport,
  type TestAgent,
  type TestMirror,
} from './helpers/server-fixtures.js';

let dir: string;
let cleanup: () => Promise<void>;
let m1: TestMirror;
let m2: TestMirror;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('ferry-server-cli-'));
  m1 = await makeMirror(dir, 'm1', 'plant-7');
  m2 = await makeMirror(dir, 'm2', 'plant-7');
});
afterAll(() => cleanup());

const json = (s: string) => JSON.parse(s) as Record<string, unknown>;
let n = 0;
const file = () => join(dir, `export-${++n}.jsonl`);

async function setup(): Promise<string> {
  const data = join(dir, `data-${++n}`);
  for (const m of [m1, m2]) {
    const r = await ferry([
      'server',
      'register-mirror',
      '--data',
      data,
      '--site',
      m.site,
      '--pub',
      m.pubPath,
      '--json',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(json(r.stdout)).toMatchObject({ ok: true, mirror: m.id, changed: true });
  }
  return data;
}

function records(agents: TestAgent[], from: number, counters: number[]): OutboxRecord[] {
  let seq = from - 1;
  return agents.flatMap((a) => [
    ...(from === 1 ? [enrolment(a, ++seq)] : []),
    ...counters.map((c) => heartbeat(a, ++seq, c)),
  ]);
}

const fleet = async (data: string) => {
  const r = await ferry(['server', 'agents', '--data', data, '--json']);
  expect(r.code, r.stderr).toBe(0);
  return json(r.stdout);
};

describe('ferry server register-mirror / identity', () => {
  it('registers once, refuses another site, prints and exports the server key', async () => {
    const data = await setup();
    const same = await ferry([
      'server',
      'register-mirror',
      '--data',
      data,
      '--site',
      'plant-7',
      '--pub',
      m1.pubPath,
    ]);
    expect(same.code).toBe(0);
    expect(same.stdout).toMatch(/already registered/);
    const other = await ferry([
      'server',
      'register-mirror',
      '--data',
      data,
      '--site',
      'ship-3',
      '--pub',
      m1.pubPath,
    ]);
    expect(other.code).toBe(1);
    expect(other.stderr).toMatch(/^ferry: MIRROR_SITE_CONFLICT: /);
    const usage = await ferry(['server', 'register-mirror', '--data', data]);
    expect(usage.code).toBe(2);
    const pub = join(dir, 'server.pub');
    const id = await ferry(['server', 'identity', '--data', data, '--out', pub, '--json']);
    expect(id.code, id.stderr).toBe(0);
    expect((await loadPublicKey(pub)).keyid).toBe(json(id.stdout).keyid);
    expect((await ferry(['server', 'start', '--help'])).code).toBe(0);
    expect((await ferry(['server', 'start', '--data', data, '--listen', 'nowhere'])).code).toBe(2);
  });
});

describe('ferry server import-telemetry', () => {
  it('imports, re-imports idempotently, writes an ack that verifies, refuses an older export', async () => {
    const data = await setup();
    const agents = [makeAgent(), makeAgent()];
    const e1 = file();
    const h1 = await writeExport(e1, m1, {
      number: 1,
      prev: null,
      from: 1,
      to: 6,
      records: records(agents, 1, [1, 2]),
    });
    const ack = join(dir, 'ack-1.json');
    const first = await ferry(['server', 'import-telemetry', e1, '--data', data, '--ack-out', ack, '--json']);
    expect(first.code, first.stderr).toBe(0);
    expect(json(first.stdout)).toMatchObject({
      mirror: m1.id,
      number: 1,
      chain: { status: 'ok' },
      stored: 4,
      enrolments: 2,
      duplicates: 0,
      rejected: 0,
    });
    const pub = join(dir, 'pin.pub');
    await ferry(['server', 'identity', '--data', data, '--out', pub]);
    const a = verifyAck(JSON.parse(await readFile(ack, 'utf8')), (await loadPublicKey(pub)).publicKey);
    expect(a).toMatchObject({ mirror: m1.id, number: 1, hash: h1, upTo: 6 });

    const view = await fleet(data);
    expect(view.agents).toHaveLength(2);
    const before = await snapshotDir(data);
    const again = await ferry(['server', 'import-telemetry', e1, '--data', data, '--ack-out', ack]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/already imported/);
    expect(await snapshotDir(data)).toEqual(before);
    expect(await fleet(data)).toEqual(view);

    const e2 = file();
    const h2 = await writeExport(e2, m1, {
      number: 2,
      prev: h1,
      from: 7,
      to: 8,
      records: records(agents, 7, [3]),
    });
    const second = await ferry(['server', 'import-telemetry', e2, '--data', data, '--json']);
    expect(json(second.stdout)).toMatchObject({ number: 2, chain: { status: 'ok' }, stored: 2 });
    expect(h2).toMatch(/^[0-9a-f]{64}$/);

    // export 1 made again with other content: an older export after a newer one
    const old = file();
    await writeExport(old, m1, {
      number: 1,
      prev: null,
      from: 1,
      to: 2,
      records: records([makeAgent()], 1, [1]),
    });
    const snap = await snapshotDir(data);
    const refused = await ferry(['server', 'import-telemetry', old, '--data', data]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^ferry: EXPORT_OUT_OF_ORDER: /);
    expect(await snapshotDir(data)).toEqual(snap);
  });

  it('refuses tampered, reordered, added or removed lines, out-of-order seqs and unknown mirrors, changing nothing', async () => {
    const data = await setup();
    const agents = [makeAgent()];
    const recs = records(agents, 1, [1, 2, 3]);
    const seed = file();
    await writeExport(seed, m2, { number: 1, prev: null, from: 1, to: 4, records: recs });
    expect((await ferry(['server', 'import-telemetry', seed, '--data', data])).code).toBe(0);
    const snap = await snapshotDir(data);
    const spec = { number: 1, prev: null, from: 1, to: 4, records: recs };
    const cases: [string, Parameters<typeof writeExport>[2], TestMirror, string][] = [
      [
        'edited',
        { ...spec, tamper: (l) => [l[0]!, l[1]!.replace('"seq":2', '"seq":3'), l[2]!, l[3]!] },
        m1,
        'EXPORT_TAMPERED',
      ],
      ['reordered', { ...spec, tamper: (l) => [l[0]!, l[2]!, l[1]!, l[3]!] }, m1, 'EXPORT_TAMPERED'],
      ['added', { ...spec, tamper: (l) => [...l, l[3]!] }, m1, 'EXPORT_TAMPERED'],
      ['removed', { ...spec, tamper: (l) => l.slice(0, 3) }, m1, 'EXPORT_TAMPERED'],
      [
        're-signed out of order',
        { ...spec, records: [recs[0]!, recs[2]!, recs[1]!, recs[3]!] },
        m1,
        'EXPORT_OUT_OF_ORDER',
      ],
      ['seq outside range', { ...spec, to: 3 }, m1, 'EXPORT_OUT_OF_ORDER'],
    ];
    for (const [what, s, m, code] of cases) {
      const f = file();
      await writeExport(f, m, s);
      const r = await ferry(['server', 'import-telemetry', f, '--data', data]);
      expect(r.code, what).toBe(1);
      expect(r.stderr, what).toMatch(new RegExp(`^ferry: ${code}: `));
      expect(await snapshotDir(data), what).toEqual(snap);
    }
    const stranger = await makeMirror(dir, `stranger-${++n}`, 'plant-7');
    const f = file();
    await writeExport(f, stranger, spec);
    const unknown = await ferry(['server', 'import-telemetry', f, '--data', data, '--json']);
    expect(unknown.code).toBe(1);
    expect(json(unknown.stdout)).toMatchObject({ ok: false, code: 'UNKNOWN_MIRROR' });
    expect(await snapshotDir(data)).toEqual(snap);
  });

  it('reports chain gaps, coverage gaps and counter gaps; relayed batches are carried batches', async () => {
    const data = await setup();
    const a = makeAgent();
    const b = makeAgent();
    // m2's batch (b enrolled, counters 1 and 4) relayed through m1's export 3 (1 and 2 never came)
    const relayed = batch(m2, 1, 3, [enrolment(b, 1), heartbeat(b, 2, 1), heartbeat(b, 3, 4)]);
    const e = file();
    await writeExport(e, m1, {
      number: 3,
      prev: 'c'.repeat(64),
      from: 10,
      to: 13,
      records: [
        enrolment(a, 10),
        heartbeat(a, 11, 1),
        {
          kind: 'batch',
          seq: 12,
          at: '2025-01-01T00:00:00.000Z',
          via: relayed.via,
          envelope: relayed.envelope,
        },
        heartbeat(a, 13, 5),
      ],
    });
    const r = await ferry(['server', 'import-telemetry', e, '--data', data, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const rep = json(r.stdout);
    expect(rep).toMatchObject({
      chain: { status: 'gap', missing: [1, 2] },
      stored: 4,
      enrolments: 2,
      batches: { total: 1, stored: 1, rejected: 0 },
      coverageGaps: { [m1.id]: ['1–9'] },
      counterGaps: { agents: 2, missing: 5 },
    });
    const text = await ferry(['server', 'import-telemetry', e, '--data', data]);
    expect(text.stdout).toMatch(/already imported/);
    const view = await fleet(data);
    expect(view.agents).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ id: b.id, heartbeats: 2, counterGaps: { missing: 2, first: ['2-3'] } }),
      ]),
    );
  });
});
