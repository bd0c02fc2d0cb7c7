/**
 * `ferry mirror serve` as a real child process on a loopback port: bundles
 * arrive through its drop folder or through `ferry mirror import` run beside
 * it, and are read back over HTTP the way agents and peer mirrors read them.
 * The drop folder is watched with the default 2 s stability window.
 */
import { createHash, randomBytes } from 'node:crypto';
import { copyFile, mkdir, open, readFile, stat, writeFile } from 'node:fs/promises';
import { Agent, get } from 'node:http';
import { connect } from 'node:net';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildBundle, snapshotDir, type ArtifactInput } from './helpers/fixtures.js';
import { useWorld } from './helpers/world.js';
import {
  runFerry,
  sha256,
  sha256File,
  sleep,
  startMirrorProc,
  type LogLine,
  type MirrorProc,
} from './helpers/mirror-proc.js';

const MiB = 1024 * 1024;
const w = useWorld();

/** `count` artifacts of `size` bytes whose content depends on `tag`. */
function arts(tag: string, count = 3, size = 30_000): ArtifactInput[] {
  return Array.from({ length: count }, (_, i) => ({
    name: `a${i}`,
    kind: 'file' as const,
    content: Buffer.alloc(size, `${tag}:${i};`),
  }));
}

let n = 0;
async function bundle(sequence: number, artifacts: ArtifactInput[], volumeSize?: number) {
  const out = join(w.dir, 'src', `s${sequence}-${++n}.ferry`);
  await mkdir(join(w.dir, 'src'), { recursive: true });
  return buildBundle(w, out, {
    artifacts,
    spec: { sequence },
    ...(volumeSize !== undefined && { volumeSize }),
  });
}

async function getOk(url: string, init?: RequestInit): Promise<Response> {
  const res = await fetch(url, init);
  if (!res.ok) throw new Error(`${url}: ${res.status} ${await res.text()}`);
  return res;
}
const body = async (res: Response) => Buffer.from(await res.arrayBuffer());

interface Served {
  manifest: Buffer;
  etag: string | null;
  inventory: unknown;
  /** digest → sha256 of the bytes served, and the blob's ETag. */
  blobs: Record<string, string>;
}

/** Everything an agent or peer can read from the mirror. */
async function served(base: string): Promise<Served> {
  const m = await getOk(`${base}/v1/manifest`);
  const inventory = (await (await getOk(`${base}/v1/inventory`)).json()) as { blobs: string[] };
  const blobs: Record<string, string> = {};
  for (const d of inventory.blobs) {
    const r = await getOk(`${base}/v1/blobs/sha256/${d}`);
    blobs[d] = `${sha256(await body(r))} ${r.headers.get('etag')}`;
  }
  return { manifest: await body(m), etag: m.headers.get('etag'), inventory, blobs };
}

const isAccepted = (file: string, sequence?: number) => (l: LogLine) =>
  l.event === 'import.accepted' && l.file === file && (sequence === undefined || l.sequence === sequence);

