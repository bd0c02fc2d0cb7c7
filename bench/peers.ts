/**
 * Peer-to-peer mirror figures, each against a baseline measured in the same run:
 *
 *   1. one peer to one peer: a mirror pulling a blob from its peer (verified twice: by the download
 *      and by the import that adopts it) against curl fetching the same file from nginx;
 *   2. a release reaching every mirror of a 6-mirror mesh against a 6-mirror chain, each peer link
 *      capped at --link-rate (mirrors of a site sit on separate network segments);
 *   3. the courier's saving: a `--have` delta against the full bundle for a one-artifact change.
 *
 *   node dist/bench/peers.js [--size 1G] [--release-size 1G] [--blobs 8] [--link-rate 50M]
 *                            [--only one|spread|courier] [--json]
 *
 * It prints a report and never fails on absolute times. With BENCH_PROF=DIR the mirrors run with
 * --cpu-prof into DIR, and the one-peer puller's log is copied there (where the time goes).
 */
import { spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
} from 'node:fs';
import { statSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseSize } from '../bin/cli/common.js';
import { ferry, FERRY, freePort, printTable, ready, start, stopAll } from './proc.js';

const MiB = 1024 * 1024;
const NGINX = '/usr/sbin/nginx';
const CURL = '/usr/bin/curl';

const { values: a } = parseArgs({
  options: {
    size: { type: 'string', default: '1G' },
    'release-size': { type: 'string', default: '1G' },
    blobs: { type: 'string', default: '8' },
    'link-rate': { type: 'string', default: '50M' },
    only: { type: 'string' },
    json: { type: 'boolean', default: false },
  },
});

const work = mkdtempSync(join(tmpdir(), 'ferry-bench-peers-'));
chmodSync(work, 0o755); // nginx workers started by root run as nobody
const keys = join(work, 'keys');
const root = join(work, 'root.json');

function setupTrust(): string {
  ferry(['keys', 'generate', '--out', keys, '--name', 'root']);
  ferry(['keys', 'generate', '--out', keys, '--name', 'release']);
  ferry([
    ...['trust', 'init', '--root-key', join(keys, 'root.key'), '--root-threshold', '1'],
    ...[
      '--bundle-key',
      join(keys, 'release.pub'),
      '--bundle-threshold',
      '1',
      '--expires',
      '30d',
      '--out',
      root,
    ],
  ]);
  return join(keys, 'release.key');
}

/** A spec for artifacts of the given sizes (random bytes, or filled with `seed`) at `sequence`. */
function bundle(name: string, sequence: number, files: { name: string; size: number; seed?: number }[]) {
  const dir = join(work, name);
  mkdirSync(dir, { recursive: true });
  const buf = Buffer.alloc(MiB);
  for (const f of files) {
    const fd = openSync(join(dir, f.name), 'w');
    for (let off = 0; off < f.size; off += MiB) {
      const chunk = f.seed === undefined ? randomFillSync(buf) : buf.fill(f.seed);
      writeSync(fd, chunk.subarray(0, Math.min(MiB, f.size - off)));
    }
    closeSync(fd);
  }
  const artifacts = files.map((f) => ({ name: f.name, kind: 'file', version: '1', path: f.name }));
  const spec = { publisher: 'bench', sequence, expires: '30d', sites: ['bench'], artifacts };
  writeFileSync(join(dir, 'spec.json'), JSON.stringify(spec));
  return join(dir, 'spec.json');
}

function create(spec: string, key: string, out: string, extra: string[] = []): string {
  return ferry(['bundle', 'create', '--spec', spec, '--key', key, '--out', out, '--json', ...extra]);
}

function importInto(file: string, data: string): void {
  ferry(['mirror', 'import', file, '--data', data, '--trust', root, '--site', 'bench']);
}

