/**
 * The site's last known inventory on the server, and the site's next bundle as the delta it lacks.
 * A mirror's courier export carries its signed inventory; `ferry server import-telemetry` checks it
 * against the registered mirror's key and site and keeps the newest per site; `ferry server bundle`
 * then leaves out every blob it lists (or those of `--have`), reports bytes written against the full
 * bundle, and splits into volumes where asked. Real `ferry` processes; every refusal changes nothing.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serializeEnvelope } from '../core/dsse.js';
import { signInventory, type InventoryPayload } from '../core/inventory.js';
import { loadPrivateKey } from '../platform/keyfile.js';
import { ferry, snapshotDir, storeView, tempDir, type RunResult } from './helpers/fixtures.js';
import { useWorld } from './helpers/world.js';

const w = useWorld();
let dir: string;
let cleanup: () => Promise<void>;
let server: string;
let mirror: string;
let exportFile: string;

const ok = async (args: string[]): Promise<RunResult> => {
  const r = await ferry(args);
  expect(r.code, r.stdout + r.stderr).toBe(0);
  return r;
};
const json = async <T = Record<string, unknown>>(args: string[]): Promise<T> =>
  JSON.parse((await ok([...args, '--json'])).stdout) as T;
const refused = async (args: string[], code: RegExp): Promise<void> => {
  const before = await snapshotDir(server);
  const r = await ferry(args);
  expect(r.code, r.stdout + r.stderr).toBe(1);
  expect(r.stderr).toMatch(code);
  expect(await snapshotDir(server)).toEqual(before);
};

async function release(version: string, agentFill: number): Promise<void> {
  const d = join(dir, `rel-${version}`);
  await mkdir(d, { recursive: true });
  await writeFile(join(d, 'ferry-agent'), Buffer.alloc(40_000, agentFill));
  // the large file every release carries unchanged
  await writeFile(join(d, 'tools.tar'), Buffer.alloc(300_000, 7));
  await writeFile(
    join(d, 'release.json'),
    JSON.stringify({
      name: 'fleet',
      version,
      artifacts: [
        { name: 'ferry-agent', kind: 'agent', version, platform: 'linux-x64', path: 'ferry-agent' },
        { name: 'tools', kind: 'file', version: '1', path: 'tools.tar' },
      ],
    }),
  );
  await ok(['server', 'release', 'add', '--data', server, '--spec', join(d, 'release.json')]);
}

/** An inventory signed with a mirror's key, with the fields given. */
async function craftInventory(keyPath: string, name: string, p: Partial<InventoryPayload>): Promise<string> {
  const key = await loadPrivateKey(keyPath);
  const env = signInventory(
    {
      type: 'ferry.inventory/v1',
      site: 'plant-7',
      publicKey: Buffer.from(key.publicKey).toString('hex'),
      created: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
      active: null,
      blobs: [],
      ...p,
    },
    key,
  );
  const path = join(dir, name);
  await writeFile(path, serializeEnvelope(env));
  return path;
}

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('ferry-server-delta-'));
  server = join(dir, 'server');
  mirror = join(dir, 'mirror');
  await ok(['server', 'site', 'add', '--data', server, '--name', 'plant-7', '--publisher', 'acme-ops']);
  await release('1.0.0', 1);
  // the site's first bundle, in full, imported at its mirror
  const first = join(dir, 'plant-7-1.ferry');
  await ok([
    'server',
    'bundle',
    '--data',
    server,
    '--site',
    'plant-7',
    '--release',
    'fleet@1.0.0',
    '--key',
    join(w.keyDir, 'release.key'),
    '--out',
    first,
  ]);
  await ok(['mirror', 'import', first, '--data', mirror, '--trust', w.rootPath, '--site', 'plant-7']);
  await ok(['mirror', 'identity', '--data', mirror, '--out', join(dir, 'mirror.pub')]);
  await ok([
    'server',
    'register-mirror',
    '--data',
    server,
    '--site',
    'plant-7',
    '--pub',
    join(dir, 'mirror.pub'),
  ]);
  exportFile = join(dir, 'export-1.ferrytelemetry');
  await ok(['mirror', 'export-telemetry', '--data', mirror, '--out', exportFile]);
}, 120_000);
afterAll(() => cleanup());