describe('ferry mirror serve: the drop folder', () => {
  it('imports what is dropped, waits for slow writes, activates volumes after the last, refuses tampering and never touches the sources', async () => {
    const data = join(w.dir, 'drop-data');
    const drop = join(w.dir, 'drop');
    await mkdir(drop);
    const b1 = await bundle(1, arts('one'));
    const b2 = await bundle(2, arts('two', 3, 400_000));
    const b3 = await bundle(3, arts('three'), 40_000);
    expect(b3.volumes).toHaveLength(3);
    const b4 = await bundle(4, arts('four'));
    const tampered = await readFile(b4.volumes[0]!.path);
    const at = tampered.indexOf(Buffer.from('four:1;'));
    expect(at).toBeGreaterThan(0);
    tampered[at] = 'F'.charCodeAt(0); // same size, one byte of the second blob altered

    const mirror = await startMirrorProc({ data, drop, trust: w.rootPath, site: 'plant-7' });
    const base = mirror.url;
    expect((await fetch(`${base}/v1/manifest`)).status).toBe(404);
    /** What each dropped file looked like right after it was written: sha256, size, mtime. */
    const sources = new Map<string, string>();
    const fingerprint = async (p: string) => {
      const st = await stat(p);
      return `${await sha256File(p)} ${st.size} ${st.mtimeMs}`;
    };
    const dropCopy = async (from: string) => {
      const to = join(drop, basename(from));
      await copyFile(from, to);
      sources.set(to, await fingerprint(to));
      return to;
    };

    // 1. a bundle copied in is imported and served
    const d1 = await dropCopy(b1.volumes[0]!.path);
    await mirror.waitForLog(isAccepted(d1, 1));
    const m1 = await getOk(`${base}/v1/manifest`);
    expect(await body(m1)).toEqual(b1.envelopeBytes);
    expect(m1.headers.get('etag')).toBe(`"${sha256(b1.envelopeBytes)}"`);
    const inv1 = (await (await getOk(`${base}/v1/inventory`)).json()) as {
      active: { sequence: number };
      blobs: string[];
    };
    expect(inv1.active.sequence).toBe(1);
    expect(inv1.blobs).toEqual(b1.manifest.artifacts.map((a) => a.sha256).sort());

    // 2. written slowly: half, a pause shorter than the stability window, the rest
    const bytes2 = await readFile(b2.volumes[0]!.path);
    const d2 = join(drop, basename(b2.volumes[0]!.path));
    const fh = await open(d2, 'w');
    const half = Math.floor(bytes2.length / 2);
    await fh.write(bytes2, 0, half);
    await fh.sync();
    await sleep(500);
    await fh.write(bytes2, half, bytes2.length - half);
    await fh.close();
    sources.set(d2, await fingerprint(d2));
    await mirror.waitForLog(isAccepted(d2, 2));
    const found2 = mirror.logs.filter((l) => l.event === 'drop.found' && l.file === d2);
    expect(found2).toEqual([expect.objectContaining({ bytes: bytes2.length })]);
    expect(mirror.logs.filter((l) => l.event === 'import.refused')).toEqual([]);
    expect(await body(await getOk(`${base}/v1/manifest`))).toEqual(b2.envelopeBytes);

    // 3. volumes in reverse order: pending until the last, then active
    const vols = b3.volumes.map((v) => v.path).reverse();
    for (const [i, v] of vols.entries()) {
      const d = await dropCopy(v);
      const line = await mirror.waitForLog(isAccepted(d, 3));
      const last = i === vols.length - 1;
      expect(line).toMatchObject({ status: last ? 'active' : 'pending', missing: last ? 0 : 2 - i });
      const manifest = await body(await getOk(`${base}/v1/manifest`));
      expect(manifest).toEqual(last ? b3.envelopeBytes : b2.envelopeBytes);
    }

    // 4. a tampered bundle is refused, shown to the operator, and changes nothing served
    const before = await served(base);
    const blobsOnDisk = await snapshotDir(join(data, 'blobs'));
    const pageBefore = await (await getOk(`${base}/`)).text();
    expect(quarantineSection(pageBefore)).toContain('none');
    const d4 = join(drop, 'tampered.ferry');
    await writeFile(d4, tampered);
    sources.set(d4, await fingerprint(d4));
    const refused = await mirror.waitForLog((l) => l.event === 'import.refused' && l.file === d4);
    expect(refused.code).toBe('BLOB_DIGEST_MISMATCH');

    const page = quarantineSection(await (await getOk(`${base}/`)).text());
    expect(page).toContain('BLOB_DIGEST_MISMATCH');
    expect(page).toContain(d4);
    const metrics = await (await getOk(`${base}/metrics`)).text();
    expect(metrics.split('\n')).toContain('ferry_mirror_refusals_total{code="BLOB_DIGEST_MISMATCH"} 1');
    expect(metrics.split('\n')).toContain('ferry_mirror_active_sequence 3');
    const status = await runFerry(['mirror', 'status', '--data', data, '--json']);
    expect(status.code, status.stderr).toBe(0);
    const s = JSON.parse(status.stdout) as { active: { sequence: number }; quarantine: unknown[] };
    expect(s.active.sequence).toBe(3);
    expect(s.quarantine).toEqual([expect.objectContaining({ file: d4, code: 'BLOB_DIGEST_MISMATCH' })]);
    expect(await served(base)).toEqual(before);
    expect(await snapshotDir(join(data, 'blobs'))).toEqual(blobsOnDisk);

    // 5. the drop folder holds exactly what was put there, byte for byte, mtime for mtime
    expect(Object.keys(await snapshotDir(drop)).sort()).toEqual(
      [...sources.keys()].map((p) => basename(p)).sort(),
    );
    for (const [p, fp] of sources) expect(await fingerprint(p), p).toBe(fp);

    expect(await mirror.stop()).toEqual({ code: 0, signal: null });
  }, 60_000);
});

