/**
 * Peer mirrors across real network partitions: every mirror is a real
 * `ferry mirror serve` in its own network namespace, joined to its neighbours
 * by veth pairs, and traffic goes nowhere else.
 *
 *        drop                       hostile peer E (tampered blobs, a never-ending
 *         │                          body, an older validly signed manifest)
 *         A ── B ── C ── agent C          │     │
 *              │    └─────────────────────┘     │
 *              D ── agent D ────────────────────┘
 *
 * The release is dropped at A only. B pulls it from A at a capped rate; the
 * A—B link is cut mid-transfer and restored, and the transfer resumes from
 * its verified prefix. C and D get it from B while E offers them bad bytes
 * first, and their agents apply it. E's bad bytes are detected, backed off
 * and routed around; its older manifest is reported as behind and never
 * adopted; C's and D's data dirs hold nothing from it.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readBundle } from '../core/bundle/reader.js';
import { fileSource } from '../platform/fsx.js';
import { buildBundle, ferry, makeWorld, SAMPLE_ARTIFACTS, type World } from './helpers/fixtures.js';
import { sha256File, sleep, type LoggedProc } from './helpers/mirror-proc.js';
import { netnsUnavailable, Topology, type NsLink } from './helpers/netns.js';

const unavailable = netnsUnavailable();
const PORT = 8080;

/** A hostile mirror: serves one bundle's manifest, the root, an inventory, and blobs as MODE says. */
const HOSTILE = `
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
const [dir, mode, port] = process.argv.slice(2);
const manifest = readFileSync(dir + '/manifest.dsse.json');
const root = readFileSync(dir + '/root.json', 'utf8');
const blobs = JSON.parse(readFileSync(dir + '/blobs.json', 'utf8'));
createServer((req, res) => {
  if (req.url === '/v1/manifest') return res.writeHead(200, { etag: '"x' + mode + '"' }).end(manifest);
  if (req.url === '/v1/root') return res.end('[' + root + ']');
  if (req.url === '/v1/inventory') return res.end(JSON.stringify({ blobs }));
  const m = /^\\/v1\\/blobs\\/sha256\\/([0-9a-f]{64})$/.exec(req.url);
  if (!m || !blobs.includes(m[1])) return res.writeHead(404).end();
  const body = readFileSync(dir + '/' + m[1]);
  if (mode === 'tamper') { body[body.length >> 1] ^= 0xff; return res.writeHead(200).end(body); }
  res.writeHead(200);
  res.write(body);
  const more = () => { while (!res.destroyed && res.write(Buffer.alloc(65536))); if (!res.destroyed) res.once('drain', more); };
  more();
}).listen(Number(port), '0.0.0.0', () => process.stderr.write(JSON.stringify({ event: 'hostile.started', mode }) + '\\n'));
`;

