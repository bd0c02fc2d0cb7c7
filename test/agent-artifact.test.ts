/**
 * The agent artifact: `npm run build:agent` makes one self-contained executable
 * file. Built here into a temp path with a stamped version, copied alone into
 * an empty directory and run from there by its shebang: against a real mirror
 * (to make a real state directory and measure idle RSS), and `self-test`
 * against that state directory and against copies broken in the ways a
 * staged binary must notice.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, copyFile, cp, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  eventually,
  importInto,
  OPEN_ENROLMENT,
  startMirrorAt,
  type MirrorAt,
} from './helpers/agent-proc.js';
import { buildBundle, makeWorld, REPO, snapshotDir, type World } from './helpers/fixtures.js';
import { killStrays, sleep } from './helpers/mirror-proc.js';

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

const children = new Set<ChildProcess>();

function start(cmd: string, args: string[], cwd?: string) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(cwd && { cwd }) });
  children.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<Ran>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => {
      children.delete(child);
      resolve({ code, stdout, stderr });
    });
  });
  return { child, done, stderr: () => stderr };
}

const run = (cmd: string, args: string[], cwd?: string) => start(cmd, args, cwd).done;

/** The JSON log lines a child wrote to stderr so far. */
const logLines = (stderr: string) =>
  stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);

const rssKiB = async (pid: number) =>
  Number(/^VmRSS:\s+(\d+) kB$/m.exec(await readFile(`/proc/${pid}/status`, 'utf8'))?.[1]);

let w: World;
let built: string; // where the build wrote it
let lone: string; // the same file, alone in an otherwise empty directory
let mirror: MirrorAt | undefined;
let state: string;

beforeAll(async () => {
  w = await makeWorld();
  built = join(w.dir, 'build', 'ferry-agent');
  const r = await run(process.execPath, [
    join(REPO, 'scripts', 'build-agent.mjs'),
    '--version',
    '9.8.7',
    '--out',
    built,
  ]);
  if (r.code !== 0) throw new Error(`build:agent failed: ${r.stdout}${r.stderr}`);
  console.log(r.stdout.trim());
  await mkdir(join(w.dir, 'lone'));
  lone = join(w.dir, 'lone', 'ferry-agent');
  await copyFile(built, lone);
  await chmod(lone, 0o755); // as an installer would
});

afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  await mirror?.stop();
  await killStrays();
  await w.cleanup();
});

describe('dist/ferry-agent, the single-file agent', () => {
  it('is one executable file under 1 MiB with the stamped version and none of the mirror or operator deps', async () => {
    const st = await stat(built);
    expect(st.mode & 0o777).toBe(0o755);
    expect(st.size).toBeLessThan(1024 * 1024);
    console.log(`ferry-agent bundle: ${st.size} bytes (${(st.size / 1024).toFixed(1)} KiB)`);
    const text = await readFile(built, 'utf8');
    expect(text.startsWith('#!/usr/bin/env -S node --lite-mode --no-expose-wasm\n')).toBe(true);
    for (const s of ['libsodium', 'koa', 'chokidar']) expect(text.toLowerCase()).not.toContain(s);
    expect(text).not.toMatch(/\bfrom\s+["'](?!node:)[^"']+["']/); // no import left to resolve at run time

    const v = await run(built, ['version']);
    expect(v).toMatchObject({ code: 0, stdout: '9.8.7\n', stderr: '' }); // no V8 flag warning either
    // help and usage errors name the program the operator typed
    const h = await run(built, ['run', '--help']);
    expect(h.code).toBe(0);
    expect(h.stdout).toMatch(/^Usage: ferry-agent run \[--config FILE\]/);
    const bad = await run(built, ['status', '--colour', 'blue']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^ferry-agent: USAGE: .*\nusage: ferry-agent status --state DIR/);
  });

  it('runs alone in an empty directory: version, and a real agent against a real mirror (idle RSS)', async () => {
    const cwd = join(w.dir, 'lone');
    expect(await run(lone, ['version'], cwd)).toMatchObject({ code: 0, stdout: '9.8.7\n' });
    expect(await run(lone, ['--version'], cwd)).toMatchObject({ code: 0, stdout: '9.8.7\n' });

    const data = join(w.dir, 'mirror');
    state = join(w.dir, 'agent');
    const b = await buildBundle(w, join(w.dir, 's1.ferry'), {
      artifacts: [{ name: 'ferry-agent', kind: 'agent', version: '9.8.7', content: await readFile(built) }],
    });
    await importInto(data, b.volumes[0]!.path, w.rootPath);
    mirror = await startMirrorAt(data, 0, OPEN_ENROLMENT);

    const agent = start(
      lone,
      ['run', '--state', state, '--mirror', mirror.url, '--trust', w.rootPath, '--site', 'plant-7'],
      cwd,
    );
    const cycled = await eventually('a first full agent cycle', () =>
      Promise.resolve(logLines(agent.stderr()).find((l) => l.event === 'agent.cycle')),
    );
    // two heartbeats: the doctor's first summary goes in one of its own, then the cycle's
    expect(cycled).toMatchObject({ sync: 'updated', sequence: 1, sent: 2 });
    expect(logLines(agent.stderr()).some((l) => l.event === 'agent.enrolled')).toBe(true);

    // env exec'd node by the shebang, so with --lite-mode
    expect((await readFile(`/proc/${agent.child.pid}/cmdline`, 'utf8')).split('\0')).toContain('--lite-mode');

    // idle between polls (30 s by default): sample RSS for ~10 s
    const samples: number[] = [];
    for (let i = 0; i < 10; i++) {
      await sleep(1000);
      samples.push(await rssKiB(agent.child.pid!));
    }
    const max = Math.max(...samples);
    console.log(
      `ferry-agent run idle RSS over ${samples.length} s: last ${(samples.at(-1)! / 1024).toFixed(1)} MiB, ` +
        `max ${(max / 1024).toFixed(1)} MiB (samples KiB: ${samples.join(' ')})`,
    );
    expect(max).toBeLessThan(80 * 1024);

    agent.child.kill('SIGTERM');
    expect((await agent.done).code).toBe(0);
    await mirror.stop();
    mirror = undefined;
  });
});