describe("the site's last known inventory", () => {
  it('comes home beside the export, is checked and kept on the site record', async () => {
    const r = await json<{ inventory: Record<string, unknown> }>([
      'server',
      'import-telemetry',
      exportFile,
      '--data',
      server,
    ]);
    expect(r.inventory).toMatchObject({ site: 'plant-7', status: 'kept', blobs: 2, active: 1 });
    const { sites } = await json<{ sites: { name: string; inventory?: Record<string, unknown> }[] }>([
      'server',
      'site',
      'list',
      '--data',
      server,
    ]);
    expect(sites.find((s) => s.name === 'plant-7')?.inventory).toMatchObject({
      blobs: 2,
      active: 1,
      via: 'courier',
    });
    const log = await readFile(join(server, 'audit/log.jsonl'), 'utf8');
    expect(log).toMatch(/"action":"inventory.received"/);
  });

  it('an older inventory never replaces a newer one', async () => {
    const key = join(mirror, 'identity/mirror.key');
    const old = await craftInventory(key, 'old.inventory.json', { created: '2020-01-01T00:00:00Z' });
    const before = await snapshotDir(server);
    const r = await json<{ inventory: Record<string, unknown> }>([
      'server',
      'import-telemetry',
      exportFile,
      '--data',
      server,
      '--inventory',
      old,
    ]);
    expect(r.inventory).toMatchObject({ status: 'older' });
    expect(await snapshotDir(server)).toEqual(before);
  });

  it("refuses a forged, an unregistered and another site mirror's inventory, changing nothing", async () => {
    // forged: one byte of the signed payload changed
    const good = JSON.parse(await readFile(`${exportFile}.inventory.json`, 'utf8')) as { payload: string };
    const body = Buffer.from(good.payload, 'base64');
    body[body.length - 3]! ^= 1;
    const forged = join(dir, 'forged.inventory.json');
    await writeFile(forged, JSON.stringify({ ...good, payload: body.toString('base64') }));
    const imp = ['server', 'import-telemetry', exportFile, '--data', server, '--inventory'];
    await refused([...imp, forged], /BAD_INVENTORY/);
    // a mirror nobody registered
    await ok(['mirror', 'identity', '--data', join(dir, 'stranger')]);
    const stranger = await craftInventory(join(dir, 'stranger/identity/mirror.key'), 'stranger.json', {});
    await refused([...imp, stranger], /UNKNOWN_MIRROR/);
    // a mirror registered for another site, claiming this one
    await ok(['server', 'site', 'add', '--data', server, '--name', 'ship-3']);
    await ok(['mirror', 'identity', '--data', join(dir, 'ship'), '--out', join(dir, 'ship.pub')]);
    await ok([
      'server',
      'register-mirror',
      '--data',
      server,
      '--site',
      'ship-3',
      '--pub',
      join(dir, 'ship.pub'),
    ]);
    const other = await craftInventory(join(dir, 'ship/identity/mirror.key'), 'other.json', {});
    await refused([...imp, other], /WRONG_SITE/);
    // the same files given to the bundle builder
    const bundle = ['server', 'bundle', '--data', server, '--site', 'plant-7', '--release', 'fleet@1.0.0'];
    const key = ['--key', join(w.keyDir, 'release.key'), '--out', join(dir, 'never.ferry')];
    await refused([...bundle, ...key, '--have', forged], /BAD_INVENTORY/);
    await refused([...bundle, ...key, '--have', stranger], /UNKNOWN_MIRROR/);
    await refused([...bundle, ...key, '--have', other], /WRONG_SITE/);
  });
});

