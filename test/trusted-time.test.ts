/**
 * Trusted time = max(local clock, latest signed time seen); a clock reading is
 * never kept as trusted. Wrong clocks are played out where they hurt:
 *
 *  - the agent's sync (agent/sync.ts, with the clock it is given) against a
 *    real `ferry mirror serve`, its state written to and read back from disk
 *    between polls, with the clock 200 days ahead for one poll and then right;
 *  - the mirror's store reopened with its clock set back, so only the signed
 *    time it remembers in state.json stands between it and an expired bundle;
 *  - an expired pinned root, refused by `ferry agent poll`, `ferry mirror
 *    import` and `ferry bundle verify`, each a real process.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { serializeEnvelope } from '../core/dsse.js';
import { isoUtc } from '../core/time.js';
import { applyOnce } from '../agent/apply.js';
import { MirrorSet } from '../agent/fetch.js';
import { initialState, readAgentState, writeAgentState, type AgentState } from '../agent/agent-state.js';
import { syncOnce } from '../agent/sync.js';
import { importBundle } from '../mirror/import.js';
import { Store } from '../mirror/store.js';
import { createLogger } from '../platform/log.js';
import { importInto, startMirrorAt, OPEN_ENROLMENT } from './helpers/agent-proc.js';
import {
  buildBundle,
  ferry,
  makeRootEnvelope,
  snapshotDir,
  type ArtifactInput,
  storeView,
} from './helpers/fixtures.js';
import { sleep } from './helpers/mirror-proc.js';
import { useWorld } from './helpers/world.js';

const w = useWorld();
const DAY = 86_400_000;
let n = 0;

const files = (tag: string): ArtifactInput[] => [{ name: 'conf', kind: 'file', content: `release ${tag}\n` }];

async function bundleFile(sequence: number, o: { now?: number; expires?: string; dir?: string } = {}) {
  const out = join(o.dir ?? w.dir, `t${++n}-s${sequence}.ferry`);
  const r = await buildBundle(w, out, {
    artifacts: files(`${sequence}-${n}`),
    spec: { sequence, ...(o.expires && { expires: o.expires }) },
    ...(o.now !== undefined && { now: o.now }),
  });
  return { file: r.volumes[0]!.path, manifest: r.manifest };
}

describe('agent: a clock wrong for one poll is forgotten once it is right', () => {
  const log = createLogger({ component: 'agent', write: () => {} });

  /** One sync at `clock`, from the state on disk back to disk, as the agent does each cycle. */
  async function pollAt(stateDir: string, url: string, clock: number) {
    const state = (await readAgentState(stateDir))!;
    const ctx = {
      cacheDir: join(stateDir, 'cache'),
      mirrors: new MirrorSet([url]),
      log,
      now: () => clock,
      timeoutMs: 10_000,
    };
    const r = await syncOnce(ctx, state);
    await writeAgentState(stateDir, r.state);
    return r;
  }

  async function newAgent(name: string): Promise<string> {
    const stateDir = join(w.dir, name, 'agent');
    await mkdir(join(stateDir, 'cache'), { recursive: true });
    const s: AgentState = initialState({
      site: 'plant-7',
      groups: [],
      mirrors: [],
      pinnedRoot: await readFile(w.rootPath),
    });
    await writeAgentState(stateDir, s);
    return stateDir;
  }

  it('keeps running what it has while its clock is 200 days ahead, then takes the next release once it is right', async () => {
    const data = join(w.dir, 'ahead', 'mirror');
    const now = Date.now();
    const m1 = await bundleFile(1);
    await importInto(data, m1.file, w.rootPath);
    const mirror = await startMirrorAt(data, 0, OPEN_ENROLMENT);
    const stateDir = await newAgent('ahead');

    expect((await pollAt(stateDir, mirror.url, now)).outcome).toMatchObject({ kind: 'updated', sequence: 1 });
    // 200 days ahead: what runs keeps running (same, expired) and nothing of the wrong clock is kept
    expect((await pollAt(stateDir, mirror.url, now + 200 * DAY)).outcome).toMatchObject({
      kind: 'unchanged',
    });
    const kept = (await readAgentState(stateDir))!;
    expect(kept.active?.sequence).toBe(1);
    expect(kept.trust.signedTime).toBe(Date.parse(m1.manifest.created));
    // apply keeps running it and reports the expiry while the clock is ahead, and not once it is right
    const applyAt = async (clock: number) =>
      (
        await applyOnce(
          {
            cacheDir: join(stateDir, 'cache'),
            log,
            now: () => clock,
            allowlist: ['sh'],
            enforceFiles: false,
            bootAt: now,
          },
          kept,
        )
      ).report;
    expect(await applyAt(now + 200 * DAY)).toMatchObject({ sequence: 1, expired: true });
    expect(await applyAt(now)).toMatchObject({ sequence: 1, expired: false });

    // a fresh release arrives; the clock is right again
    const m2 = await bundleFile(2);
    await importInto(data, m2.file, w.rootPath);
    expect((await pollAt(stateDir, mirror.url, now)).outcome).toMatchObject({ kind: 'updated', sequence: 2 });
    await mirror.stop();
  });

  it('refuses a fresh manifest as expired while its clock is ahead, and accepts it once the clock is right', async () => {
    const data = join(w.dir, 'ahead-first', 'mirror');
    const now = Date.now();
    await importInto(data, (await bundleFile(1)).file, w.rootPath);
    const mirror = await startMirrorAt(data, 0, OPEN_ENROLMENT);
    const stateDir = await newAgent('ahead-first');
    const before = await readFile(join(stateDir, 'state.json'), 'utf8');

    expect((await pollAt(stateDir, mirror.url, now + 200 * DAY)).outcome).toMatchObject({
      kind: 'refused',
      code: 'MANIFEST_EXPIRED',
    });
    const after = JSON.parse(await readFile(join(stateDir, 'state.json'), 'utf8')) as AgentState;
    const was = JSON.parse(before) as AgentState;
    expect({ trust: after.trust, active: after.active, roots: after.roots }).toEqual({
      trust: was.trust,
      active: was.active,
      roots: was.roots,
    });
    expect(await snapshotDir(join(stateDir, 'cache'))).toEqual({});

    expect((await pollAt(stateDir, mirror.url, now)).outcome).toMatchObject({ kind: 'updated', sequence: 1 });
    await mirror.stop();
  });
});