/** Starts a mirror; resolves its URL and a wait for its log to show an event. */
async function serve(data: string, args: string[], name: string) {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const log = join(work, `${name}.log`);
  const argv = ['mirror', 'serve', '--data', data, '--listen', `127.0.0.1:${port}`, '--trust', root];
  const prof = process.env.BENCH_PROF ? ['--cpu-prof', '--cpu-prof-dir', process.env.BENCH_PROF] : [];
  const child = start([process.execPath, ...prof, FERRY, ...argv, '--site', 'bench', ...args], log);
  await ready(child, `${url}/healthz`, log);
  const event = async (name: string, timeoutMs = 30 * 60_000): Promise<number> => {
    for (const end = Date.now() + timeoutMs; Date.now() < end; await new Promise((r) => setTimeout(r, 50))) {
      const line = readFileSync(log, 'utf8')
        .split('\n')
        .find((l) => l.includes(`"event":"${name}"`));
      if (line) return Date.parse((JSON.parse(line) as { time: string }).time);
    }
    throw new Error(`${log}: no ${name} in ${timeoutMs} ms`);
  };
  return { url, child, event };
}

async function nginx(dataDir: string, probe: string): Promise<string> {
  const port = await freePort();
  const prefix = join(work, 'nginx');
  mkdirSync(prefix, { recursive: true });
  const temps = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `${t}_temp_path ${prefix};`);
  const conf = join(prefix, 'nginx.conf');
  writeFileSync(
    conf,
    `daemon off;\nworker_processes 1;\npid ${prefix}/nginx.pid;\nevents { worker_connections 64; }\n` +
      `http {\n  access_log off;\n  sendfile on;\n  ${temps.join(' ')}\n` +
      `  server { listen 127.0.0.1:${port}; root ${dataDir}; }\n}\n`,
  );
  const log = join(prefix, 'error.log');
  const child = start([NGINX, '-e', log, '-c', conf, '-p', prefix], log);
  const url = `http://127.0.0.1:${port}`;
  await ready(child, url + probe, log, { method: 'HEAD' });
  return url;
}

const mibs = (bytes: number, ms: number) => bytes / MiB / (ms / 1000);

async function onePeer(key: string, size: number) {
  const spec = bundle('one', 1, [{ name: 'blob', size }]);
  const file = join(work, 'one.ferry');
  create(spec, key, file);
  const dataA = join(work, 'one-a');
  importInto(file, dataA);
  rmSync(file);
  const blobDir = join(dataA, 'blobs', 'sha256');
  const digest = spawnSync('ls', [blobDir]).stdout.toString().trim().split('\n')[0]!;
  spawnSync('sh', ['-c', 'sync && cat "$1" > /dev/null', 'sh', join(blobDir, digest)]);
  const web = await nginx(dataA, `/blobs/sha256/${digest}`);
  const out = join(work, 'curl.out');
  const t0 = performance.now();
  const c = spawnSync(CURL, ['-sf', '-o', out, `${web}/blobs/sha256/${digest}`]);
  const curlMs = performance.now() - t0;
  if (c.status !== 0) throw new Error(`curl failed: ${c.stderr.toString()}`);
  rmSync(out);
  // The same, made durable as the mirror makes every blob before it counts (fsync of the file).
  const td = performance.now();
  const cd = spawnSync('sh', [
    '-c',
    '"$1" -sf -o "$2" "$3" && sync "$2"',
    'sh',
    CURL,
    out,
    `${web}/blobs/sha256/${digest}`,
  ]);
  const curlSyncMs = performance.now() - td;
  if (cd.status !== 0) throw new Error(`curl && sync failed: ${cd.stderr.toString()}`);
  rmSync(out);
  const a = await serve(dataA, [], 'one-a');
  // The serving side alone: curl fetching the blob from the ferry mirror.
  const t1 = performance.now();
  const c2 = spawnSync(CURL, ['-sf', '-o', out, `${a.url}/v1/blobs/sha256/${digest}`]);
  const serveMs = performance.now() - t1;
  if (c2.status !== 0) throw new Error(`curl from the mirror failed: ${c2.stderr.toString()}`);
  rmSync(out);
  console.error(
    `bench: one peer: curl from nginx ${Math.round(curlMs)} ms (then fsync: ${Math.round(curlSyncMs)} ms), from the mirror ${Math.round(serveMs)} ms`,
  );
  const b = await serve(join(work, 'one-b'), ['--peer', a.url, '--peer-interval', '0.1'], 'one-b');
  const start = await b.event('peer.pull');
  const fetched = await b.event('blob.fetched');
  const end = await b.event('peer.adopted');
  const ferryMs = end - start;
  if (process.env.BENCH_PROF) spawnSync('cp', [join(work, 'one-b.log'), process.env.BENCH_PROF]);
  // Where the time goes: receiving and verifying the blob, then adopting it.
  console.error(`bench: one peer: pull ${fetched - start} ms, adopt ${end - fetched} ms`);
  await stopAll();
  rmSync(join(work, 'one-b'), { recursive: true, force: true });
  return {
    bytes: size,
    curl: mibs(size, curlMs),
    curlSync: mibs(size, curlSyncMs),
    ferry: mibs(size, ferryMs),
    ratio: curlMs / ferryMs,
    ratioSync: curlSyncMs / ferryMs,
  };
}