describe('ferry-agent self-test', () => {
  /** A copy of the real state directory, broken by `breakIt`. */
  async function brokenCopy(name: string, breakIt: (dir: string) => Promise<void>): Promise<string> {
    const dir = join(w.dir, `st-${name}`);
    await cp(state, dir, { recursive: true });
    await breakIt(dir);
    return dir;
  }

  /** Runs self-test on `dir` and proves it changed nothing there. */
  async function selfTest(dir: string): Promise<Ran> {
    const before = await snapshotDir(dir);
    const r = await run(lone, ['self-test', '--state', dir], join(w.dir, 'lone'));
    expect(await snapshotDir(dir)).toEqual(before);
    return r;
  }

  it('passes on the state directory the agent left', async () => {
    const r = await selfTest(state);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(
      /^self-test ok: ferry-agent 9\.8\.7; state site plant-7, sequence 1; key [0-9a-f]{32}; root v1 \(chain of 1\)\n$/,
    );
  });

  it('fails on a corrupted state.json', async () => {
    const dir = await brokenCopy('json', async (d) => {
      const text = await readFile(join(d, 'state.json'), 'utf8');
      await writeFile(join(d, 'state.json'), text.slice(0, text.length / 2), { mode: 0o600 });
    });
    const r = await selfTest(dir);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      'self-test FAILED: state: IO_ERROR: agent state: state.json is not valid JSON',
    );
  });

  it('fails on a state.json that parses but is malformed', async () => {
    const dir = await brokenCopy('field', async (d) => {
      const s = JSON.parse(await readFile(join(d, 'state.json'), 'utf8')) as Record<string, unknown>;
      await writeFile(join(d, 'state.json'), JSON.stringify({ ...s, counter: 'seven' }), { mode: 0o600 });
    });
    const r = await selfTest(dir);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      'self-test FAILED: state: IO_ERROR: agent state: counter is missing or malformed',
    );
  });

  it('fails on a state directory that does not exist, and passes on an empty one (first run)', async () => {
    const missing = await run(lone, ['self-test', '--state', join(w.dir, 'no-such-dir')]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/self-test FAILED: state: IO_ERROR: .*no-such-dir does not exist/);
    const empty = join(w.dir, 'empty-state');
    await mkdir(empty);
    const first = await selfTest(empty);
    expect(first.code).toBe(0);
    expect(first.stdout).toContain('no state yet (first run); key not made yet');
  });

  it('fails when the enrolled key is missing', async () => {
    const dir = await brokenCopy('nokey', (d) => rm(join(d, 'keys', 'agent.key')));
    const r = await selfTest(dir);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /self-test FAILED: key: KEY_INVALID: .*agent\.key is missing but the state is enrolled as [0-9a-f]{32}/,
    );
  });

  it('fails when the pinned root chain bytes were altered', async () => {
    const dir = await brokenCopy('root', async (d) => {
      const s = JSON.parse(await readFile(join(d, 'state.json'), 'utf8')) as { roots: string[] };
      const env = JSON.parse(Buffer.from(s.roots[0]!, 'base64').toString('utf8')) as { payload: string };
      const payload = Buffer.from(env.payload, 'base64')
        .toString('utf8')
        .replace(/"expires":"\d{4}/, '"expires":"2999');
      env.payload = Buffer.from(payload).toString('base64');
      s.roots[0] = Buffer.from(JSON.stringify(env)).toString('base64');
      await writeFile(join(d, 'state.json'), JSON.stringify(s), { mode: 0o600 });
    });
    const r = await selfTest(dir);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/self-test FAILED: root: ROOT_[A-Z_]+: /);
  });
});
