/**
 * Mirror HTTP serving against nginx on the same files from the same disk, in the same run:
 * blob download throughput (1 and 64 streams) and manifest polls by many agents with If-None-Match. One
 * load generator, wrk, measures both servers. It prints a report and never fails on absolute times.
 *
 *   node dist/bench/mirror.js [--blob-size 256M] [--duration 10] [--agents 1000] [--json]
 */
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { createHash, randomFillSync } from 'node:crypto';
import { chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync } from 'node:fs';
import { rmSync, statfsSync, writeFileSync, writeSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseSize } from '../bin/cli/common.js';
import { createBundle } from '../bundler/create.js';
import { loadSpec } from '../bundler/spec.js';
import { serializeEnvelope } from '../core/dsse.js';
import { generateKeyFiles, loadPrivateKey } from '../platform/keyfile.js';
import { buildRootPayload, signRoot } from '../core/root.js';
import { isoUtc } from '../core/time.js';
import { cpuSeconds, ferry, FERRY, freePort, printTable, ready, start, stopAll } from './proc.js';

const [NGINX, WRK, TASKSET] = ['/usr/sbin/nginx', '/usr/bin/wrk', '/usr/bin/taskset'];
const MiB = 1024 * 1024;
const [SITE, PUBLISHER] = ['bench', 'bench'];
const P99_MS = 20;
const PACE_MS = 1000;
/** Servers on CPU 0, wrk on CPU 1, so neither steals the other's core (when there are two). */
const PIN = cpus().length >= 2 && existsSync(TASKSET);
const pin = (cpu: number, argv: string[]) => (PIN ? [TASKSET, '-c', String(cpu), ...argv] : argv);

type Server = { name: 'ferry' | 'nginx'; url: string; pid: number; blob: string; manifest: string };
type Run = ReturnType<typeof parseRun>;

/** Installs a Debian package when the tool is missing and we are root; otherwise says how. */
function ensureTool(path: string, pkgs: string[]): boolean {
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const apt = (...a: string[]) => spawnSync('apt-get', a, { stdio: ['ignore', 2, 2], env }).status === 0;
  const root = process.getuid?.() === 0;
  for (const update of root ? [false, true] : []) {
    if (existsSync(path)) break;
    if (update) apt('update');
    pkgs.some((p) => apt('install', '-y', '--no-install-recommends', p));
  }
  if (existsSync(path)) return true;
  const how = root ? ' (apt-get install failed)' : `; run: sudo apt-get install ${pkgs[0]}`;
  console.error(`bench: ${path} not found${how}`);
  return false;
}

/** A signed bundle with one artifact of `size` random bytes, imported into a new data dir by the CLI. */
async function setupData(work: string, size: number): Promise<{ data: string; root: string; hex: string }> {
  const keys = join(work, 'keys');
  mkdirSync(keys);
  const rootKey = await loadPrivateKey((await generateKeyFiles(keys, 'root')).keyPath);
  const key = await loadPrivateKey((await generateKeyFiles(keys, 'release')).keyPath);
  const expires = isoUtc(Date.now() + 365 * 86_400_000);
  const rootSpec = { version: 1, expires, rootKeys: [rootKey], rootThreshold: 1 };
  const root = join(work, 'root.json');
  const payload = buildRootPayload({ ...rootSpec, bundleKeys: [key], bundleThreshold: 1 });
  writeFileSync(root, serializeEnvelope(signRoot(payload, [rootKey])));
  const [art, specPath, bundle, data] = ['payload', 'spec.json', 'b.ferry', 'data'].map((f) => join(work, f));
  const [buf, hash, fd] = [Buffer.alloc(MiB), createHash('sha256'), openSync(art!, 'w')];
  for (let off = 0; off < size; off += MiB) {
    const chunk = randomFillSync(buf).subarray(0, Math.min(MiB, size - off));
    hash.update(chunk);
    writeSync(fd, chunk);
  }
  closeSync(fd);
  const artifacts = [{ name: 'payload', kind: 'file', version: '1', path: 'payload' }];
  const spec = { publisher: PUBLISHER, sequence: 1, expires: '30d', sites: [SITE], artifacts };
  writeFileSync(specPath!, JSON.stringify(spec));
  await createBundle(await loadSpec(specPath!, Date.now()), bundle!, { signers: [key] });
  rmSync(art!);
  const args = ['mirror', 'import', bundle!, '--data', data!, '--trust', root, '--site', SITE];
  ferry(args);
  rmSync(bundle!);
  const hex = hash.digest('hex');
  const blob = join(data!, 'blobs/sha256', hex);
  if (!existsSync(blob)) throw new Error(`import did not store blob ${hex}`);
  spawnSync('sh', ['-c', 'sync && cat "$1" > /dev/null', 'sh', blob]); // flushed, then in page cache
  return { data: data!, root, hex };
}