describe("the site's next bundle as a delta", () => {
  it('leaves out what the last inventory lists, reports the bytes, and imports at the mirror', async () => {
    await release('1.1.0', 2);
    const out = join(dir, 'plant-7-2.ferry');
    const r = await json<{
      bundle: { sequence: number; delta: { omitted: number; from: string } };
      bytes: { written: number; full: number; saved: number };
    }>([
      'server',
      'bundle',
      '--data',
      server,
      '--site',
      'plant-7',
      '--release',
      'fleet@1.1.0',
      '--key',
      join(w.keyDir, 'release.key'),
      '--out',
      out,
    ]);
    expect(r.bundle).toMatchObject({ sequence: 2, delta: { omitted: 1, from: 'last' } });
    expect(r.bytes.full - r.bytes.written).toBe(r.bytes.saved);
    expect(r.bytes.saved).toBeGreaterThanOrEqual(300_000);
    expect((await readFile(out)).length).toBe(r.bytes.written);
    // the mirror that holds the inventory's blobs completes it
    const imp = await json<{ results: { status: string; missing: string[] }[] }>([
      'mirror',
      'import',
      out,
      '--data',
      mirror,
    ]);
    expect(imp.results[0]).toMatchObject({ status: 'active', missing: [] });
    // a mirror without the unchanged blob cannot activate it: it waits, serving nothing new
    const bare = join(dir, 'bare');
    const b = await json<{ results: { status: string; missing: string[] }[] }>([
      'mirror',
      'import',
      out,
      '--data',
      bare,
      '--trust',
      w.rootPath,
      '--site',
      'plant-7',
    ]);
    expect(b.results[0]).toMatchObject({ status: 'pending' });
    expect(b.results[0]!.missing).toHaveLength(1);
    const state = (await storeView(bare)).state as unknown as { active: unknown };
    expect(state.active).toBeNull();
  });

  it('--full writes every blob; --volume-size splits it into volumes that import in any order', async () => {
    const out = join(dir, 'plant-7-3.ferry');
    const r = await json<{ bundle: { volumes?: string[]; delta?: unknown; bytes: number } }>([
      'server',
      'bundle',
      '--data',
      server,
      '--site',
      'plant-7',
      '--release',
      'fleet@1.1.0',
      '--key',
      join(w.keyDir, 'release.key'),
      '--out',
      out,
      '--full',
      '--volume-size',
      '320k',
    ]);
    expect(r.bundle.delta).toBeUndefined();
    expect(r.bundle.volumes).toHaveLength(2);
    const fresh = join(dir, 'fresh');
    const [v1, v2] = r.bundle.volumes!;
    const a = await json<{ results: { status: string }[] }>([
      'mirror',
      'import',
      v2!,
      '--data',
      fresh,
      '--trust',
      w.rootPath,
      '--site',
      'plant-7',
    ]);
    expect(a.results[0]!.status).toBe('pending');
    const b = await json<{ results: { status: string }[] }>(['mirror', 'import', v1!, '--data', fresh]);
    expect(b.results[0]!.status).toBe('active');
  });

  it('--have with a given inventory; --have and --full together is refused', async () => {
    const out = join(dir, 'plant-7-4.ferry');
    const r = await json<{ bundle: { delta: { omitted: number; from: string } } }>([
      'server',
      'bundle',
      '--data',
      server,
      '--site',
      'plant-7',
      '--release',
      'fleet@1.1.0',
      '--key',
      join(w.keyDir, 'release.key'),
      '--out',
      out,
      '--have',
      `${exportFile}.inventory.json`,
    ]);
    expect(r.bundle.delta).toMatchObject({ omitted: 1, from: 'file' });
    await refused(
      [
        'server',
        'bundle',
        '--data',
        server,
        '--site',
        'plant-7',
        '--release',
        'fleet@1.1.0',
        '--key',
        join(w.keyDir, 'release.key'),
        '--out',
        join(dir, 'x.ferry'),
        '--full',
        '--have',
        `${exportFile}.inventory.json`,
      ],
      /BAD_INPUT/,
    );
  });
});