/** The quarantine table of the status page. */
function quarantineSection(html: string): string {
  const start = html.indexOf('<div id="quarantine">');
  expect(start).toBeGreaterThan(0);
  return html.slice(start, html.indexOf('</div>', start));
}

describe('ferry mirror serve beside ferry mirror import', () => {
  let mirror: MirrorProc;
  let data: string;
  let b1: Awaited<ReturnType<typeof bundle>>;

  beforeAll(async () => {
    data = join(w.dir, 'cli-data');
    b1 = await bundle(1, [
      ...arts('cli-one', 2),
      { name: 'big', kind: 'file', content: randomBytes(3 * MiB) },
    ]);
    const first = await runFerry([
      'mirror',
      'import',
      b1.volumes[0]!.path,
      '--data',
      data,
      '--trust',
      w.rootPath,
      '--site',
      'plant-7',
    ]);
    expect(first.code, first.stderr).toBe(0);
    mirror = await startMirrorProc({ data });
  });
  afterAll(async () => {
    await mirror.stop();
  });

  it('answers 304 to a current ETag and serves a manifest imported by another process without a restart', async () => {
    const m1 = await getOk(`${mirror.url}/v1/manifest`);
    const etag1 = m1.headers.get('etag')!;
    expect(await body(m1)).toEqual(b1.envelopeBytes);
    const same = await fetch(`${mirror.url}/v1/manifest`, { headers: { 'If-None-Match': etag1 } });
    expect(same.status).toBe(304);
    expect(same.headers.get('etag')).toBe(etag1);
    expect((await body(same)).length).toBe(0);

    const b2 = await bundle(2, arts('cli-two'));
    const imported = await runFerry(['mirror', 'import', b2.volumes[0]!.path, '--data', data, '--json']);
    expect(imported.code, imported.stderr).toBe(0);

    const m2 = await fetch(`${mirror.url}/v1/manifest`, { headers: { 'If-None-Match': etag1 } });
    expect(m2.status).toBe(200);
    expect(await body(m2)).toEqual(b2.envelopeBytes);
    const etag2 = m2.headers.get('etag');
    expect(etag2).toBe(`"${sha256(b2.envelopeBytes)}"`);
    const inv = (await (await getOk(`${mirror.url}/v1/inventory`)).json()) as {
      active: { sequence: number };
      blobs: string[];
    };
    expect(inv.active.sequence).toBe(2);
    for (const a of b2.manifest.artifacts) expect(inv.blobs).toContain(a.sha256);
    expect((await fetch(`${mirror.url}/v1/manifest`, { headers: { 'If-None-Match': etag2! } })).status).toBe(
      304,
    );
    const started = mirror.logs.filter((l) => l.event === 'mirror.started');
    expect(started).toHaveLength(1);
    expect(started[0]).toMatchObject({ crypto: 'sodium-native' }); // the service's verifier (core/ed25519.ts)
  });

  it('resumes a broken blob download with Range and If-Range', async () => {
    const big = b1.manifest.artifacts.find((a) => a.name === 'big')!;
    const url = `${mirror.url}/v1/blobs/sha256/${big.sha256}`;
    // A download cut off part-way: read a little over 1 MiB, then drop the connection.
    const res = await getOk(url);
    const etag = res.headers.get('etag')!;
    expect(etag).toBe(`"${big.sha256}"`);
    const reader = res.body!.getReader();
    const parts: Buffer[] = [];
    let got = 0;
    while (got < MiB) {
      const r = (await reader.read()) as { done: boolean; value?: Uint8Array };
      if (r.done || !r.value) break;
      parts.push(Buffer.from(r.value));
      got += r.value.length;
    }
    await reader.cancel();
    expect(got).toBeLessThan(big.size);

    const rest = await fetch(url, { headers: { Range: `bytes=${got}-`, 'If-Range': etag } });
    expect(rest.status).toBe(206);
    expect(rest.headers.get('content-range')).toBe(`bytes ${got}-${big.size - 1}/${big.size}`);
    expect(Number(rest.headers.get('content-length'))).toBe(big.size - got);
    expect(sha256(Buffer.concat([...parts, await body(rest)]))).toBe(big.sha256);

    const stale = await fetch(url, {
      headers: { Range: `bytes=${got}-`, 'If-Range': `"${'0'.repeat(64)}"` },
    });
    expect(stale.status).toBe(200);
    expect(sha256(await body(stale))).toBe(big.sha256);
    const beyond = await fetch(url, { headers: { Range: `bytes=${big.size}-` } });
    expect(beyond.status).toBe(416);
    expect(beyond.headers.get('content-range')).toBe(`bytes */${big.size}`);
    expect(await beyond.json()).toMatchObject({ code: 'RANGE_NOT_SATISFIABLE' });
  });
});