async function startFerry(work: string, d: { data: string; root: string; hex: string }): Promise<Server> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const argv = ['mirror', 'serve', '--data', d.data, '--listen', `127.0.0.1:${port}`];
  const log = join(work, 'ferry.log');
  const child = start(pin(0, [process.execPath, FERRY, ...argv, '--trust', d.root, '--site', SITE]), log);
  await ready(child, `${url}/healthz`, log);
  return { name: 'ferry', url, pid: child.pid!, blob: `/v1/blobs/sha256/${d.hex}`, manifest: '/v1/manifest' };
}

/** nginx with a minimal config: one worker, no access log, sendfile, root = the mirror's data dir. */
async function startNginx(work: string, d: { data: string; hex: string }, agents: number): Promise<Server> {
  const [port, prefix] = [await freePort(), join(work, 'nginx')];
  mkdirSync(prefix);
  const temps = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `${t}_temp_path ${prefix};`);
  const conf = join(prefix, 'nginx.conf');
  writeFileSync(
    conf,
    `daemon off;\nworker_processes 1;\nworker_rlimit_nofile ${agents + 4096};\npid ${prefix}/nginx.pid;\n` +
      `events { worker_connections ${agents + 1024}; }\nhttp {\n  access_log off;\n  sendfile on;\n` +
      `  etag on;\n  keepalive_requests 100000000;\n  default_type application/octet-stream;\n` +
      `  ${temps.join(' ')}\n  server { listen 127.0.0.1:${port}; root ${d.data}; }\n}\n`,
  );
  const log = join(prefix, 'error.log');
  const child = start(pin(0, [NGINX, '-e', log, '-c', conf, '-p', prefix]), log);
  const url = `http://127.0.0.1:${port}`;
  const manifest = `/manifests/${PUBLISHER}/1.dsse.json`; // the very file the mirror serves as /v1/manifest
  await ready(child, url + manifest, log, { method: 'HEAD' });
  const kidsFile = `/proc/${child.pid}/task/${child.pid}/children`; // the worker, whose CPU time we want
  const kids = existsSync(kidsFile) ? readFileSync(kidsFile, 'utf8').trim().split(' ') : [];
  return { name: 'nginx', url, pid: Number(kids[0]) || child.pid!, blob: `/blobs/sha256/${d.hex}`, manifest };
}

/** wrk reports through Lua; response() counts non-304s but makes wrk buffer bodies, so polls only. */
const luaScript = (countStatus: boolean, paceMs?: number) =>
  `local threads = {}\nfunction setup(t) table.insert(threads, t) end\nfunction init() non304 = 0 end\n` +
  // paced: each connection (agent) waits paceMs between polls, as real agents do
  (paceMs ? `function delay() return ${paceMs} end\n` : '') +
  (countStatus ? 'function response(status) if status ~= 304 then non304 = non304 + 1 end end\n' : '') +
  `function done(s, lat)\n  local n = 0\n` +
  `  for _, t in ipairs(threads) do n = n + (t:get("non304") or 0) end\n` +
  `  io.write(string.format('BENCH {"requests":%.0f,"bytes":%.0f,"us":%.0f,"p50":%.0f,"p99":%.0f,` +
  `"errors":%.0f,"non304":%.0f}\\n', s.requests, s.bytes, s.duration, lat:percentile(50),` +
  ` lat:percentile(99), s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout, n))\nend\n`;

function parseRun(out: string, serverCpu: number, wrkCpu: number) {
  const line = out.split('\n').find((l) => l.startsWith('BENCH '));
  if (!line) throw new Error(`wrk printed no result:\n${out}`);
  const r = JSON.parse(line.slice(6)) as Record<string, number>;
  const s = r.us! / 1e6;
  const pct = (cpu: number) => Math.round((100 * cpu) / s);
  return {
    ...{ seconds: s, requests: r.requests!, bytes: r.bytes!, socketErrors: r.errors!, non304: r.non304! },
    ...{ mibs: r.bytes! / MiB / s, rps: r.requests! / s, p50ms: r.p50! / 1000, p99ms: r.p99! / 1000 },
    cpuPct: { server: pct(serverCpu), wrk: pct(wrkCpu) },
  };
}