describe('mirror: time memory in state.json', () => {
  it('with its clock set back, refuses a bundle already expired by signed time it saw, and changes nothing', async () => {
    const now = Date.now();
    const dir = join(w.dir, 'mirror-clock');
    const rootBytes = await readFile(w.rootPath);
    const first = await Store.open(dir, { init: { rootBytes, site: 'plant-7' }, now: () => now });
    const fresh = await bundleFile(1);
    expect(await importBundle(first, fresh.file)).toMatchObject({ ok: true, status: 'active' });
    const remembered = (await first.readState()).signedTime;
    expect(remembered).toBe(Date.parse(fresh.manifest.created));

    // made 20 days ago, valid for 10: expired 10 days ago
    const stale = await bundleFile(2, { now: now - 20 * DAY, expires: '10d' });
    // the mirror restarts with its clock 15 days behind: by that clock the stale bundle looks fresh
    const behind = await Store.open(dir, { now: () => now - 15 * DAY });
    const before = await storeView(dir);
    const r = await importBundle(behind, stale.file);
    expect(r).toMatchObject({ ok: false, code: 'MANIFEST_EXPIRED' });
    expect(!r.ok && r.message).toMatch(/local clock is behind signed time/);
    expect(await storeView(dir)).toEqual(before);
    expect((await behind.readState()).quarantine.at(-1)).toMatchObject({ code: 'MANIFEST_EXPIRED' });
  });
});

describe('an expired trust root authorises nothing', () => {
  it('is refused with ROOT_EXPIRED by ferry agent poll, ferry mirror import and ferry bundle verify, and nothing changes', async () => {
    const dir = join(w.dir, 'short-root');
    await mkdir(dir, { recursive: true });
    const lifeMs = 20_000;
    const expires = isoUtc(Date.now() + lifeMs);
    const rootPath = join(dir, 'root.json');
    await writeFile(
      rootPath,
      serializeEnvelope(makeRootEnvelope({ rootKeys: [w.rootKey], bundleKeys: [w.bundleKey], expires })),
    );
    const data = join(dir, 'mirror');
    const agent = join(dir, 'agent');
    const pollArgs = (url: string) => [
      'agent',
      'poll',
      '--now',
      '--state',
      agent,
      '--mirror',
      url,
      '--trust',
      rootPath,
      '--site',
      'plant-7',
      '--json',
    ];

    // while the root is valid: the mirror takes release 1 and the agent applies it
    await importInto(data, (await bundleFile(1, { dir })).file, rootPath);
    const mirror = await startMirrorAt(data, 0, OPEN_ENROLMENT);
    const first = await ferry(pollArgs(mirror.url));
    expect(first.code, first.stdout + first.stderr).toBe(0);
    expect(JSON.parse(first.stdout)).toMatchObject({ sequence: 1 });
    const next = await bundleFile(2, { dir });
    const wait = Date.parse(expires) - Date.now();
    expect(wait, 'the set-up took longer than the root lives').toBeGreaterThan(0);
    await sleep(wait + 100);

    // agent: nothing new is served (304), yet the root everything it runs was judged under has expired
    const agentState = async () => {
      const s = (await readAgentState(agent))!;
      return {
        trust: s.trust,
        active: s.active,
        roots: s.roots,
        cache: await snapshotDir(join(agent, 'cache')).catch(() => ({})),
      };
    };
    const agentBefore = await agentState();
    const polled = await ferry(pollArgs(mirror.url));
    expect(polled.code).toBe(1);
    expect(JSON.parse(polled.stdout)).toMatchObject({ ok: false, code: 'ROOT_EXPIRED', sequence: 1 });
    expect(await agentState()).toEqual(agentBefore);

    // mirror import: refused before a blob is kept
    const before = await storeView(data);
    const imported = await ferry(['mirror', 'import', next.file, '--data', data, '--json']);
    expect(imported.code).toBe(1);
    expect(JSON.parse(imported.stdout)).toMatchObject({ ok: false, results: [{ code: 'ROOT_EXPIRED' }] });
    expect(await storeView(data)).toEqual(before);

    // bundle verify
    const verified = await ferry(['bundle', 'verify', next.file, '--trust', rootPath, '--json']);
    expect(verified.code).toBe(1);
    expect(verified.stdout + verified.stderr).toMatch(/ROOT_EXPIRED/);
    await mirror.stop();
  });
});
