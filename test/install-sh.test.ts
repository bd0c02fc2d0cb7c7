/**
 * `curl -fsSL http://MIRROR/install.sh | sh -s -- --token T --root-sha256 F`, run as an admin would on a
 * node whose PATH has no `node`: against the real mirror it installs the agent, its private runtime and the
 * unit, enrols and starts the service; against a hostile mirror (a Koa server on loopback that serves the
 * genuine script but another root, a tampered agent or runtime, or a manifest without enough signatures) it
 * refuses before anything is written to the target root.
 */
import { spawn } from 'node:child_process';
import { mkdir, readFile, readlink, writeFile } from 'node:fs/promises';
import type { Server } from 'node:http';
import { join } from 'node:path';
import Koa from 'koa';
import { beforeAll, describe, expect, it } from 'vitest';
import { serializeEnvelope, signEnvelope, type Envelope, type Signer } from '../core/dsse.js';
import { MANIFEST_PAYLOAD_TYPE } from '../core/manifest.js';
import { rootFingerprint } from '../core/root.js';
import { makeKey, makeRootEnvelope, REPO, snapshotDir } from './helpers/fixtures.js';
import { agentStatus } from './helpers/agent-proc.js';
import { listTree, sha256File } from './helpers/mirror-proc.js';
import { useWorld } from './helpers/world.js';
import { haveProgram } from './helpers/system.js';
import {
  AGENT_VERSION,
  buildNodeArtifacts,
  makeToolbox,
  startInstallSite,
  type InstallSite,
} from './helpers/install-world.js';

const ready = haveProgram('openssl') && haveProgram('curl') && haveProgram('dash');
const w = useWorld();
let site: InstallSite;
let toolbox: { bin: string; systemctlLog: string };
let fingerprint: string;

beforeAll(async () => {
  if (!ready) return;
  const art = await buildNodeArtifacts(w.dir);
  site = await startInstallSite(w, art);
  toolbox = await makeToolbox(join(w.dir, 'toolbox'));
  fingerprint = rootFingerprint(await readFile(w.rootPath));
}, 180_000);