async function wrk(
  work: string,
  srv: Server,
  path: string,
  conns: number,
  secs: number,
  headers: string[],
  paceMs?: number,
) {
  const [script, out] = [join(work, 'wrk.lua'), join(work, 'wrk.out')];
  writeFileSync(script, luaScript(headers.length > 0, paceMs));
  writeFileSync(out, '');
  const timeout = headers.length ? '30s' : '600s'; // wrk counts (only counts) requests older than this
  const args = ['-t1', `-c${conns}`, `-d${secs}s`, '--timeout', timeout, '-s', script];
  const argv = pin(1, [WRK, ...args, ...headers.flatMap((h) => ['-H', h]), srv.url + path]);
  const [s0, w0] = [cpuSeconds(srv.pid), cpuSeconds('self', true)];
  const child = start(argv, out);
  const [code] = (await once(child, 'exit')) as [number | null];
  if (code !== 0) throw new Error(`wrk failed (exit ${code}): ${readFileSync(out, 'utf8')}`);
  return parseRun(readFileSync(out, 'utf8'), cpuSeconds(srv.pid) - s0, cpuSeconds('self', true) - w0);
}

/** The server's ETag for its manifest, checked to produce a 304 when sent back. */
async function manifestEtag(srv: Server): Promise<string> {
  const etag = (await fetch(srv.url + srv.manifest)).headers.get('etag') ?? '';
  const again = await fetch(srv.url + srv.manifest, { headers: { 'If-None-Match': etag } });
  if (again.status !== 304) throw new Error(`${srv.name}: manifest ETag '${etag}' does not give 304`);
  return etag;
}

type Row = ReturnType<typeof row>;
const row = (t: { test: string; unit: string; target: number }, ferry: Run, nginx: Run) => {
  const ratio = t.unit === 'req/s' ? ferry.rps / nginx.rps : ferry.mibs / nginx.mibs;
  return { test: t.test, unit: t.unit, ferry, nginx, ratio, target: t.target, met: ratio >= t.target };
};

async function bench(work: string, servers: Server[], o: { duration: number; agents: number }) {
  const rows: Row[] = [];
  const warm = Math.min(2, o.duration);
  const tests = [
    { test: 'blob, 1 stream', unit: 'MiB/s', conns: 1, poll: false, target: 0.8 },
    { test: 'blob, 64 streams', unit: 'MiB/s', conns: 64, poll: false, target: 0.8 },
    { test: `manifest, ${o.agents} agents`, unit: 'req/s', conns: o.agents, poll: true, target: 0.5 },
  ];
  for (const [i, t] of tests.entries()) {
    const runs: Partial<Record<Server['name'], Run>> = {};
    for (const srv of i % 2 ? [...servers].reverse() : servers) {
      const hdr = t.poll ? [`If-None-Match: ${await manifestEtag(srv)}`] : [];
      const path = t.poll ? srv.manifest : srv.blob;
      await wrk(work, srv, path, t.conns, warm, hdr);
      runs[srv.name] = await wrk(work, srv, path, t.conns, o.duration, hdr);
    }
    rows.push(row(t, runs.ferry!, runs.nginx!));
  }
  const polls = rows.at(-1)!;
  const p99 = { limitMs: P99_MS, ferry: polls.ferry.p99ms < P99_MS, nginx: polls.nginx.p99ms < P99_MS };
  // The same agents polling once every PACE_MS, as deployed agents do (with a 30 s interval, far less):
  // latency under a realistic load rather than at saturation.
  const paced: Partial<Record<Server['name'], Run>> = {};
  for (const srv of servers) {
    const hdr = [`If-None-Match: ${await manifestEtag(srv)}`];
    paced[srv.name] = await wrk(work, srv, srv.manifest, o.agents, o.duration, hdr, PACE_MS);
  }
  return { rows, p99, paced: { ferry: paced.ferry!, nginx: paced.nginx! } };
}

