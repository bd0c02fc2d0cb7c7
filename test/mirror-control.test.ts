/**
 * The serving mirror's courier plumbing, with real processes: the control
 * socket with a data dir whose path is too long for a Unix socket address
 * (over 100 bytes) still reaches the serving process (through /proc/self/fd);
 * and the server key that acks are checked with, pinned at `serve` time.
 */
import { mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { enroll, loadOrCreateIdentity } from '../agent/identity.js';
import { signHeartbeat } from '../core/heartbeat.js';
import { importInto, makeToken, startMirrorAt } from './helpers/agent-proc.js';
import { buildBundle, snapshotDir } from './helpers/fixtures.js';
import { testHeartbeat } from './helpers/heartbeats.js';
import { followLogs, runFerry, spawnFerry } from './helpers/mirror-proc.js';
import { useWorld } from './helpers/world.js';

const w = useWorld();

describe('control socket', () => {
  it('serves the courier commands for a data dir with a path too long for a socket address', async () => {
    const data = join(w.dir, 'a-site-with-a-long-name'.repeat(4), 'var-lib-ferry-mirror-data');
    expect(Buffer.byteLength(join(data, 'control.sock'))).toBeGreaterThan(108);
    await mkdir(data, { recursive: true });
    const { volumes } = await buildBundle(w, join(w.dir, 'b.ferry'), {});
    await importInto(data, volumes[0]!.path, w.rootPath);
    const m = await startMirrorAt(data);
    expect(m.logs.filter((l) => l.event === 'control.unavailable')).toEqual([]);
    expect((await stat(join(data, 'control.sock'))).isSocket()).toBe(true);

    // one agent, one heartbeat: something to carry out
    const a = await loadOrCreateIdentity(join(w.dir, 'agent'));
    const { token } = await makeToken(data); // made by the serving mirror, over the socket
    await enroll(m.url, a, { hostname: 'n1', platform: 'linux/amd64', groups: [], token });
    const posted = await fetch(`${m.url}/v1/telemetry`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(signHeartbeat(testHeartbeat(a.agentId, 1), a.key)),
    });
    expect(posted.status).toBe(202);

    const status = await runFerry(['mirror', 'status', '--data', data, '--json']);
    expect(status.code, status.stderr).toBe(0);
    expect(JSON.parse(status.stdout)).toMatchObject({ telemetry: { serving: true, depth: 2 } }); // enrolment + heartbeat
    const out = join(w.dir, 'export.jsonl');
    const exported = await runFerry(['mirror', 'export-telemetry', '--data', data, '--out', out, '--json']);
    expect(exported.code, exported.stderr).toBe(0);
    expect(JSON.parse(exported.stdout)).toMatchObject({ ok: true, via: 'serve', number: 1, records: 2 });
    expect((await stat(out)).size).toBeGreaterThan(0);

    await m.stop('SIGTERM');
    await expect(stat(join(data, 'control.sock'))).rejects.toMatchObject({ code: 'ENOENT' });
    // with no mirror serving, the same command works on the data dir itself
    const local = await runFerry(['mirror', 'status', '--data', data, '--json']);
    expect(JSON.parse(local.stdout)).toMatchObject({ telemetry: { serving: false, depth: 2 } });
  });

  it('serve --server-key pins the key acks are checked with; a different key refuses the start and changes nothing', async () => {
    const data = join(w.dir, 'pinned');
    const { volumes } = await buildBundle(w, join(w.dir, 'p.ferry'), {});
    await importInto(data, volumes[0]!.path, w.rootPath);
    const ok = async (args: string[]) => {
      const r = await runFerry(args);
      expect(r.code, r.stderr).toBe(0);
      return r.stdout;
    };
    await ok(['server', 'identity', '--data', join(w.dir, 'server'), '--out', join(w.dir, 'server.pub')]);
    const keyid = (
      JSON.parse(await ok(['server', 'identity', '--data', join(w.dir, 'server'), '--json'])) as {
        keyid: string;
      }
    ).keyid;
    await ok(['keys', 'generate', '--out', join(w.dir, 'other'), '--name', 'impostor']);

    const serve = (key: string) =>
      followLogs(
        spawnFerry(['mirror', 'serve', '--data', data, '--listen', '127.0.0.1:0', '--server-key', key]),
        'mirror',
      );
    let m = serve(join(w.dir, 'server.pub'));
    expect(await m.waitForLog((l) => l.event === 'mirror.started')).toMatchObject({ serverKey: keyid });
    expect(await ok(['mirror', 'status', '--data', data])).toContain(`acks checked with server key ${keyid}`);
    await m.stop('SIGTERM');

    const before = await snapshotDir(data);
    m = serve(join(w.dir, 'other', 'impostor.pub'));
    expect((await m.exited).code).toBe(1);
    expect(m.stderr()).toMatch(/SERVER_KEY_MISMATCH: .*is not the server key pinned in this data dir/);
    expect(await snapshotDir(data)).toEqual(before);

    m = serve(join(w.dir, 'server.pub')); // the same key again: fine
    await m.waitForLog((l) => l.event === 'mirror.started');
    await m.stop('SIGTERM');
  });
});
