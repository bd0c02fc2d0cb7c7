/**
 * The offline kit as a site admin uses it: `npm run kit` (scripts/build-kit.mjs, signed here with the test
 * world's bundle key under its root), unpacked and installed into a temporary root by its install.sh with a
 * PATH that has no `node`; then the installed `ferry --version`, a mirror importing and serving from the
 * installed files and an agent enrolling from them; `systemd-analyze verify` on every unit; the .deb read by
 * `dpkg-deb --info/--contents` and installed with `dpkg --root`. A tampered or unlisted file, another root
 * and a list signed by a stranger are refused before anything is installed.
 */
import { execFileSync, spawn } from 'node:child_process';
import { appendFile, cp, mkdir, readFile, readlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { serializeEnvelope, signEnvelope } from '../core/dsse.js';
import { rootFingerprint } from '../core/root.js';
import { buildBundle, makeKey, REPO, snapshotDir } from './helpers/fixtures.js';
import { followLogs, listTree, sha256File, type FerryChild } from './helpers/mirror-proc.js';
import { haveProgram } from './helpers/system.js';
import { makeToolbox } from './helpers/install-world.js';
import { useWorld } from './helpers/world.js';

const ready =
  haveProgram('openssl') && haveProgram('dash') && haveProgram('dpkg-deb') && haveProgram('systemd-analyze');
const w = useWorld();
const VERSION = (JSON.parse(await readFile(join(REPO, 'package.json'), 'utf8')) as { version: string })
  .version;
const KIT = `ferry-kit-${VERSION}-linux-x64`;
let out: string;
let unpacked: string;
let fingerprint: string;
let tools: { bin: string; systemctlLog: string };

function sh(cmd: string, args: string[], env: NodeJS.ProcessEnv = { PATH: tools.bin }) {
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
    const c = spawn(cmd, args, {
      env: { HOME: w.dir, TMPDIR: w.dir, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('error', reject);
    c.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

beforeAll(async () => {
  if (!ready) return;
  out = join(w.dir, 'kit-out');
  execFileSync(
    process.execPath,
    [
      join(REPO, 'scripts/build-kit.mjs'),
      '--out-dir',
      out,
      '--key',
      join(w.keyDir, 'release.key'),
      '--root',
      w.rootPath,
    ],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  unpacked = join(w.dir, 'unpacked');
  await mkdir(unpacked);
  execFileSync('tar', ['-xzf', join(out, `${KIT}.tar.gz`), '-C', unpacked]);
  fingerprint = rootFingerprint(await readFile(w.rootPath));
  tools = await makeToolbox(join(w.dir, 'toolbox'));
}, 300_000);

/** A copy of the unpacked kit to spoil. */
async function kitCopy(name: string): Promise<string> {
  const dir = join(w.dir, 'copies', name);
  await cp(join(unpacked, KIT), dir, { recursive: true });
  return dir;
}

async function install(kit: string, root: string, sha = fingerprint) {
  return sh('dash', [join(kit, 'install.sh'), '--root-sha256', sha, '--root', root]);
}

describe.skipIf(!ready)('the offline kit', () => {
  let root: string;

  it('installs into a root with no node on PATH; the installed ferry runs on its private runtime', async () => {
    root = join(w.dir, 'site-root');
    const r = await install(join(unpacked, KIT), root);
    expect(r.stderr).toContain('the list is signed by 1 of 1 bundle key(s)');
    expect(r.code).toBe(0);
    const v = await sh(join(root, 'opt/ferry/bin/ferry'), ['--version']);
    expect(v.code).toBe(0);
    expect(v.stdout.trim()).toBe(VERSION);
    expect(await sha256File(join(root, 'opt/ferry/runtime/current/bin/node'))).toBe(
      await sha256File(process.execPath),
    );
    expect(await readlink(join(root, 'opt/ferry/current'))).toBe(`versions/${VERSION}`);
    for (const u of ['mirror', 'server', 'agent'])
      expect(await readFile(join(root, `etc/systemd/system/ferry-${u}.service`), 'utf8')).toBe(
        await readFile(join(REPO, `systemd/ferry-${u}.service`), 'utf8'),
      );
    const runtime = JSON.parse(await readFile(join(unpacked, KIT, 'runtime/RUNTIME.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    expect(runtime).toMatchObject({
      node: process.version,
      binarySha256: await sha256File(process.execPath),
    });
  }, 240_000);

  it('the installed mirror imports and serves, and the installed agent enrols with a token', async () => {
    const ferryBin = join(root, 'opt/ferry/bin/ferry');
    const data = join(w.dir, 'kit-mirror');
    const bundle = join(w.dir, 'kit-site.ferry');
    await buildBundle(w, bundle);
    const trust = join(root, 'etc/ferry/root.json');
    const imp = await sh(ferryBin, [
      'mirror',
      'import',
      bundle,
      '--data',
      data,
      '--trust',
      trust,
      '--site',
      'plant-7',
    ]);
    expect(imp.stderr + imp.stdout).not.toMatch(/crypto.fallback/);
    expect(imp.code).toBe(0);
    const child = spawn(ferryBin, ['mirror', 'serve', '--data', data, '--listen', '127.0.0.1:0'], {
      env: { PATH: tools.bin, HOME: w.dir },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let so = '';
    let se = '';
    child.stdout.on('data', (d: Buffer) => (so += d.toString()));
    child.stderr.on('data', (d: Buffer) => (se += d.toString()));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) =>
      child.on('close', (code, signal) => res({ code, signal })),
    );
    const fc: FerryChild = { child, exited, stdout: () => so, stderr: () => se };
    const mirror = followLogs(fc, 'kit mirror');
    try {
      const started = await mirror.waitForLog((l) => l.event === 'mirror.started');
      const url = String(started.url);
      // sodium-native's prebuilt addon travels beside the bundle and loads: no fallback to node:crypto
      expect(se + so).not.toContain('crypto.fallback');
      const tok = await sh(ferryBin, ['mirror', 'token', 'create', '--data', data, '--ttl', '1h', '--json']);
      expect(tok.code).toBe(0);
      const token = (JSON.parse(tok.stdout) as { token: string }).token;
      const state = join(root, 'var/lib/ferry/agent');
      const agentPath = `${join(root, 'opt/ferry/runtime/current/bin')}:${tools.bin}`;
      const poll = await sh(
        join(root, 'opt/ferry/current/ferry-agent'),
        [
          'poll',
          '--now',
          '--state',
          state,
          '--mirror',
          url,
          '--trust',
          trust,
          '--site',
          'plant-7',
          '--token',
          token,
          '--json',
        ],
        { PATH: agentPath },
      );
      expect(poll.code).toBe(0);
      const st = await sh(
        join(root, 'opt/ferry/current/ferry-agent'),
        ['status', '--state', state, '--json'],
        {
          PATH: agentPath,
        },
      );
      expect((JSON.parse(st.stdout) as { agentId: string | null }).agentId).toMatch(/\S/);
    } finally {
      child.kill('SIGTERM');
      await exited;
    }
  }, 120_000);

  it('systemd-analyze verify passes on every unit, with ExecStart resolved in the installed tree', async () => {
    const dir = join(w.dir, 'verify');
    await mkdir(dir, { recursive: true });
    const units = ['mirror', 'server', 'agent'].map((u) => `ferry-${u}.service`);
    for (const u of units) {
      const text = await readFile(join(root, 'etc/systemd/system', u), 'utf8');
      await writeFile(
        join(dir, u),
        text
          .replaceAll('/opt/ferry', join(root, 'opt/ferry'))
          .replaceAll('/etc/ferry', join(root, 'etc/ferry')),
      );
    }
    const r = await sh('systemd-analyze', ['verify', ...units.map((u) => join(dir, u))], {
      PATH: process.env.PATH,
    });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const mirrorUnit = await readFile(join(dir, 'ferry-mirror.service'), 'utf8');
    for (const d of ['ProtectSystem=strict', 'NoNewPrivileges=yes', 'PrivateTmp=yes', 'Restart=on-failure'])
      expect(mirrorUnit).toContain(d);
  }, 60_000);

  it('the .deb: dpkg-deb --info/--contents, and dpkg --root installs a ferry that runs', async () => {
    const deb = join(out, `ferry_${VERSION}_amd64.deb`);
    const env = { PATH: process.env.PATH };
    const info = await sh('dpkg-deb', ['--info', deb], env);
    expect(info.code).toBe(0);
    expect(info.stdout).toMatch(/Package: ferry/);
    expect(info.stdout).toContain(`Version: ${VERSION}`);
    const contents = await sh('dpkg-deb', ['--contents', deb], env);
    expect(contents.stdout).toContain('./opt/ferry/lib/ferry.mjs');
    expect(contents.stdout).toContain('./etc/systemd/system/ferry-agent.service');
    const dr = join(w.dir, 'dpkg-root');
    await mkdir(join(dr, 'var/lib/dpkg/info'), { recursive: true });
    await mkdir(join(dr, 'var/lib/dpkg/updates'), { recursive: true });
    await writeFile(join(dr, 'var/lib/dpkg/status'), '');
    const i = await sh(
      'dpkg',
      ['--root', dr, '--force-depends', '--force-not-root', '--force-script-chrootless', '-i', deb],
      env,
    );
    expect(i.code).toBe(0);
    const v = await sh(join(dr, 'opt/ferry/bin/ferry'), ['--version']);
    expect(v.stdout.trim()).toBe(VERSION);
  }, 120_000);
});

describe.skipIf(!ready)('the kit refuses, before installing anything', () => {
  async function refused(kit: string, code: string, sha = fingerprint) {
    const root = join(w.dir, 'refused', code + Math.random().toString(36).slice(2));
    await mkdir(join(root, 'etc'), { recursive: true });
    await writeFile(join(root, 'etc/hostname'), 'node\n');
    const files = await snapshotDir(root);
    const tree = await listTree(root);
    const r = await install(kit, root, sha);
    expect(r.stderr).toContain(`REFUSED ${code}`);
    expect(r.code).toBe(1);
    expect(await snapshotDir(root)).toEqual(files);
    expect(await listTree(root)).toEqual(tree);
    return r.stderr;
  }

  it('a file changed after signing (one byte of the CLI bundle)', async () => {
    const kit = await kitCopy('tampered');
    const f = join(kit, 'lib/ferry.mjs');
    const b = await readFile(f);
    b.writeUInt8(b.readUInt8(100) ^ 1, 100);
    await writeFile(f, b);
    expect(await refused(kit, 'KIT_TAMPERED')).toContain('lib/ferry.mjs');
  }, 120_000);

  it('a file the signed list does not name', async () => {
    const kit = await kitCopy('extra');
    await appendFile(join(kit, 'lib/backdoor.mjs'), 'console.log(1)\n');
    expect(await refused(kit, 'KIT_TAMPERED')).toContain('lib/backdoor.mjs');
  }, 120_000);

  it('a kit under another root than the fingerprint given', async () => {
    const kit = await kitCopy('other-root');
    expect(await refused(kit, 'ROOT_MISMATCH', 'cd'.repeat(32))).toContain('not the');
  }, 120_000);

  it('a list re-signed by a key the root does not name', async () => {
    const kit = await kitCopy('stranger');
    const env = JSON.parse(await readFile(join(kit, 'kit.dsse.json'), 'utf8')) as {
      payload: string;
      payloadType: string;
    };
    const stranger = await makeKey(join(w.dir, 'stranger'), 'stranger');
    await writeFile(
      join(kit, 'kit.dsse.json'),
      serializeEnvelope(signEnvelope(env.payloadType, Buffer.from(env.payload, 'base64'), [stranger])),
    );
    await refused(kit, 'KIT_SIGNATURE');
  }, 120_000);
});