describe.skipIf(unavailable !== undefined)('peer mirrors in network namespaces', () => {
  let w: World;
  const topo = new Topology();
  const links: Record<string, NsLink> = {};

  beforeAll(async () => {
    w = await makeWorld();
    for (const n of ['A', 'B', 'C', 'D', 'E', 'nC', 'nD']) topo.addNode(n);
    links.AB = topo.link('A', 'B');
    links.BC = topo.link('B', 'C');
    links.BD = topo.link('B', 'D');
    links.EC = topo.link('E', 'C');
    links.ED = topo.link('E', 'D');
    links.CnC = topo.link('C', 'nC');
    links.DnD = topo.link('D', 'nD');
    // B's kernel may buffer only a little ahead of what B has read: otherwise, at B's 2 MB/s reading
    // rate, A's whole blob can sit in B's socket buffer before the cut, and no resume is needed.
    execFileSync('ip', [
      ...['netns', 'exec', topo.ns('B'), 'sh', '-c'],
      'echo "4096 65536 131072" > /proc/sys/net/ipv4/tcp_rmem',
    ]);
  }, 60_000);

  afterAll(async () => {
    await topo.destroy();
    await w?.cleanup();
  });

  const url = (addr: string) => `http://${addr}:${PORT}`;

  async function serve(node: string, data: string, args: string[]): Promise<LoggedProc> {
    const p = topo.ferry(node, [
      ...['mirror', 'serve', '--data', data, '--listen', `0.0.0.0:${PORT}`, '--peer-interval', '0.3'],
      ...['--retry-max', '2', '--peer-limits', '{"idleTimeoutMs":2000,"minDeadlineMs":60000}'],
      ...args,
    ]);
    await p.waitForLog((l) => l.event === 'mirror.started', 30_000);
    return p;
  }

  /** The peer status a serving mirror reports through its control socket. */
  async function peersOf(
    data: string,
  ): Promise<{ url: string; offer: string | null; lastError: { code: string } | null }[]> {
    const r = await ferry(['mirror', 'status', '--data', data, '--json']);
    const j = JSON.parse(r.stdout) as { telemetry: { bundlePeers?: [] } };
    return j.telemetry.bundlePeers ?? [];
  }

  async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 90_000): Promise<T> {
    for (const end = Date.now() + ms; Date.now() < end; await sleep(200)) {
      const v = await f();
      if (v !== undefined) return v;
    }
    throw new Error(`timed out waiting for ${what}`);
  }

  it('spreads a release A→B→{C,D} across a cut link, routes around a hostile peer, agents apply it', async () => {
    const old = join(w.dir, 'seq1.ferry');
    const release = join(w.dir, 'seq2.ferry');
    await buildBundle(w, old, { spec: { sequence: 1 } });
    await buildBundle(w, release, {
      spec: { sequence: 2 },
      artifacts: [...SAMPLE_ARTIFACTS, { name: 'big', kind: 'file', content: randomBytes(12 * 1024 * 1024) }],
    });
    const data = (n: string) => join(w.dir, `data-${n}`);
    // Every mirror starts set up, holding sequence 1; only A will see the courier's sequence 2.
    for (const n of ['A', 'B', 'C', 'D']) {
      const r = await ferry([
        'mirror',
        'import',
        old,
        '--data',
        data(n),
        '--trust',
        w.rootPath,
        '--site',
        'plant-7',
      ]);
      expect(r.code, r.stderr).toBe(0);
    }

    // The hostile peer's material: the release's manifest and blobs, and the old manifest.
    const script = join(w.dir, 'hostile.mjs');
    await writeFile(script, HOSTILE);
    for (const [name, bundle] of [
      ['new', release],
      ['old', old],
    ] as const) {
      const dir = join(w.dir, `hostile-${name}`);
      await mkdir(dir, { recursive: true });
      const digests: string[] = [];
      const c = await readBundle(fileSource(bundle), {
        openBlob: (d) => {
          digests.push(d);
          const parts: Buffer[] = [];
          return Promise.resolve({
            write: (x: Buffer) => void parts.push(Buffer.from(x)),
            commit: () => writeFile(join(dir, d), Buffer.concat(parts)),
            abort: () => Promise.resolve(),
          });
        },
      });
      await writeFile(join(dir, 'manifest.dsse.json'), c.envelopeBytes);
      await writeFile(join(dir, 'blobs.json'), JSON.stringify(digests));
      await copyFile(w.rootPath, join(dir, 'root.json'));
    }
    const hostile = [
      ['new', 'tamper', 8081],
      ['new', 'endless', 8082],
      ['old', 'older', 8083],
    ] as const;
    for (const [set, mode, port] of hostile) {
      const p = topo.spawn('E', [
        process.execPath,
        script,
        join(w.dir, `hostile-${set}`),
        mode,
        String(port),
      ]);
      await p.waitForLog((l) => l.event === 'hostile.started');
    }
    const hostileFor = (l: NsLink) => hostile.map(([, , port]) => `http://${l.addrA}:${port}`);

    const drop = join(w.dir, 'drop');
    await mkdir(drop, { recursive: true });
    const a = await serve('A', data('A'), ['--drop', drop, '--peer', url(links.AB!.addrB)]);
    // B reads from A at 2 MB/s: the 12 MiB blob takes about six seconds, time to cut the link.
    const b = await serve('B', data('B'), [
      ...['--peer', url(links.AB!.addrA), '--peer', url(links.BC!.addrB), '--peer', url(links.BD!.addrB)],
      ...['--peer-rate', '2MB/s'],
    ]);
    // C and D list the hostile peer first: with every source idle, it is asked first.
    const c = await serve('C', data('C'), [
      ...hostileFor(links.EC!).flatMap((u) => ['--peer', u]),
      ...['--peer', url(links.BC!.addrA)],
    ]);
    const d = await serve('D', data('D'), [
      ...hostileFor(links.ED!).flatMap((u) => ['--peer', u]),
      ...['--peer', url(links.BD!.addrA)],
    ]);

    await copyFile(release, join(drop, 'release-2.ferry'));
    await a.waitForLog((l) => l.event === 'import.accepted' && l.sequence === 2, 60_000);

    // Mid-transfer: B holds part of the big blob; the A—B cable is pulled, then put back.
    const part = join(data('B'), 'peer-pulls');
    const cutAt = await until('B to be part-way through the big blob', async () => {
      for (const f of await readdir(part).catch(() => [])) {
        const size = (await stat(join(part, f)).catch(() => undefined))?.size ?? 0;
        if (f.endsWith('.part') && size > 2 * 1024 * 1024) return size;
      }
      return undefined;
    });
    topo.setLink(links.AB!, false);
    await b.nextLog((l) => l.event === 'peer.backoff' && l.peer === url(links.AB!.addrA), 60_000);
    topo.setLink(links.AB!, true);
    await b.waitForLog((l) => l.event === 'peer.adopted' && l.sequence === 2, 120_000);
    const resumed = b.logs.find((l) => l.event === 'blob.fetched' && Number(l.resumedFrom) > 0);
    expect(resumed, 'the big blob resumed from its verified prefix').toBeDefined();
    expect(Number(resumed!.resumedFrom)).toBeGreaterThanOrEqual(cutAt);

    await c.waitForLog((l) => l.event === 'peer.adopted' && l.sequence === 2, 120_000);
    await d.waitForLog((l) => l.event === 'peer.adopted' && l.sequence === 2, 120_000);

    // Each honest mirror: the release A imported, byte for byte; every blob named by its own digest.
    const manifestOf = async (n: string) => readFile(join(data(n), 'manifests', 'acme-ops', '2.dsse.json'));
    for (const n of ['B', 'C', 'D']) {
      expect(await manifestOf(n)).toEqual(await manifestOf('A'));
      const blobs = await readdir(join(data(n), 'blobs', 'sha256'));
      for (const x of blobs) expect(await sha256File(join(data(n), 'blobs', 'sha256', x))).toBe(x);
      expect(blobs.sort()).toEqual((await readdir(join(data('A'), 'blobs', 'sha256'))).sort());
    }

    // The hostile peer was asked, caught for each trick, and backed off; nothing of it stayed.
    for (const [n, l] of [
      ['C', links.EC!],
      ['D', links.ED!],
    ] as const) {
      const dir = data(n);
      const codes = await until(`${n} to have caught every trick`, async () => {
        const peers = await peersOf(dir);
        // A peer with an older valid manifest is only behind: known as such, never a source for it.
        const byUrl = new Map(peers.map((p) => [p.url, p.offer === 'behind' ? 'behind' : p.lastError?.code]));
        const got = hostileFor(l).map((u) => byUrl.get(u));
        return got.every(Boolean) ? got : undefined;
      });
      expect(codes).toEqual(['BLOB_DIGEST_MISMATCH', 'BLOB_SIZE_MISMATCH', 'behind']);
      const state = JSON.parse(await readFile(join(dir, 'state.json'), 'utf8')) as {
        quarantine: unknown[];
        imports: { file: string }[];
      };
      expect(state.quarantine).toEqual([]);
      expect(state.imports.at(-1)!.file).toBe(`peer ${url(n === 'C' ? links.BC!.addrA : links.BD!.addrA)}`);
      expect(await readdir(join(dir, 'peer-pulls'))).toEqual([]);
    }

    // The agents behind C and D know only their own mirror, and apply the release.
    for (const [n, l] of [
      ['C', links.CnC!],
      ['D', links.DnD!],
    ] as const) {
      const made = await ferry([
        'mirror',
        'token',
        'create',
        '--data',
        data(n),
        '--ttl',
        '1h',
        '--group',
        'web',
      ]);
      expect(made.code, made.stderr).toBe(0);
      const tokenFile = join(w.dir, `token-${n}`);
      await writeFile(tokenFile, made.stdout, { mode: 0o600 });
      const r = await topo.ferryOnce(`n${n}`, [
        ...['agent', 'poll', '--now', '--state', join(w.dir, `agent-${n}`), '--mirror', url(l.addrA)],
        ...[
          '--trust',
          w.rootPath,
          '--site',
          'plant-7',
          '--group',
          'web',
          '--token-file',
          tokenFile,
          '--json',
        ],
      ]);
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, sequence: 2, sync: { kind: 'updated' } });
    }
  }, 300_000);
});
