/**
 * What a new user meets first, through the built `ferry` binary: a path that
 * is missing, a directory or not a bundle gets one line naming the path and a
 * stable code (never a stack trace, on a terminal or not) and nothing is
 * written; group help shows whole summaries; a progress line on a terminal
 * ends at 100 % on a line of its own. Terminals are real pseudo-TTYs from
 * `script -qc`.
 */
import { execFile } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildBundle, ferry, FERRY_BIN, snapshotDir } from './helpers/fixtures.js';
import { haveProgram } from './helpers/system.js';
import { useWorld } from './helpers/world.js';

const w = useWorld();
const HAVE_SCRIPT = haveProgram('script');

const json = (s: string) => JSON.parse(s) as Record<string, unknown>;
const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** Runs `ferry ARGS...` under a pseudo-terminal; returns everything it printed (stdout and stderr, as a TTY shows them). */
function ferryOnTty(args: string[], cwd: string): Promise<{ code: number; output: string }> {
  const cmd = [process.execPath, FERRY_BIN, ...args].map(quote).join(' ');
  return new Promise((resolve, reject) => {
    execFile(
      'script',
      ['-qec', cmd, '/dev/null'],
      { cwd, maxBuffer: 16 * 1024 * 1024, env: { ...process.env, TERM: 'dumb' } },
      (err, stdout) => {
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
        if (err && typeof err.code !== 'number') reject(new Error(err.message));
        else resolve({ code, output: stdout.replace(/\r\n/g, '\n') });
      },
    );
  });
}

async function paths() {
  const dir = join(w.dir, 'paths');
  await mkdir(join(dir, 'a-directory'), { recursive: true });
  await writeFile(join(dir, 'notes.ferry'), 'these are my notes, not a bundle\n');
  await writeFile(join(dir, 'empty.ferry'), '');
  await writeFile(join(dir, 'random.ferry'), Buffer.alloc(4096, 0x5a));
  return dir;
}

