/**
 * An agent on a full disk, for real: its state directory on a small tmpfs
 * (root needed; see test/helpers/tmpfs.ts), a real `ferry mirror serve`, one-shot
 * `ferry agent poll --now` and `ferry agent status` children. A release whose
 * managed file does not fit is refused with STORAGE_FULL before a byte of it
 * is written; the agent keeps applying its last verified release, records the
 * shortage (status, heartbeat drift), and takes the release once there is room.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, readdir, rm, stat, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { importInto, readTelemetry, startMirrorAt, OPEN_ENROLMENT } from './helpers/agent-proc.js';
import { buildBundle, snapshotDir } from './helpers/fixtures.js';
import { runFerry } from './helpers/mirror-proc.js';
import { mountTmpfs, resizeTmpfs, tmpfsUnavailable, umount } from './helpers/tmpfs.js';
import { useWorld } from './helpers/world.js';

const w = useWorld();
const noTmpfs = tmpfsUnavailable('the agent full-disk test');
const MiB = 1024 * 1024;
let mounted: string | undefined;

afterAll(() => {
  if (mounted) umount(mounted);
});

interface Shortage {
  code: string;
  message: string;
  since: string;
}
interface StatusView {
  active: { sequence: number } | null;
  storage: { freeBytes: number | null; shortage: Shortage | null };
}

describe.skipIf(noTmpfs !== undefined)('an agent whose disk is too small for a release', () => {
  it('refuses it with STORAGE_FULL, keeps its last release applied, reports, and takes it once there is room', async () => {
    const dir = join(w.dir, 'full');
    const state = join(dir, 'agent');
    const conf = join(dir, 'app.conf');
    await mkdir(state, { recursive: true });
    mountTmpfs(state, '8m');
    mounted = state;

    const release = async (sequence: number, content: Buffer) => {
      const policy = {
        type: 'ferry.policy/v1',
        scripts: [],
        files: [{ path: conf, artifact: 'payload', mode: '0644', enforce: true }],
      };
      const b = await buildBundle(w, join(dir, `s${sequence}.ferry`), {
        spec: { sequence },
        artifacts: [
          { name: 'payload', kind: 'file', content },
          { name: 'baseline', kind: 'policy', content: JSON.stringify(policy) },
        ],
      });
      return { file: b.volumes[0]!.path, manifest: b.manifest };
    };
    const small = randomBytes(64 * 1024);
    const big = randomBytes(10 * MiB); // more than the whole 8 MiB disk
    const r1 = await release(1, small);
    const r2 = await release(2, big);
    const data = join(dir, 'mirror');
    await importInto(data, r1.file, w.rootPath);
    const mirror = await startMirrorAt(data, 0, OPEN_ENROLMENT);
    const env = { FERRY_AGENT_HTTP_LIMITS: JSON.stringify({ reserveBytes: MiB }) };
    const poll = async () => {
      const r = await runFerry(
        [
          'agent',
          'poll',
          '--now',
          '--json',
          ...['--state', state, '--trust', w.rootPath, '--site', 'plant-7', '--mirror', mirror.url],
        ],
        env,
      );
      return { ...r, out: JSON.parse(r.stdout) as Record<string, unknown> };
    };
    const status = async () => {
      const r = await runFerry(['agent', 'status', '--state', state, '--json']);
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout) as StatusView;
    };
    try {
      const first = await poll();
      expect(first.code, first.stderr).toBe(0);
      expect(first.out).toMatchObject({ sync: { kind: 'updated', sequence: 1 } });
      expect((await readFile(conf)).equals(small)).toBe(true);
      expect((await status()).storage.shortage).toBeNull();
      // The running version is the one `current` points at under the install root.
      const install = join(state, '..', 'install');
      await mkdir(join(install, 'versions', '1.2.3'), { recursive: true });
      await symlink(join('versions', '1.2.3'), join(install, 'current'));
      const withRoot = await runFerry([
        'agent',
        'status',
        '--state',
        state,
        '--install-root',
        install,
        '--json',
      ]);
      expect(withRoot.code, withRoot.stderr).toBe(0);
      expect(JSON.parse(withRoot.stdout)).toMatchObject({ version: '1.2.3', update: null });
      expect(
        (await runFerry(['agent', 'status', '--state', state, '--install-root', install])).stdout,
      ).toContain('running: ferry-agent 1.2.3');

      await importInto(data, r2.file, w.rootPath);
      await rm(conf); // drift the last release's file: the agent must still restore it
      const cacheBefore = await snapshotDir(join(state, 'cache'));
      const refused = await poll();
      expect(refused.code, refused.stderr).toBe(1);
      expect(refused.out).toMatchObject({
        ok: false,
        code: 'STORAGE_FULL',
        sync: { kind: 'refused', code: 'STORAGE_FULL' },
        sequence: 1,
      });
      expect(String(refused.out.message)).toMatch(/^no room for sha256:[0-9a-f]{16}… \(10485760 bytes\)/);
      // still on release 1, and applying it: the drifted file is back with release 1's bytes
      expect((await readFile(conf)).equals(small)).toBe(true);
      const st = await status();
      expect(st.active?.sequence).toBe(1);
      expect(st.storage.shortage).toMatchObject({ code: 'STORAGE_FULL' });
      expect(st.storage.shortage!.message).toMatch(/no room for sha256:/);
      // nothing of the big file was written: no partial, no blob (both releases share one policy blob)
      expect(await readdir(join(state, 'cache', 'tmp'))).toEqual([]);
      expect(await snapshotDir(join(state, 'cache'))).toEqual(cacheBefore);
      // and the shortage went home in a heartbeat's drift
      const hb = (await readTelemetry(data)).find((h) =>
        h.payload.drift.some((d) => d.status === 'storage_full'),
      );
      expect(hb?.payload.drift).toContainEqual(
        expect.objectContaining({ status: 'storage_full', code: 'STORAGE_FULL', path: join(state, 'cache') }),
      );
      // the human view says it in one line
      const text = await runFerry(['agent', 'status', '--state', state]);
      expect(text.stdout).toMatch(/^storage: STORAGE_FULL since \S+: no room for sha256:/m);

      resizeTmpfs(state, '64m');
      const after = await poll();
      expect(after.code, after.stderr).toBe(0);
      expect(after.out).toMatchObject({ sync: { kind: 'updated', sequence: 2 } });
      expect((await stat(conf)).size).toBe(big.length);
      expect((await status()).storage.shortage).toBeNull();
    } finally {
      await mirror.stop();
    }
  });
});