async function spread(key: string, total: number, blobs: number, rate: string, shape: 'mesh' | 'chain') {
  const each = Math.floor(total / blobs);
  const spec = bundle(
    `rel-${shape}`,
    1,
    Array.from({ length: blobs }, (_, i) => ({ name: `b${i}`, size: each })),
  );
  const file = join(work, `rel-${shape}.ferry`);
  create(spec, key, file);
  const dirs = Array.from({ length: 6 }, (_, i) => join(work, `${shape}-${i}`));
  importInto(file, dirs[0]!);
  rmSync(file);
  // Ports first, so every mirror can name its peers before any starts.
  const ports = await Promise.all(dirs.map(() => freePort()));
  const urls = ports.map((p) => `http://127.0.0.1:${p}`);
  const peersOf = (i: number) =>
    shape === 'chain' ? [i > 0 ? urls[i - 1]! : urls[1]!] : urls.filter((_, j) => j !== i);
  const t0 = Date.now();
  const mirrors = await Promise.all(
    dirs.map(async (d, i) => {
      const log = join(work, `${shape}-${i}.log`);
      const argv = ['mirror', 'serve', '--data', d, '--listen', `127.0.0.1:${ports[i]}`, '--trust', root];
      const peerArgs = peersOf(i).flatMap((u) => ['--peer', u]);
      const child = start(
        [
          process.execPath,
          FERRY,
          ...argv,
          '--site',
          'bench',
          ...peerArgs,
          '--peer-interval',
          '0.2',
          '--peer-rate',
          rate,
        ],
        log,
      );
      await ready(child, `${urls[i]}/healthz`, log);
      return log;
    }),
  );
  const done = async (log: string) => {
    for (;;) {
      const line = readFileSync(log, 'utf8')
        .split('\n')
        .find((l) => l.includes('"event":"peer.adopted"'));
      if (line) return Date.parse((JSON.parse(line) as { time: string }).time);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const ends = await Promise.all(mirrors.slice(1).map(done));
  await stopAll();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  return (Math.max(...ends) - t0) / 1000;
}

function courier(key: string) {
  const files = [
    { name: 'agent', size: 48 * MiB, seed: 1 },
    { name: 'app', size: 120 * MiB, seed: 2 },
    { name: 'policy', size: 64 * 1024, seed: 3 },
    { name: 'script', size: 4096, seed: 4 },
  ];
  const v1 = bundle('c1', 1, files);
  const full1 = join(work, 'c1.ferry');
  create(v1, key, full1);
  const data = join(work, 'courier-site');
  importInto(full1, data);
  const usb = join(work, 'usb');
  mkdirSync(usb);
  ferry(['mirror', 'export-telemetry', '--data', data, '--out', join(usb, 't.jsonl')]);
  const v2 = bundle(
    'c2',
    2,
    files.map((f) => (f.name === 'script' ? { ...f, seed: 9 } : f)),
  );
  const full2 = join(work, 'c2.ferry');
  const delta2 = join(work, 'c2.delta.ferry');
  create(v2, key, full2);
  const r = JSON.parse(create(v2, key, delta2, ['--have', join(usb, 't.jsonl.inventory.json')])) as {
    saved: { bytes: number };
  };
  return { full: statSync(full2).size, delta: statSync(delta2).size, saved: r.saved.bytes };
}

async function main() {
  for (const t of [NGINX, CURL])
    if (!existsSync(t)) throw new Error(`${t} is needed (apt-get install nginx-light curl)`);
  const key = setupTrust();
  const size = parseSize(a.size, 'size');
  const release = parseSize(a['release-size'], 'release-size');
  const blobs = Number(a.blobs);
  const rate = `${a['link-rate']}/s`;
  const only = a.only;
  if (only !== undefined && !['one', 'spread', 'courier'].includes(only))
    throw new Error(`--only takes one, spread or courier, not ${only}`);
  const run = (part: string) => only === undefined || only === part;
  // Each figure is printed as it is measured too: a long run that is cut short keeps what it had.
  const one = run('one') ? await onePeer(key, size) : undefined;
  if (one) console.error(`bench: one peer to one peer: ${JSON.stringify(one)}`);
  let spreadFig: { chainSec: number; meshSec: number } | undefined;
  if (run('spread')) {
    const chainSec = await spread(key, release, blobs, rate, 'chain');
    console.error(`bench: chain: ${chainSec} s`);
    const meshSec = await spread(key, release, blobs, rate, 'mesh');
    console.error(`bench: mesh: ${meshSec} s`);
    spreadFig = { chainSec, meshSec };
  }
  const c = run('courier') ? courier(key) : undefined;
  const result = {
    ...(one && { onePeer: one }),
    ...(spreadFig && {
      spread: { release, blobs, rate, ...spreadFig, speedup: spreadFig.chainSec / spreadFig.meshSec },
    }),
    ...(c && { courier: c }),
  };
  if (a.json) {
    console.log(JSON.stringify(result, null, 2));
    return;
  }
  const f = (n: number, d = 1) => n.toFixed(d);
  const rows: string[][] = [['test', 'ferry', 'baseline', 'ratio', 'target']];
  if (one)
    rows.push([
      `peer pull ${f(size / MiB, 0)} MiB (MiB/s)`,
      f(one.ferry),
      `curl+nginx ${f(one.curl)}`,
      f(one.ratio, 2),
      '≥ 0.80',
    ]);
  if (one)
    rows.push([
      `  the same, durable (MiB/s)`,
      f(one.ferry),
      `curl+nginx, fsync ${f(one.curlSync)}`,
      f(one.ratioSync, 2),
      '',
    ]);
  if (spreadFig) {
    const { meshSec: mesh, chainSec: chain } = spreadFig;
    rows.push([
      `release ${f(release / MiB, 0)} MiB in ${blobs} blobs to 6 mirrors at ${rate} per link (s)`,
      `mesh ${f(mesh)}`,
      `chain ${f(chain)}`,
      `${f(chain / mesh, 2)}× faster`,
      'mesh wins',
    ]);
  }
  if (c)
    rows.push([
      'one-artifact change: --have delta vs full bundle (bytes)',
      String(c.delta),
      String(c.full),
      `${f((1 - c.delta / c.full) * 100, 2)} % saved`,
      '',
    ]);
  printTable(rows);
}

try {
  await main();
} finally {
  await stopAll();
  rmSync(work, { recursive: true, force: true });
}