describe('a path that is not a bundle', () => {
  const cases: { what: string; file: string; code: string; message: RegExp }[] = [
    { what: 'missing', file: 'missing.ferry', code: 'NOT_FOUND', message: /missing\.ferry does not exist/ },
    {
      what: 'a directory',
      file: 'a-directory',
      code: 'NOT_A_FILE',
      message: /a-directory is a directory; expected a \.ferry bundle file/,
    },
    {
      what: 'a text file',
      file: 'notes.ferry',
      code: 'NOT_A_BUNDLE',
      message: /notes\.ferry is not a ferry bundle \(no manifest\.dsse\.json first\)/,
    },
    { what: 'empty', file: 'empty.ferry', code: 'NOT_A_BUNDLE', message: /empty\.ferry is empty/ },
    {
      what: 'random bytes',
      file: 'random.ferry',
      code: 'NOT_A_BUNDLE',
      message: /random\.ferry is not a ferry bundle/,
    },
  ];
  const commands = (file: string, dir: string): [string, string[]][] => [
    ['bundle verify', ['bundle', 'verify', file, '--trust', w.rootPath]],
    ['bundle inspect', ['bundle', 'inspect', file]],
    ['bundle sign', ['bundle', 'sign', file, '--key', join(w.keyDir, 'release.key')]],
    ['bundle create --base', ['bundle', 'create', '--spec', 'x', '--key', 'k', '--out', 'o', '--base', file]],
    [
      'mirror import',
      ['mirror', 'import', file, '--data', join(dir, 'data'), '--trust', w.rootPath, '--site', 'plant-7'],
    ],
  ];

  for (const c of cases) {
    it(`${c.what}: every command refuses with ${c.code} in one line naming the path, and writes nothing`, async () => {
      const dir = await paths();
      const before = await snapshotDir(dir);
      for (const [name, args] of commands(c.file, dir)) {
        const r = await ferry(args, { cwd: dir });
        expect(r.code, `${name}: ${r.stderr}`).toBe(1);
        expect(r.stderr, name).toMatch(new RegExp(`^ferry: ${c.code}: `));
        expect(r.stderr, name).toMatch(c.message);
        expect(r.stderr.trim().split('\n'), name).toHaveLength(1);
        expect(r.stdout, name).toBe('');
        const j = await ferry([...args, '--json'], { cwd: dir });
        expect(json(j.stdout), name).toMatchObject({ ok: false, code: c.code });
      }
      expect(await snapshotDir(dir)).toEqual(before); // no data dir, no temp file, the inputs untouched
    });
  }

  it.skipIf(!HAVE_SCRIPT)(
    'on a terminal too: one line, no stack trace (verify, inspect, import)',
    async () => {
      const dir = await paths();
      for (const args of [
        ['bundle', 'verify', 'missing.ferry', '--trust', w.rootPath],
        ['bundle', 'inspect', 'a-directory'],
        ['mirror', 'import', 'notes.ferry', '--data', 'data', '--trust', w.rootPath, '--site', 'plant-7'],
      ]) {
        const r = await ferryOnTty(args, dir);
        expect(r.code).toBe(1);
        expect(r.output).toMatch(/^ferry: (NOT_FOUND|NOT_A_FILE|NOT_A_BUNDLE): /);
        expect(r.output).not.toMatch(/node:events|Unhandled|\n\s+at /);
        expect(r.output.trim().split('\n')).toHaveLength(1);
      }
    },
  );

  it('bundle create refuses an --out that is a directory or in a missing directory before reading anything', async () => {
    const dir = await paths();
    const before = await snapshotDir(dir);
    const key = join(w.keyDir, 'release.key');
    const spec = join(dir, 'no-spec-needed.json');
    const isDir = await ferry(['bundle', 'create', '--spec', spec, '--key', key, '--out', 'a-directory'], {
      cwd: dir,
    });
    expect(isDir.code).toBe(1);
    expect(isDir.stderr).toMatch(/^ferry: NOT_A_FILE: --out a-directory is a directory/);
    const noDir = await ferry([
      'bundle',
      'create',
      '--spec',
      spec,
      '--key',
      key,
      '--out',
      join(dir, 'nope', 'b.ferry'),
    ]);
    expect(noDir.code).toBe(1);
    expect(noDir.stderr).toMatch(/^ferry: NOT_FOUND: .*nope does not exist/);
    const noSpec = await ferry(['bundle', 'create', '--spec', spec, '--key', key, '--out', 'b.ferry'], {
      cwd: dir,
    });
    expect(noSpec.code).toBe(1);
    expect(noSpec.stderr).toMatch(/^ferry: NOT_FOUND: .*no-spec-needed\.json does not exist/);
    const specDir = await ferry(
      ['bundle', 'create', '--spec', 'a-directory', '--key', key, '--out', 'b.ferry'],
      {
        cwd: dir,
      },
    );
    expect(specDir.stderr).toMatch(/^ferry: NOT_A_FILE: a-directory is a directory; expected a bundle spec/);
    expect(await snapshotDir(dir)).toEqual(before);
  });
});

describe('a trust root that is not there', () => {
  it('bundle verify --trust names it with NOT_FOUND or NOT_A_FILE', async () => {
    const dir = await paths();
    const missing = await ferry(['bundle', 'verify', 'notes.ferry', '--trust', 'no-root.json'], { cwd: dir });
    expect(missing.code).toBe(1);
    expect(missing.stderr).toBe('ferry: NOT_FOUND: no-root.json does not exist\n');
    const isDir = await ferry(['bundle', 'verify', 'notes.ferry', '--trust', 'a-directory'], { cwd: dir });
    expect(isDir.stderr).toBe(
      'ferry: NOT_A_FILE: a-directory is a directory; expected a trust root (root.json)\n',
    );
  });
});

/** Runs `fn` over `items`, four at a time, results in order. */
async function inBatches<T, R>(items: readonly T[], fn: (x: T) => Promise<R>): Promise<R[]> {
  const out: R[] = [];
  for (let i = 0; i < items.length; i += 4) out.push(...(await Promise.all(items.slice(i, i + 4).map(fn))));
  return out;
}

