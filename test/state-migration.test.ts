/**
 * State files from before the one sequence space, read by real `ferry`
 * processes. The agent's kept a mark per publisher and `highestTime`, which
 * mixed its own clock readings into time evidence: the marks become the single
 * highest mark and the clock reading is dropped, so an agent whose clock was
 * once wrongly ahead takes fresh releases again after the upgrade. The
 * mirror's kept a mark per publisher: the single highest mark now stops a new
 * publisher label from starting its own count below it.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { initialState, readAgentState } from '../agent/agent-state.js';
import { importInto, startMirrorAt, OPEN_ENROLMENT } from './helpers/agent-proc.js';
import { buildBundle, ferry, snapshotDir } from './helpers/fixtures.js';
import { sha256 } from './helpers/mirror-proc.js';
import { useWorld } from './helpers/world.js';

const w = useWorld();
const DAY = 86_400_000;

describe('agent state.json written before one sequence space', () => {
  it('migrates per-publisher marks to the highest, drops the clock-poisoned time, and takes fresh releases', async () => {
    const dir = join(w.dir, 'old-agent');
    await mkdir(dir, { recursive: true });
    const b21 = await buildBundle(w, join(w.dir, 's21.ferry'), {
      artifacts: [{ name: 'conf', kind: 'file', content: 'release 21\n' }],
      spec: { sequence: 21 },
    });
    const env21 = JSON.parse(b21.envelopeBytes.toString('utf8')) as { payload: string };
    const payload21 = sha256(Buffer.from(env21.payload, 'base64'));
    const fresh = initialState({
      site: 'plant-7',
      groups: [],
      mirrors: [],
      pinnedRoot: await readFile(w.rootPath),
    });
    const old = {
      ...fresh,
      active: {
        publisher: 'acme-ops',
        sequence: 21,
        payloadDigest: payload21,
        envelope: b21.envelopeBytes.toString('base64'),
      },
      // one poll with the clock a year ahead was kept as "time evidence" by the old agent
      trust: {
        publishers: {
          'acme-ops': { sequence: 21, payloadDigest: payload21 },
          'new-ops': { sequence: 1, payloadDigest: 'b'.repeat(64) },
        },
        highestTime: Date.now() + 365 * DAY,
      },
    };
    await writeFile(join(dir, 'state.json'), JSON.stringify(old));

    const s = (await readAgentState(dir))!;
    expect(s.trust).toEqual({
      mark: { sequence: 21, payloadDigest: payload21, signers: null },
      signedTime: Date.parse(b21.manifest.created),
    });

    // a fresh release 22: refused forever by the old agent (expired against the poisoned time), taken now
    const data = join(w.dir, 'old-agent-mirror');
    const b22 = await buildBundle(w, join(w.dir, 's22.ferry'), {
      artifacts: [{ name: 'conf', kind: 'file', content: 'release 22\n' }],
      spec: { sequence: 22 },
    });
    await importInto(data, b22.volumes[0]!.path, w.rootPath);
    const mirror = await startMirrorAt(data, 0, OPEN_ENROLMENT);
    const r = await ferry(['agent', 'poll', '--now', '--state', dir, '--mirror', mirror.url, '--json']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ sync: { kind: 'updated', sequence: 22 }, sequence: 22 });
    const after = (await readAgentState(dir))!;
    expect(after.trust.mark).toMatchObject({ sequence: 22, signers: [w.bundleKey.keyid] });
    expect(after.trust.signedTime).toBe(Date.parse(b22.manifest.created));
    await mirror.stop();
  });
});

describe('mirror state.json written before one sequence space', () => {
  it('migrates per-publisher marks to the highest: a new publisher label cannot roll sequence 21 back', async () => {
    const data = join(w.dir, 'old-mirror');
    const b21 = await buildBundle(w, join(w.dir, 'm21.ferry'), {
      artifacts: [{ name: 'conf', kind: 'file', content: 'mirror release 21\n' }],
      spec: { sequence: 21 },
    });
    await importInto(data, b21.volumes[0]!.path, w.rootPath);
    // rewrite state.json as the old mirror kept it: one mark per publisher, no time memory
    const statePath = join(data, 'state.json');
    const now = JSON.parse(await readFile(statePath, 'utf8')) as Record<string, unknown> & {
      mark: { sequence: number; payloadDigest: string };
    };
    const { mark } = now;
    const old: Record<string, unknown> = {
      ...now,
      publishers: {
        'acme-ops': { sequence: mark.sequence, payloadDigest: mark.payloadDigest },
        'new-ops': { sequence: 1, payloadDigest: 'b'.repeat(64) },
      },
    };
    delete old.mark;
    delete old.signedTime;
    await writeFile(statePath, JSON.stringify(old, null, 2));

    // validly signed, new publisher label, sequence 2: the old mirror would have made it active
    const b2 = await buildBundle(w, join(w.dir, 'm2-new-ops.ferry'), {
      artifacts: [{ name: 'conf', kind: 'file', content: 'rollback\n' }],
      spec: { sequence: 2, publisher: 'new-ops' },
    });
    const view = async () => ({
      blobs: await snapshotDir(join(data, 'blobs')),
      manifests: await snapshotDir(join(data, 'manifests')),
      active: (JSON.parse(await readFile(statePath, 'utf8')) as { active: unknown }).active,
    });
    const before = await view();
    const r = await ferry(['mirror', 'import', b2.volumes[0]!.path, '--data', data, '--json']);
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: false, results: [{ code: 'SEQUENCE_ROLLBACK' }] });
    expect(await view()).toEqual(before);

    const status = await ferry(['mirror', 'status', '--data', data, '--json']);
    expect(JSON.parse(status.stdout)).toMatchObject({
      active: { sequence: 21 },
      mark: { sequence: 21, payloadDigest: mark.payloadDigest, signers: null },
    });
  });
});