describe('ferry mirror serve: SIGTERM', () => {
  it('lets a slow large download finish, refuses new connections meanwhile, then exits 0', async () => {
    const data = join(w.dir, 'term-data');
    const size = 48 * MiB;
    const b = await bundle(1, [{ name: 'large', kind: 'file', content: randomBytes(size) }]);
    const digest = b.manifest.artifacts[0]!.sha256;
    const setup = await runFerry([
      'mirror',
      'import',
      b.volumes[0]!.path,
      '--data',
      data,
      '--trust',
      w.rootPath,
      '--site',
      'plant-7',
    ]);
    expect(setup.code, setup.stderr).toBe(0);
    const mirror = await startMirrorProc({ data });
    const port = Number(new URL(mirror.url).port);
    // A keep-alive client, as agents are: undici keeps an idle connection for as long as the
    // server's Keep-Alive hint allows (65 s here), so the mirror must close it itself.
    const agent = new Agent({ keepAlive: true });
    try {
      const dl = slowDownload(`${mirror.url}/v1/blobs/sha256/${digest}`, agent, 4 * MiB);
      await dl.holding;
      let exited = false;
      void mirror.exited.then(() => (exited = true));
      mirror.signal('SIGTERM');
      await mirror.waitForLog((l) => l.event === 'mirror.stopping');
      await sleep(500);
      expect(exited).toBe(false);
      expect(await connectError(port)).toBe('ECONNREFUSED');
      expect(dl.received()).toBeLessThan(size);

      dl.release();
      const got = await dl.done;
      expect(got).toMatchObject({ status: 200, bytes: size, digest });
      const exit = await Promise.race([mirror.exited, sleep(5_000).then(() => 'still running')]);
      expect(exit, 'the mirror must exit once the last download has finished').toEqual({
        code: 0,
        signal: null,
      });
      expect(mirror.logs.map((l) => l.event)).toContain('mirror.stopped');
    } finally {
      agent.destroy();
    }
  }, 60_000);
});

/** The error code of a fresh TCP connection attempt, or 'connected'. */
function connectError(port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve('connected');
    });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
}

/**
 * A download read slowly (a 40 ms pause after every MiB) that stops reading
 * altogether after `holdAfter` bytes until released.
 */
function slowDownload(url: string, agent: Agent, holdAfter: number) {
  let received = 0;
  let onHold!: () => void;
  const holding = new Promise<void>((r) => (onHold = r));
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const done = new Promise<{ status: number; bytes: number; digest: string }>((resolve, reject) => {
    const req = get(url, { agent }, (res) => {
      const hash = createHash('sha256');
      let sincePause = 0;
      let held = false;
      let wasHeld = false;
      res.on('data', (chunk: Buffer) => {
        hash.update(chunk);
        received += chunk.length;
        sincePause += chunk.length;
        if (!wasHeld && received >= holdAfter) {
          held = wasHeld = true;
          res.pause();
          onHold();
          void released.then(() => {
            held = false;
            res.resume();
          });
        } else if (sincePause >= MiB) {
          sincePause = 0;
          res.pause();
          setTimeout(() => {
            if (!held) res.resume();
          }, 40);
        }
      });
      res.once('end', () =>
        resolve({ status: res.statusCode ?? 0, bytes: received, digest: hash.digest('hex') }),
      );
      res.once('close', () => {
        if (!res.complete) reject(new Error(`download cut off after ${received} bytes`));
      });
    });
    req.once('error', reject);
  });
  return { holding, release, done, received: () => received };
}