interface Outcome {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** `curl -fsSL URL/install.sh | dash -s -- ARGS` with the toolbox as the whole PATH. */
function installFrom(url: string, args: string[]): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const c = spawn('dash', ['-c', `curl -fsSL ${url}/install.sh | dash -s -- "$@"`, 'install', ...args], {
      env: { PATH: toolbox.bin, HOME: w.dir, TMPDIR: w.dir },
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

/** A target root with something already in it, so "nothing changed" has something to compare. */
async function targetRoot(name: string): Promise<string> {
  const r = join(w.dir, 'targets', name);
  await mkdir(join(r, 'etc'), { recursive: true });
  await writeFile(join(r, 'etc', 'hostname'), `${name}\n`);
  return r;
}

describe.skipIf(!ready)('install.sh from the real mirror', () => {
  it('installs agent, runtime and unit, enrols with the token and starts the service; node is not on PATH', async () => {
    expect(await readFile(join(toolbox.bin, 'systemctl'), 'utf8')).toContain('stands in');
    await expect(readlink(join(toolbox.bin, 'node'))).rejects.toThrow();
    const root = await targetRoot('good');
    const token = await site.token();
    const r = await installFrom(site.mirror.url, [
      '--token',
      token,
      '--root-sha256',
      fingerprint,
      '--root',
      root,
    ]);
    expect(r.stderr).toContain('manifest verified: 1 of 1');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`ferry agent ${AGENT_VERSION} installed`);

    const opt = join(root, 'opt/ferry');
    expect(await readlink(join(opt, 'current'))).toBe(`versions/${AGENT_VERSION}`);
    expect(await sha256File(join(opt, 'runtime/current/bin/node'))).toBe(await sha256File(process.execPath));
    const unit = await readFile(join(root, 'etc/systemd/system/ferry-agent.service'), 'utf8');
    expect(unit).toBe(await readFile(join(REPO, 'systemd/ferry-agent.service'), 'utf8'));
    expect(unit).toContain('Environment=PATH=/opt/ferry/runtime/current/bin:');
    expect(await readFile(join(opt, 'prestart.sh'), 'utf8')).toBe(
      await readFile(join(REPO, 'systemd/ferry-agent-prestart.sh'), 'utf8'),
    );
    expect(await readFile(join(root, 'etc/ferry/root.json'))).toEqual(await readFile(w.rootPath));
    const conf = JSON.parse(await readFile(join(root, 'etc/ferry/agent.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    expect(conf).toMatchObject({
      state: '/var/lib/ferry/agent',
      mirrors: [site.mirror.url],
      site: 'plant-7',
    });
    expect(JSON.stringify(conf)).not.toContain(token); // the token is used once and never stored
    expect((await snapshotDir(root))['etc/hostname']).toBeDefined();

    const status = await agentStatus(join(root, 'var/lib/ferry/agent'));
    expect(status.agentId).toMatch(/\S/);
    expect(status.active?.sequence).toBe(1);
    expect((await readFile(toolbox.systemctlLog, 'utf8')).split('\n')).toEqual([
      'daemon-reload',
      'enable ferry-agent.service',
      'restart ferry-agent.service',
      '',
    ]);
  }, 120_000);

  it('a second run on the installed, enrolled node changes nothing', async () => {
    const root = join(w.dir, 'targets', 'good');
    const files = await snapshotDir(root);
    const tree = await listTree(root);
    const log = await readFile(toolbox.systemctlLog, 'utf8');
    const token = await site.token();
    const r = await installFrom(site.mirror.url, [
      '--token',
      token,
      '--root-sha256',
      fingerprint,
      '--root',
      root,
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`ferry agent ${AGENT_VERSION} unchanged`);
    expect(await snapshotDir(root)).toEqual(files);
    expect(await listTree(root)).toEqual(tree);
    expect(await readFile(toolbox.systemctlLog, 'utf8')).toBe(log);
  }, 120_000);

  it('a wrong fingerprint is refused before anything is installed', async () => {
    const root = await targetRoot('typo');
    const before = await listTree(root);
    const r = await installFrom(site.mirror.url, [
      '--token',
      'x',
      '--root-sha256',
      'ab'.repeat(32),
      '--root',
      root,
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('REFUSED ROOT_MISMATCH');
    expect(await listTree(root)).toEqual(before);
  }, 60_000);

  it('usage errors exit 2: no token, a fingerprint that is not 64 hex digits', async () => {
    const a = await installFrom(site.mirror.url, ['--root-sha256', fingerprint]);
    expect(a.code).toBe(2);
    const b = await installFrom(site.mirror.url, ['--token', 't', '--root-sha256', 'xyz']);
    expect(b.code).toBe(2);
  }, 60_000);
});

/** A mirror that serves what `override` says for a path, and relays everything else from the real one. */
async function hostileMirror(
  real: string,
  override: Record<string, Buffer | string>,
): Promise<{ url: string; close: () => Promise<void> }> {
  const app = new Koa();
  app.use(async (ctx) => {
    const own = override[ctx.path];
    if (own !== undefined) {
      ctx.body = typeof own === 'string' ? Buffer.from(own) : own;
      return;
    }
    const res = await fetch(new URL(ctx.path, real));
    ctx.status = res.status;
    ctx.body = Buffer.from(await res.arrayBuffer());
  });
  const server: Server = await new Promise((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

async function realBytes(path: string): Promise<Buffer> {
  const res = await fetch(new URL(path, site.mirror.url));
  expect(res.status).toBe(200);
  return Buffer.from(await res.arrayBuffer());
}

async function manifestOf(): Promise<{ env: Envelope; artifacts: { name: string; sha256: string }[] }> {
  const env = JSON.parse((await realBytes('/v1/manifest')).toString('utf8')) as Envelope;
  const m = JSON.parse(Buffer.from(env.payload, 'base64').toString('utf8')) as {
    artifacts: { name: string; sha256: string }[];
  };
  return { env, artifacts: m.artifacts };
}

function resign(payload: Buffer, signers: Signer[]): string {
  return serializeEnvelope(signEnvelope(MANIFEST_PAYLOAD_TYPE, payload, signers));
}

/** Runs install.sh against the hostile mirror and proves the target root is untouched. */
async function refusedBy(
  name: string,
  override: Record<string, Buffer | string>,
  code: string,
  rootSha = fingerprint,
): Promise<string> {
  const hostile = await hostileMirror(site.mirror.url, override);
  try {
    const root = await targetRoot(name);
    const files = await snapshotDir(root);
    const tree = await listTree(root);
    const logBefore = await readFile(toolbox.systemctlLog, 'utf8').catch(() => '');
    const token = await site.token();
    // the script names the mirror that served it, as a hostile mirror's own script would
    const r = await installFrom(hostile.url, [
      '--mirror',
      hostile.url,
      '--token',
      token,
      '--root-sha256',
      rootSha,
      '--root',
      root,
    ]);
    expect(r.stderr).toContain(`REFUSED ${code}`);
    expect(r.code).toBe(1);
    expect(await snapshotDir(root)).toEqual(files);
    expect(await listTree(root)).toEqual(tree);
    expect(await readFile(toolbox.systemctlLog, 'utf8').catch(() => '')).toBe(logBefore);
    return r.stderr;
  } finally {
    await hostile.close();
  }
}

describe.skipIf(!ready)('install.sh against a hostile mirror', () => {
  it('a different root (other keys, same shape) is refused: its fingerprint is not the one typed', async () => {
    const k = await makeKey(join(w.dir, 'evil'), 'evil');
    const evilRoot = serializeEnvelope(makeRootEnvelope({ rootKeys: [k], bundleKeys: [k] }));
    const { env } = await manifestOf();
    const payload = Buffer.from(env.payload, 'base64');
    await refusedBy(
      'other-root',
      { '/install/root.json': evilRoot, '/v1/manifest': resign(payload, [k]) },
      'ROOT_MISMATCH',
    );
  }, 60_000);

  it('a tampered agent (one byte changed, same size) is refused by its signed sha256', async () => {
    const { artifacts } = await manifestOf();
    const agent = artifacts.find((a) => a.name === 'ferry-agent')!;
    const bytes = await realBytes(`/v1/blobs/sha256/${agent.sha256}`);
    bytes.writeUInt8(bytes.readUInt8(bytes.length - 2) ^ 1, bytes.length - 2);
    const err = await refusedBy(
      'bad-agent',
      { [`/v1/blobs/sha256/${agent.sha256}`]: bytes },
      'ARTIFACT_MISMATCH',
    );
    expect(err).toContain('ferry-agent: its sha256 is not the signed');
  }, 60_000);

  it('a tampered runtime is refused by its signed sha256', async () => {
    const { artifacts } = await manifestOf();
    const rt = artifacts.find((a) => a.name === 'ferry-runtime-linux-x64')!;
    const bytes = await realBytes(`/v1/blobs/sha256/${rt.sha256}`);
    bytes.writeUInt8(bytes.readUInt8(1000) ^ 0x40, 1000);
    const err = await refusedBy(
      'bad-runtime',
      { [`/v1/blobs/sha256/${rt.sha256}`]: bytes },
      'ARTIFACT_MISMATCH',
    );
    expect(err).toContain('ferry-runtime-linux-x64: its sha256');
  }, 60_000);

  it('a runtime with extra bytes is refused by its signed size', async () => {
    const { artifacts } = await manifestOf();
    const rt = artifacts.find((a) => a.name === 'ferry-runtime-linux-x64')!;
    const bytes = Buffer.concat([await realBytes(`/v1/blobs/sha256/${rt.sha256}`), Buffer.from('!')]);
    await refusedBy('long-runtime', { [`/v1/blobs/sha256/${rt.sha256}`]: bytes }, 'TOO_LARGE');
  }, 60_000);

  it('an unsigned manifest is refused', async () => {
    const { env } = await manifestOf();
    const unsigned = JSON.stringify({ payloadType: env.payloadType, payload: env.payload, signatures: [] });
    await refusedBy('unsigned', { '/v1/manifest': unsigned }, 'MANIFEST_SIGNATURE');
  }, 60_000);

  it('a manifest changed after signing (its real signature kept) is refused', async () => {
    const { env } = await manifestOf();
    const m = JSON.parse(Buffer.from(env.payload, 'base64').toString('utf8')) as {
      artifacts: { sha256: string }[];
    };
    m.artifacts[0]!.sha256 = 'f'.repeat(64);
    const forged = JSON.stringify({ ...env, payload: Buffer.from(JSON.stringify(m)).toString('base64') });
    await refusedBy('forged', { '/v1/manifest': forged }, 'MANIFEST_SIGNATURE');
  }, 60_000);

  it('a manifest signed by a key the root does not name is refused', async () => {
    const k = await makeKey(join(w.dir, 'evil2'), 'stranger');
    const { env } = await manifestOf();
    await refusedBy(
      'stranger',
      { '/v1/manifest': resign(Buffer.from(env.payload, 'base64'), [k]) },
      'MANIFEST_SIGNATURE',
    );
  }, 60_000);

  it('below the threshold: a 2-of-2 root, one key signing twice, is refused', async () => {
    const second = await makeKey(join(w.dir, 'k2'), 'second');
    const root2 = serializeEnvelope(
      makeRootEnvelope({ rootKeys: [w.rootKey], bundleKeys: [w.bundleKey, second], bundleThreshold: 2 }),
    );
    const { env } = await manifestOf();
    const twice = JSON.stringify({ ...env, signatures: [env.signatures[0], env.signatures[0]] });
    const err = await refusedBy(
      'threshold',
      { '/install/root.json': root2, '/v1/manifest': twice },
      'MANIFEST_SIGNATURE',
      rootFingerprint(root2),
    );
    expect(err).toContain('signed by 1 bundle key(s) of this root; it needs 2');
  }, 60_000);
});
