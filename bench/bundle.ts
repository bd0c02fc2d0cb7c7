/**
 * Bundle create/verify speed and memory, as ratios against tar, sha256sum and openssl measured in the
 * same run. It prints a report and never fails on absolute times.
 *
 *   node dist/bench/bundle.js [--sizes 256M,1G] [--dir DIR] [--runs 3] [--json]
 */
import { spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync } from 'node:fs';
import { rmSync, statSync, statfsSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { parseSize } from '../bin/cli/common.js';
import { createBundle } from '../bundler/create.js';
import { loadSpec } from '../bundler/spec.js';
import { serializeEnvelope } from '../core/dsse.js';
import { generateKeyFiles, loadPrivateKey, type PrivateKey } from '../platform/keyfile.js';
import { buildRootPayload, signRoot } from '../core/root.js';
import { isoUtc } from '../core/time.js';
import { FERRY, printTable as columns } from './proc.js';

const TIME = '/usr/bin/time';
const CHUNK = 1024 * 1024;
const MiB = 1024 * 1024;
const RSS_LIMIT_MIB = 120;
const RSS_GROWTH_MIB = 16; // "independent of size": largest size may use at most this much more than smallest

type Sample = { s: number; rssMiB?: number };
type Row = ReturnType<typeof row>;

/** One comparison: ferry's median against a baseline's on the same bytes, with MiB/s for both. */
function row(size: number, op: string, f: Sample, baseline: string, b: Sample, bytes: number, t?: number) {
  const [ratio, mibs] = [f.s / b.s, { ferry: bytes / MiB / f.s, base: bytes / MiB / b.s }];
  const met = t === undefined ? undefined : ratio <= t;
  return { size, op, baseline, ferryS: f.s, baseS: b.s, ratio, target: t, met, mibs, rssMiB: f.rssMiB };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const maxOf = (xs: (number | undefined)[]) => {
  const known = xs.filter((x) => x !== undefined);
  return known.length && known.length === xs.length ? Math.max(...known) : undefined;
};
const fmtSize = (n: number) => (n % 1024 ** 3 === 0 ? `${n / 1024 ** 3}G` : `${Math.round(n / MiB)}M`);

/** GNU time writes the child's peak RSS (KiB) to a file, so stderr stays the child's own. */
const hasTime = existsSync(TIME) && spawnSync(TIME, ['-f', '%M', '-o', '/dev/null', 'true']).status === 0;
const RSS_METHOD = hasTime
  ? `${TIME} -f %M (peak RSS of each child process)`
  : `unavailable: ${TIME} not found (Debian package "time"); peak RSS not measured`;

function run(rssFile: string, cmd: string, args: string[]): Sample {
  const argv = hasTime ? [TIME, '-f', '%M', '-o', rssFile, cmd, ...args] : [cmd, ...args];
  const t0 = performance.now();
  const r = spawnSync(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  const s = (performance.now() - t0) / 1000;
  const why = r.error?.message ?? `exit ${r.status}: ${r.stderr.toString()}`;
  if (r.error || r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${why})`);
  if (!hasTime) return { s };
  const kib = Number(readFileSync(rssFile, 'utf8').trim().split('\n').at(-1));
  return { s, rssMiB: kib / 1024 };
}

/** Runs every op `runs` times, alternating order between runs to spread cache and frequency bias. */
async function measure(runs: number, ops: Record<string, () => Sample | Promise<Sample>>) {
  const names = Object.keys(ops);
  const out: Record<string, Sample[]> = Object.fromEntries(names.map((n) => [n, []]));
  for (let i = 0; i < runs; i++) {
    for (const n of i % 2 ? [...names].reverse() : names) out[n]!.push(await ops[n]!());
  }
  return (n: string) => ({ s: median(out[n]!.map((x) => x.s)), rssMiB: maxOf(out[n]!.map((x) => x.rssMiB)) });
}

const BIG = [
  { name: 'agent-x64', kind: 'agent', version: '2.0.0', platform: 'linux-x64' },
  { name: 'agent-arm64', kind: 'agent', version: '2.0.0', platform: 'linux-arm64' },
  { name: 'toolchain', kind: 'file', version: '1' },
  { name: 'dataset', kind: 'file', version: '1' },
];

/** Four large artifacts of fresh random bytes (incompressible, generated fast), a script and a policy. */
function writeArtifacts(dir: string, size: number): { files: string[]; specPath: string } {
  const buf = Buffer.alloc(CHUNK);
  for (const [i, a] of BIG.entries()) {
    const n = Math.floor(size / BIG.length) + (i === BIG.length - 1 ? size % BIG.length : 0);
    const fd = openSync(join(dir, a.name), 'w');
    try {
      for (let off = 0; off < n; off += CHUNK)
        writeSync(fd, randomFillSync(buf), 0, Math.min(CHUNK, n - off));
    } finally {
      closeSync(fd);
    }
  }
  writeFileSync(join(dir, 'cleanup'), '#!/bin/sh\nfind /var/tmp/acme -mtime +7 -delete\n');
  writeFileSync(join(dir, 'baseline'), JSON.stringify({ type: 'ferry.policy/v1', scripts: [] }));
  const artifacts = [
    ...BIG,
    { name: 'cleanup', kind: 'script', version: '1' },
    { name: 'baseline', kind: 'policy', version: '1' },
  ].map((a) => ({ ...a, path: a.name }));
  const spec = { publisher: 'bench', sequence: 1, expires: '30d', sites: ['bench'], artifacts };
  const specPath = join(dir, 'spec.json');
  writeFileSync(specPath, JSON.stringify(spec, null, 2));
  return { files: artifacts.map((a) => a.name), specPath };
}

/** Flushes the files (so their write-back does not compete with the runs), then reads them into page cache. */
const warm = (dir: string, files: string[]) =>
  spawnSync('sh', ['-c', 'sync "$@" && cat "$@" > /dev/null', 'sh', ...files], { cwd: dir, stdio: 'ignore' });

async function benchSize(
  work: string,
  size: number,
  c: { runs: number; keyPath: string; key: PrivateKey; rootPath: string },
): Promise<Row[]> {
  const dir = join(work, fmtSize(size));
  mkdirSync(dir);
  const rss = join(work, 'rss.txt');
  const { files, specPath } = writeArtifacts(dir, size);
  const [tarOut, cliOut, libOut, bundle] = ['out.tar', 'cli.ferry', 'lib.ferry', 'bundle.ferry'].map((f) =>
    join(dir, f),
  ) as [string, string, string, string];
  const rm = (p: string) => rmSync(p, { force: true });
  const removing = (p: string, s: Sample) => (rm(p), s); // outputs go at once so the disk does not fill
  const tarArgs = ['cf', tarOut, '-C', dir, ...files];
  warm(dir, files);
  const cli = (...args: string[]) => run(rss, process.execPath, [FERRY, 'bundle', ...args]);
  const create = await measure(c.runs, {
    tar: () => removing(tarOut, run(rss, 'tar', tarArgs)),
    tarSync: () => removing(tarOut, run(rss, 'sh', ['-c', 'tar "$@" && sync "$2"', 'sh', ...tarArgs])),
    cli: () =>
      removing(cliOut, cli('create', '--spec', specPath, '--key', c.keyPath, '--out', cliOut, '--json')),
    lib: async () => {
      const t0 = performance.now();
      await createBundle(await loadSpec(specPath, Date.now()), libOut, { signers: [c.key] });
      return removing(libOut, { s: (performance.now() - t0) / 1000 });
    },
  });
  await createBundle(await loadSpec(specPath, Date.now()), bundle, { signers: [c.key] });
  for (const f of files) rm(join(dir, f)); // inputs are done; free disk and page cache for the verify phase
  const bundleBytes = statSync(bundle).size;
  warm(dir, [bundle]);
  const verify = await measure(c.runs, {
    sha: () => run(rss, 'sha256sum', [bundle]),
    ossl: () => run(rss, 'openssl', ['dgst', '-sha256', bundle]),
    cli: () => cli('verify', bundle, '--trust', c.rootPath, '--json'),
  });
  rmSync(dir, { recursive: true, force: true });
  return [
    row(size, 'create (CLI)', create('cli'), 'tar cf', create('tar'), size, 1.2),
    row(size, 'create (in-process)', create('lib'), 'tar cf', create('tar'), size),
    row(size, 'create (CLI)', create('cli'), 'tar cf + sync', create('tarSync'), size),
    row(size, 'verify (CLI)', verify('cli'), 'sha256sum', verify('sha'), bundleBytes, 1.0),
    row(size, 'verify (CLI)', verify('cli'), 'openssl dgst -sha256', verify('ossl'), bundleBytes, 1.5),
  ];
}

/** Peak RSS below the limit at every size and flat from the smallest size to the largest. */
function rssCheck(rows: Row[]) {
  const per = (op: string) =>
    [...new Map(rows.filter((r) => r.op === op).map((r) => [r.size, r.rssMiB])).entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([size, mib]) => ({ size: fmtSize(size), mib }));
  const create = per('create (CLI)');
  const verify = per('verify (CLI)');
  const all = [create, verify];
  const known = all.every((xs) => xs.every((x) => x.mib !== undefined));
  const ok = (xs: { mib?: number }[]) =>
    xs.every((x) => x.mib! < RSS_LIMIT_MIB) && xs.at(-1)!.mib! - xs[0]!.mib! <= RSS_GROWTH_MIB;
  const met = known && all.every(ok);
  return { create, verify, limitMiB: RSS_LIMIT_MIB, maxGrowthMiB: RSS_GROWTH_MIB, met };
}

function printTable(rows: Row[], rss: ReturnType<typeof rssCheck>, runs: number): void {
  const f = (n: number, d = 2) => n.toFixed(d);
  const head = ['size', 'op', 'ferry s', 'baseline', 'base s', 'ratio', 'target', 'result'];
  const cells = rows.map((r) => [
    ...[fmtSize(r.size), r.op, f(r.ferryS, 3), r.baseline, f(r.baseS, 3), f(r.ratio)],
    r.target === undefined ? 'info' : `<= ${f(r.target, 1)}x`,
    r.met === undefined ? '-' : r.met ? 'met' : 'NOT MET',
    ...[f(r.mibs.ferry, 0), f(r.mibs.base, 0), r.rssMiB === undefined ? 'n/a' : f(r.rssMiB, 1)],
  ]);
  const all = [[...head, 'ferry MiB/s', 'base MiB/s', 'ferry peak RSS MiB'], ...cells];
  columns(all);
  const line = (xs: { size: string; mib?: number }[]) =>
    xs.map((x) => `${x.size}: ${x.mib === undefined ? 'n/a' : f(x.mib, 1)}`).join(', ');
  console.log(`\nmedian of ${runs} run(s); wall times of child processes include Node start-up`);
  console.log(`peak RSS via ${RSS_METHOD}`);
  console.log(`  create: ${line(rss.create)} MiB; verify: ${line(rss.verify)} MiB`);
  const verdict = rss.met ? 'met' : 'NOT MET';
  console.log(`  target < ${RSS_LIMIT_MIB} MiB, growth <= ${RSS_GROWTH_MIB} MiB across sizes: ${verdict}`);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      sizes: { type: 'string', default: '256M,1G' },
      dir: { type: 'string' },
      runs: { type: 'string', default: '3' },
      json: { type: 'boolean', default: false },
    },
  });
  const sizes = values.sizes.split(',').map((s) => parseSize(s.trim(), 'sizes'));
  const runs = Number(values.runs);
  if (!Number.isSafeInteger(runs) || runs < 1) throw new Error('--runs must be a positive integer');
  if (!existsSync(FERRY)) throw new Error(`${FERRY} not found; run npm run build first`);
  const base = resolve(values.dir ?? tmpdir());
  mkdirSync(base, { recursive: true });
  const st = statfsSync(base);
  const free = st.bavail * st.bsize;
  const need = 4 * Math.max(...sizes);
  if (free < need) {
    console.error(`bench: ${fmtSize(free)} free in ${base}; need ${fmtSize(need)} (4x the largest size)`);
    process.exitCode = 1;
    return;
  }
  const work = mkdtempSync(join(base, 'ferry-bench-'));
  const cleanup = () => rmSync(work, { recursive: true, force: true });
  process.once('SIGINT', () => {
    cleanup();
    process.exit(130);
  });
  try {
    const keys = join(work, 'keys');
    mkdirSync(keys);
    const rootKey = await loadPrivateKey((await generateKeyFiles(keys, 'root')).keyPath);
    const { keyPath } = await generateKeyFiles(keys, 'release');
    const key = await loadPrivateKey(keyPath);
    const expires = isoUtc(Date.now() + 365 * 86_400_000);
    const rootSpec = { version: 1, expires, rootKeys: [rootKey], rootThreshold: 1 };
    const payload = buildRootPayload({ ...rootSpec, bundleKeys: [key], bundleThreshold: 1 });
    const rootPath = join(work, 'root.json');
    writeFileSync(rootPath, serializeEnvelope(signRoot(payload, [rootKey])));
    const rows: Row[] = [];
    for (const size of sizes) {
      if (!values.json) console.error(`bench: ${fmtSize(size)} x ${runs} run(s) in ${work} ...`);
      rows.push(...(await benchSize(work, size, { runs, keyPath, key, rootPath })));
    }
    const rss = rssCheck(rows);
    const env = { node: process.version, totalMemMiB: Math.round(totalmem() / MiB), dir: work };
    if (values.json) console.log(JSON.stringify({ runs, rssMethod: RSS_METHOD, env, rows, rss }, null, 2));
    else printTable(rows, rss, runs);
  } finally {
    cleanup();
  }
}

await main();