function printReport(r: Awaited<ReturnType<typeof bench>>, o: { blobSize: number; duration: number }) {
  const f = (n: number, d = 0) => n.toFixed(d);
  const val = (row: Row, x: Run) => (row.unit === 'req/s' ? x.rps : x.mibs);
  const head = [...'test unit ferry nginx ratio target result'.split(' '), 'CPU % srv/wrk: ferry', 'nginx'];
  const cells = r.rows.map((row) => [
    ...[row.test, row.unit, f(val(row, row.ferry)), f(val(row, row.nginx)), f(row.ratio, 2)],
    ...[`>= ${row.target}x`, row.met ? 'met' : 'NOT MET'],
    ...[row.ferry, row.nginx].map(({ cpuPct: c }) => `${c.server}/${c.wrk}${c.wrk >= 90 ? '*' : ''}`),
  ]);
  printTable([head, ...cells]);
  if (cells.some((c) => c.slice(-2).some((x) => x.endsWith('*'))))
    console.log('* wrk used >= 90% of its core: that round measured wrk too; the server may be faster');
  const p = r.rows.at(-1)!;
  const lat = (x: Run, met: boolean) =>
    `p50 ${f(x.p50ms, 1)} ms, p99 ${f(x.p99ms, 1)} ms (p99 < ${P99_MS} ms: ${met ? 'met' : 'NOT MET'})`;
  console.log(
    `\nmanifest latency at saturation: ferry ${lat(p.ferry, r.p99.ferry)}; nginx ${lat(p.nginx, r.p99.nginx)}`,
  );
  const q = r.paced;
  const rate = (x: Run) => `${f(x.rps, 0)} req/s`;
  console.log(
    `manifest latency, each agent polling every ${PACE_MS} ms: ferry ${rate(q.ferry)}, ${lat(q.ferry, q.ferry.p99ms < P99_MS)}; ` +
      `nginx ${rate(q.nginx)}, ${lat(q.nginx, q.nginx.p99ms < P99_MS)}`,
  );
  const st = (x: Run) => `${f(x.non304)} non-304 of ${f(x.requests)}, ${x.socketErrors} socket errors`;
  console.log(`manifest statuses: ferry ${st(p.ferry)}; nginx ${st(p.nginx)}`);
  const moved = r.rows.slice(0, 2).map((x) => `${f(x.ferry.bytes / MiB)}/${f(x.nginx.bytes / MiB)}`);
  console.log(`blob MiB received ferry/nginx: ${moved.join(', ')}`);
  const pinned = PIN ? ', pinned to CPU 0' : ' (not pinned: taskset missing or one CPU)';
  const notes = [
    `\nBoth servers run as one process${pinned}: nginx with worker_processes 1 (sendfile on, access_log off),`,
    'ferry as one Node process (`ferry mirror serve`; its libuv threads share that core). Load generator:',
    `wrk -t1${PIN ? ' on CPU 1' : ''}, the same for both servers; CPU % is of one core.`,
    `One ${f(o.blobSize / MiB)} MiB blob; each round ${o.duration} s after a warm-up, order alternating;`,
    'bytes of downloads cut off at the end of a round count.',
    'Polls are a closed loop (an agent polls again once answered): latency ≈ agents ÷ req/s.',
  ];
  console.log(notes.join('\n'));
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'blob-size': { type: 'string', default: '256M' },
      duration: { type: 'string', default: '10' },
      agents: { type: 'string', default: '1000' },
      json: { type: 'boolean', default: false },
    },
  });
  const blobSize = parseSize(values['blob-size'], 'blob-size');
  const [duration, agents] = [Number(values.duration), Number(values.agents)];
  if (!Number.isSafeInteger(duration) || duration < 1) throw new Error('--duration must be whole seconds');
  if (!Number.isSafeInteger(agents) || agents < 1) throw new Error('--agents must be a positive integer');
  if (!existsSync(FERRY)) throw new Error(`${FERRY} not found; run npm run build first`);
  if (!ensureTool(NGINX, ['nginx-light', 'nginx']) || !ensureTool(WRK, ['wrk'])) {
    process.exitCode = 1;
    return;
  }
  const st = statfsSync(tmpdir());
  if (st.bavail * st.bsize < 3 * blobSize + 64 * MiB)
    throw new Error(`need 3x blob size free in ${tmpdir()}`);
  const work = mkdtempSync(join(tmpdir(), 'ferry-bench-mirror-'));
  chmodSync(work, 0o755); // nginx workers started by root run as nobody
  const cleanup = async () => {
    await stopAll();
    rmSync(work, { recursive: true, force: true });
  };
  process.once('SIGINT', () => void cleanup().finally(() => process.exit(130)));
  try {
    if (!values.json) console.error(`bench: ${values['blob-size']} blob, ${duration} s rounds in ${work}`);
    const d = await setupData(work, blobSize);
    const servers = [await startFerry(work, d), await startNginx(work, d, agents)];
    const r = await bench(work, servers, { duration, agents });
    const env = { node: process.version, cpus: cpus().length, pinned: PIN, nginx: NGINX, wrk: WRK };
    if (values.json) console.log(JSON.stringify({ blobSize, duration, agents, env, ...r }, null, 2));
    else printReport(r, { blobSize, duration });
  } finally {
    await cleanup();
  }
}

await main();
