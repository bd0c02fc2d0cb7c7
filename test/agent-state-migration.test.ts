/**
 * An agent state.json from before the one sequence space: a mark per publisher
 * and `highestTime`, which mixed the agent's own clock readings into time
 * evidence. Read by the current agent, the marks become the single highest
 * mark and the clock reading is dropped, so an agent whose clock was once
 * wrongly ahead takes fresh releases again after the upgrade — proved with
 * a real `ferry agent poll --now` against a real `ferry mirror serve`.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { initialState, readAgentState } from '../agent/state.js';
import { importInto, startMirrorAt } from './helpers/agent-proc.js';
import { buildBundle, ferry } from './helpers/fixtures.js';
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
    const mirror = await startMirrorAt(data);
    const r = await ferry(['agent', 'poll', '--now', '--state', dir, '--mirror', mirror.url, '--json']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ sync: { kind: 'updated', sequence: 22 }, sequence: 22 });
    const after = (await readAgentState(dir))!;
    expect(after.trust.mark).toMatchObject({ sequence: 22, signers: [w.bundleKey.keyid] });
    expect(after.trust.signedTime).toBe(Date.parse(b22.manifest.created));
    await mirror.stop();
  });
});
