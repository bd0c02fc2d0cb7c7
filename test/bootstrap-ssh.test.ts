/**
 * `ferry bootstrap ssh` against a real OpenSSH server on loopback: sshd on a free high port with its own
 * host key, an authorised test key, and a PATH (sshd_config SetEnv) whose `systemctl` is a stand-in that
 * records what it was asked and which has no `node`. The install goes into a temporary root on that host.
 * A wrong or unknown host key is refused before any command runs; a second run changes nothing.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rootFingerprint } from '../core/root.js';
import { ferry, snapshotDir } from './helpers/fixtures.js';
import { agentStatus } from './helpers/agent-proc.js';
import { listTree } from './helpers/mirror-proc.js';
import { haveProgram } from './helpers/system.js';
import {
  AGENT_VERSION,
  buildNodeArtifacts,
  makeToolbox,
  startInstallSite,
  type InstallSite,
} from './helpers/install-world.js';
import { useWorld } from './helpers/world.js';

const SSHD = '/usr/sbin/sshd';
const ready = haveProgram('ssh-keygen') && haveProgram(SSHD) && haveProgram('openssl') && haveProgram('curl');
const w = useWorld();
let sshd: ChildProcess | undefined;
let port: number;
let site: InstallSite;
let tools: { bin: string; systemctlLog: string };
let dir: string;
let fingerprint: string;
let hostKeyFp: string;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

beforeAll(async () => {
  if (!ready) return;
  dir = join(w.dir, 'ssh');
  await mkdir(dir, { recursive: true });
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'host_key')]);
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'id')]);
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'other_host_key')]);
  await writeFile(join(dir, 'authorized_keys'), await readFile(join(dir, 'id.pub')));
  hostKeyFp = execFileSync('ssh-keygen', ['-lf', join(dir, 'host_key.pub')], { encoding: 'utf8' }).split(
    ' ',
  )[1]!;
  tools = await makeToolbox(join(dir, 'toolbox'));
  const [art] = await Promise.all([buildNodeArtifacts(w.dir), mkdir('/run/sshd', { recursive: true })]);
  site = await startInstallSite(w, art);
  fingerprint = rootFingerprint(await readFile(w.rootPath));
  port = await freePort();
  await writeFile(
    join(dir, 'sshd_config'),
    [
      `Port ${port}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${join(dir, 'host_key')}`,
      `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
      `PidFile ${join(dir, 'sshd.pid')}`,
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'PermitRootLogin prohibit-password',
      'StrictModes no',
      'UsePAM no',
      `SetEnv PATH=${tools.bin} TMPDIR=${w.dir}`,
      '',
    ].join('\n'),
  );
  sshd = spawn(SSHD, ['-D', '-e', '-f', join(dir, 'sshd_config')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  await new Promise<void>((resolve, reject) => {
    sshd!.stderr!.on('data', (d: Buffer) => {
      log += d.toString();
      if (log.includes('Server listening')) resolve();
    });
    sshd!.once('exit', (c) => reject(new Error(`sshd exited ${c}: ${log}`)));
  });
}, 180_000);

afterAll(() => {
  sshd?.kill('SIGTERM');
});

const user = () => execFileSync('id', ['-un'], { encoding: 'utf8' }).trim();

async function bootstrap(root: string, hostKeys: string[], extra: string[] = []) {
  const token = await site.token();
  const r = await ferry([
    'bootstrap',
    'ssh',
    `${user()}@127.0.0.1`,
    '--port',
    String(port),
    '--identity',
    join(dir, 'id'),
    ...hostKeys,
    '--mirror',
    site.mirror.url,
    '--token',
    token,
    '--root-sha256',
    fingerprint,
    '--install-root',
    root,
    '--json',
    ...extra,
  ]);
  return { ...r, out: JSON.parse(r.stdout) as { ok: boolean; hosts: Record<string, unknown>[] } };
}

async function knownHosts(name: string, keyFile: string): Promise<string> {
  const path = join(dir, name);
  const [type, key] = (await readFile(keyFile, 'utf8')).split(' ');
  await writeFile(path, `# test\n[127.0.0.1]:${port} ${type} ${key}\n`);
  return path;
}

describe.skipIf(!ready)('ferry bootstrap ssh against a real sshd', () => {
  it('a wrong host key is refused before any command runs', async () => {
    const root = join(w.dir, 'bs-wrong');
    await mkdir(join(root, 'etc'), { recursive: true });
    const before = await listTree(root);
    const kh = await knownHosts('kh-wrong', join(dir, 'other_host_key.pub'));
    const r = await bootstrap(root, ['--known-hosts', kh]);
    expect(r.code).toBe(1);
    expect(r.out.hosts[0]).toMatchObject({ ok: false, code: 'HOST_KEY_MISMATCH', hostKey: hostKeyFp });
    expect(await listTree(root)).toEqual(before);
    await expect(readFile(tools.systemctlLog, 'utf8')).rejects.toThrow();
  }, 60_000);

  it('a host in no known_hosts and with no pinned fingerprint is refused too', async () => {
    const root = join(w.dir, 'bs-unknown');
    await mkdir(root, { recursive: true });
    await writeFile(join(dir, 'kh-empty'), '');
    const r = await bootstrap(root, ['--known-hosts', join(dir, 'kh-empty')]);
    expect(r.code).toBe(1);
    expect(r.out.hosts[0]).toMatchObject({ ok: false, code: 'HOST_KEY_UNKNOWN' });
    expect(await listTree(root)).toEqual([]);
  }, 60_000);

  it('installs, enrols and starts the agent on a host in known_hosts; a second run changes nothing', async () => {
    const root = join(w.dir, 'bs-good');
    await mkdir(root, { recursive: true });
    const kh = await knownHosts('kh-good', join(dir, 'host_key.pub'));
    const r = await bootstrap(root, ['--known-hosts', kh]);
    expect(r.out.hosts[0], r.stdout).toMatchObject({
      ok: true,
      outcome: 'installed',
      platform: 'linux-x64',
      agentVersion: AGENT_VERSION,
    });
    expect(r.code).toBe(0);
    expect((await agentStatus(join(root, 'var/lib/ferry/agent'))).agentId).toMatch(/\S/);
    expect(await readFile(join(root, 'etc/systemd/system/ferry-agent.service'), 'utf8')).toContain(
      'ExecStart=',
    );
    const calls = await readFile(tools.systemctlLog, 'utf8');
    expect(calls.split('\n')).toEqual([
      'daemon-reload',
      'enable ferry-agent.service',
      'restart ferry-agent.service',
      '',
    ]);

    const files = await snapshotDir(root);
    const again = await bootstrap(root, ['--host-key', hostKeyFp, '--known-hosts', join(dir, 'kh-empty')]);
    expect(again.out.hosts[0]).toMatchObject({ ok: true, outcome: 'unchanged' });
    expect(await snapshotDir(root)).toEqual(files);
    expect(await readFile(tools.systemctlLog, 'utf8')).toBe(calls);
  }, 180_000);

  it('a human table with one line per host', async () => {
    const root = join(w.dir, 'bs-good');
    const token = await site.token();
    const r = await ferry([
      'bootstrap',
      'ssh',
      `${user()}@127.0.0.1:${port}`,
      '--identity',
      join(dir, 'id'),
      '--host-key',
      hostKeyFp,
      '--mirror',
      site.mirror.url,
      '--token',
      token,
      '--root-sha256',
      fingerprint,
      '--install-root',
      root,
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout.split('\n')[0]).toMatch(/^HOST\s+RESULT\s+AGENT\s+DETAIL/);
    expect(r.stdout).toMatch(
      new RegExp(`@127\\.0\\.0\\.1:${port}\\s+unchanged\\s+${AGENT_VERSION.replace(/\./g, '\\.')}`),
    );
  }, 120_000);
});