describe('group help', () => {
  it('shows every summary whole, wrapped, for every group', async () => {
    const top = await ferry(['--help']);
    const groups = [...new Set([...top.stdout.matchAll(/^ {2}ferry (\S+) /gm)].map((m) => m[1]!))];
    expect(groups).toEqual(expect.arrayContaining(['bundle', 'agent', 'mirror', 'server', 'trust', 'keys']));
    // every group, then every command of it: one process each, a few at a time (there are dozens)
    const groupHelp = await inBatches(groups, (g) => ferry([g, '--help']));
    const checks: { g: string; n: string; flat: string }[] = [];
    groups.forEach((g, i) => {
      const r = groupHelp[i]!;
      expect(r.code, g).toBe(0);
      for (const line of r.stdout.split('\n')) {
        if (line.startsWith('    ')) expect(line.length, `${g}: ${line}`).toBeLessThanOrEqual(100);
      }
      // each command's own --help carries the full summary: group help must hold every word of it
      // a command's name is one word, or two for families such as `mirror token create`
      const names = [
        ...r.stdout.matchAll(new RegExp(`^ferry ${g} (\\S+(?: [a-z][a-z-]*(?= ))?) `, 'gm')),
      ].map((m) => m[1]!);
      expect(names.length, g).toBeGreaterThan(0);
      const flat = r.stdout.replace(/\s+/g, ' ');
      for (const n of names) checks.push({ g, n, flat });
    });
    const own = await inBatches(checks, ({ g, n }) => ferry([g, ...n.split(' '), '--help']));
    checks.forEach(({ g, n, flat }, i) => {
      const summary = own[i]!.stdout.split('\n\n').slice(1).join(' ').replace(/\s+/g, ' ').trim();
      expect(summary.length, `${g} ${n}`).toBeGreaterThan(0);
      expect(flat, `${g} ${n}`).toContain(summary);
    });
  }, 300_000);
});

describe.skipIf(!HAVE_SCRIPT)('progress on a terminal', () => {
  it('verify and mirror import end their progress line at 100 % before the report; quiet when not a terminal', async () => {
    const dir = join(w.dir, 'progress');
    await mkdir(dir, { recursive: true });
    const big = Buffer.alloc(65 * 1024 * 1024, 0x61); // over the 64 MiB a progress line needs
    const r = await buildBundle(w, join(dir, 'big.ferry'), {
      artifacts: [{ name: 'big-file', kind: 'file', content: big }],
    });
    const file = r.volumes[0]!.path;

    const verify = await ferryOnTty(['bundle', 'verify', file, '--trust', w.rootPath], dir);
    expect(verify.code).toBe(0);
    const vLines = verify.output.split('\n');
    const bar = vLines.find((l) => l.includes('verifying ['))!;
    expect(bar, verify.output).toBeDefined();
    expect(bar.split('\r').at(-1)).toMatch(/^verifying \[#{30}\] 100% /);
    expect(vLines[vLines.indexOf(bar) + 1]).toMatch(/^big\.ferry|^\//); // the report starts on its own line
    expect(verify.output).toMatch(/\nOK: bundle verified\n/);

    const data = join(dir, 'data');
    const imp = await ferryOnTty(
      ['mirror', 'import', file, '--data', data, '--trust', w.rootPath, '--site', 'plant-7'],
      dir,
    );
    expect(imp.code, imp.output).toBe(0);
    const iLines = imp.output.split('\n');
    const iBar = iLines.find((l) => l.includes('importing ['))!;
    expect(iBar, imp.output).toBeDefined();
    expect(iBar.split('\r').at(-1)).toMatch(/^importing \[#{30}\] 100% /);
    expect(iLines[iLines.indexOf(iBar) + 1]).toMatch(/acme-ops sequence 1 active/);

    const quiet = await ferry(['bundle', 'verify', file, '--trust', w.rootPath]);
    expect(quiet.code).toBe(0);
    expect(quiet.stderr).toBe('');
    const again = await ferry(['mirror', 'import', file, '--data', data]);
    expect(again.code).toBe(0);
    expect(again.stderr).toBe('');
    expect(await readFile(file)).toHaveLength(r.volumes[0]!.bytes);
  }, 60_000);
});
