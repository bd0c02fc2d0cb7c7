/**
 * Agent self-update end to end: real single-file agents (npm run build:agent)
 * installed as <install>/versions/<v>/ferry-agent with <install>/current, a
 * real `ferry mirror serve`, and this test playing systemd (Restart=always):
 * whatever `current` points at is started, and started again when it exits,
 * each start preceded by systemd/ferry-agent-prestart.sh as the unit's
 * ExecStartPre= runs it. Bad versions are the same build with one line broken.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readdir, readFile, readlink, stat, symlink, writeFile, copyFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  eventually,
  importInto,
  readTelemetry,
  OPEN_ENROLMENT,
  startMirrorAt,
  type MirrorAt,
} from './helpers/agent-proc.js';
import { buildBundle, makeWorld, REPO, type World } from './helpers/fixtures.js';
import { killStrays, sleep } from './helpers/mirror-proc.js';

type Line = Record<string, unknown>;
interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

const LIMITS = { maxAttempts: 2, selfTestMs: 15_000, healthMs: 4_000, soakMs: 1_000 };

let w: World;
let install: string;
let stateDir: string;
let data: string;
let mirror: MirrorAt | undefined;
const bins: Record<string, string> = {};
const logs: Line[] = [];
const exits: { code: number | null; signal: string | null }[] = [];
let child: ChildProcess | undefined;
let stopping = false;
let supervisor: Promise<void> | undefined;
const prestartLog: string[] = [];

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: REPO, env });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.once('error', reject);
    c.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const agentEnv = (): NodeJS.ProcessEnv => ({
  ...process.env,
  PATH: `${dirname(process.execPath)}:${process.env.PATH ?? ''}`,
  FERRY_AGENT_INSTALL_ROOT: install,
  FERRY_AGENT_UPDATE_LIMITS: JSON.stringify(LIMITS),
});

/** systemd's part: start `current`, restart it whenever it exits (RestartSec 0.2 s, bounded). */
async function supervise(maxStarts: number): Promise<void> {
  for (let starts = 0; starts < maxStarts && !stopping; starts++) {
    const pre = await run('sh', [join(REPO, 'systemd', 'ferry-agent-prestart.sh'), stateDir, install]);
    if (pre.code !== 0) throw new Error(`prestart failed: ${pre.stderr}`);
    if (pre.stderr) prestartLog.push(pre.stderr);
    const started = await currentTarget();
    const c = spawn(
      join(install, 'current', 'ferry-agent'),
      [
        'run',
        '--state',
        stateDir,
        '--mirror',
        mirror!.url,
        '--trust',
        w.rootPath,
        '--site',
        'plant-7',
        '--interval',
        '1',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'], cwd: '/', env: { ...agentEnv() } },
    );
    child = c;
    let partial = '';
    c.stderr.on('data', (d: Buffer) => {
      partial += d.toString();
      const lines = partial.split('\n');
      partial = lines.pop() ?? '';
      for (const l of lines)
        if (l.startsWith('{')) logs.push({ ...(JSON.parse(l) as Line), _started: started });
    });
    const exit = await new Promise<{ code: number | null; signal: string | null }>((resolve) =>
      c.once('close', (code, signal) => resolve({ code, signal })),
    );
    exits.push(exit);
    if (!stopping) await sleep(200);
  }
}

const currentTarget = () => readlink(join(install, 'current'));
/** The prestart script links an absolute directory, the agent a relative one: compare the version. */
const currentVersion = async () => basename(await currentTarget());
const updateFile = async () =>
  JSON.parse(await readFile(join(stateDir, 'update.json'), 'utf8')) as {
    machine: { phase: string; version: string | null; highestCommitted: string | null };
    badVersions: string[];
    unreported: unknown[];
  };
const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );
const begins = (v: string) => logs.filter((l) => l.event === 'update.begin' && l.version === v).length;

let seq = 1;
async function publish(agentVersion: string, extra: Record<string, unknown> = {}): Promise<void> {
  seq += 1;
  const b = await buildBundle(w, join(w.dir, `s${seq}.ferry`), {
    spec: { sequence: seq, rollout: { agent: agentVersion, waves: [{ percent: 100 }] }, ...extra },
    artifacts: [
      {
        name: 'ferry-agent',
        kind: 'agent',
        version: agentVersion,
        platform: 'linux-x64',
        content: await readFile(bins[agentVersion]!),
      },
    ],
  });
  await importInto(data, b.volumes[0]!.path, w.rootPath);
  child?.kill('SIGUSR1'); // poll now
}

/** Every `{update: …}` entry that reached the mirror's telemetry. */
async function updateReports(): Promise<
  { outcome: string; version: string; reason: string; code?: string }[]
> {
  const out = [];
  for (const hb of await readTelemetry(data))
    for (const r of hb.payload.results as unknown as {
      update?: { outcome: string; version: string; reason: string };
    }[])
      if (r.update) out.push(r.update);
  return out;
}

async function build(v: string, patch?: [string, string]): Promise<void> {
  const out = join(w.dir, 'build', v, 'ferry-agent');
  const r = await run('npm', ['run', 'build:agent', '--silent', '--', '--version', v, '--out', out]);
  if (r.code !== 0) throw new Error(`build:agent ${v} failed: ${r.stdout}${r.stderr}`);
  if (patch) {
    const text = await readFile(out, 'utf8');
    if (text.split(patch[0]).length !== 2) throw new Error(`${v}: patch target not found once`);
    await writeFile(out, text.replace(patch[0], patch[1]), { mode: 0o755 });
  }
  bins[v] = out;
}

beforeAll(async () => {
  w = await makeWorld();
  await build('1.0.0');
  await build('2.0.0');
  // 3: the self-test fails
  await build('3.0.0', ['const r = await selfTest(str(p, "state"));', 'const r = { ok: false, notes: [] };']);
  // 4: passes its self-test, crashes right after every start
  await build('4.0.0', ['async cycle() {', 'async cycle() { process.exit(1);']);
  // 5: starts and stays up, but never completes a cycle (its state cannot be read)
  await build('5.0.0', ['async cycle() {', 'async cycle() { throw new Error("v5: cannot read its state");']);
  // 6: passes its self-test, but `run` dies at load, before any of its own update code
  await build('6.0.0', [
    '#!/usr/bin/env -S node --lite-mode --no-expose-wasm\n',
    '#!/usr/bin/env -S node --lite-mode --no-expose-wasm\nif (process.argv[2] === "run") throw new Error("v6: boot");\n',
  ]);

  install = join(w.dir, 'opt-ferry');
  stateDir = join(w.dir, 'agent-state');
  data = join(w.dir, 'mirror');
  await mkdir(join(install, 'versions', '1.0.0'), { recursive: true });
  await copyFile(bins['1.0.0']!, join(install, 'versions', '1.0.0', 'ferry-agent'));
  await symlink(join('versions', '1.0.0'), join(install, 'current'));

  const first = await buildBundle(w, join(w.dir, 's1.ferry'), {
    spec: { sequence: 1, rollout: { agent: '1.0.0', waves: [{ percent: 100 }] } },
    artifacts: [
      { name: 'ferry-agent', kind: 'agent', version: '1.0.0', content: await readFile(bins['1.0.0']!) },
    ],
  });
  await importInto(data, first.volumes[0]!.path, w.rootPath);
  mirror = await startMirrorAt(data, 0, OPEN_ENROLMENT);
  supervisor = supervise(40);
}, 120_000);

afterAll(async () => {
  stopping = true;
  child?.kill('SIGTERM');
  await supervisor;
  await mirror?.stop();
  await killStrays();
  await w.cleanup();
});

describe('agent self-update through a real mirror and a restarting supervisor', () => {
  it('v1 → v2: stage, self-test, swap, exit, health, soak, commit; reported home', async () => {
    await eventually('v1 cycles', () => Promise.resolve(logs.find((l) => l.event === 'agent.cycle')), 30_000);
    const t0 = Date.now();
    await publish('2.0.0');
    await eventually(
      'v2 committed',
      async () => {
        const u = await updateFile().catch(() => undefined);
        return u?.machine.phase === 'committed' && u.machine.version === '2.0.0' ? u : undefined;
      },
      30_000,
      100,
    );
    const ms = Date.now() - t0;
    console.log(`self-update v1 → v2 end to end (import → committed, soak ${LIMITS.soakMs} ms): ${ms} ms`);
    expect(await currentVersion()).toBe('2.0.0');
    // The commit is recorded first and pending.json removed right after (a crash between is finished
    // by the next start), so the test waits for the removal rather than racing it.
    await eventually('pending.json removed', async () =>
      (await exists(join(stateDir, 'pending.json'))) ? undefined : true,
    );
    expect(await exists(join(install, 'versions', '1.0.0', 'ferry-agent'))).toBe(true); // rollback target kept
    const v = await run(join(install, 'current', 'ferry-agent'), ['version'], agentEnv());
    expect(v).toMatchObject({ code: 0, stdout: '2.0.0\n' });
    expect(exits.some((e) => e.code === 75)).toBe(true);
    await eventually('committed report at the mirror', async () =>
      (await updateReports()).find((r) => r.outcome === 'committed' && r.version === '2.0.0'),
    );
  });

  it('v3 fails its self-test: never swapped, remembered, not retried', async () => {
    await publish('3.0.0');
    // remembered in the same write as the phase change; the staged copy is discarded right after
    await eventually('v3 remembered as bad and its staged copy discarded', async () =>
      (await updateFile()).badVersions.some((b) => b.endsWith(':3.0.0')) &&
      !(await exists(join(install, 'versions', '3.0.0')))
        ? true
        : undefined,
    );
    expect(await currentVersion()).toBe('2.0.0');
    await sleep(3_000); // a few more polls
    expect(begins('3.0.0')).toBe(1);
    const r = await eventually('v3 report', async () =>
      (await updateReports()).find((x) => x.version === '3.0.0'),
    );
    expect(r).toMatchObject({ outcome: 'failed' });
    expect(r.reason).toContain('self-test failed');
  });

  it('v4 crashes after every start: rolled back to v2 by the boot counter, not retried', async () => {
    const before = exits.filter((e) => e.code === 1).length;
    await publish('4.0.0');
    await eventually(
      'v4 rolled back',
      async () => {
        const u = await updateFile();
        return u.machine.phase === 'rolled-back' && u.machine.version === '4.0.0' ? u : undefined;
      },
      30_000,
    );
    expect((await updateFile()).badVersions.some((b) => b.endsWith(':4.0.0'))).toBe(true);
    expect(exits.filter((e) => e.code === 1).length - before).toBe(LIMITS.maxAttempts);
    const from = logs.length;
    await eventually('v2 cycling again', () =>
      Promise.resolve(
        logs.slice(from).find((l) => l.event === 'agent.cycle' && basename(String(l._started)) === '2.0.0'),
      ),
    );
    expect(await currentVersion()).toBe('2.0.0');
    await sleep(3_000);
    expect(begins('4.0.0')).toBe(1);
    const r = await eventually('v4 report', async () =>
      (await updateReports()).find((x) => x.version === '4.0.0'),
    );
    expect(r).toMatchObject({ outcome: 'rolled-back' });
    expect(r.reason).toMatch(/started 3 times without a commit/);
  });

  it('v5 never passes a health check: rolled back at the deadline, not retried', async () => {
    await publish('5.0.0');
    await eventually(
      'v5 rolled back',
      async () => {
        const u = await updateFile();
        return u.machine.phase === 'rolled-back' && u.machine.version === '5.0.0' ? u : undefined;
      },
      30_000,
    );
    // update.json records the rollback before `current` is switched back (a crash in between is
    // finished by the next start), so the link is awaited, not read once
    await eventually('current back at v2', async () =>
      (await currentVersion()) === '2.0.0' ? true : undefined,
    );
    await sleep(3_000);
    expect(begins('5.0.0')).toBe(1);
    const r = await eventually('v5 report', async () =>
      (await updateReports()).find((x) => x.version === '5.0.0'),
    );
    expect(r).toMatchObject({ outcome: 'rolled-back' });
    expect(r.reason).toMatch(/no passing health check within 4000 ms/);
    expect((await updateFile()).machine.highestCommitted).toBe('2.0.0');
  });

  it('a downgrade is refused; the same under a signed pin for this agent is installed', async () => {
    await publish('1.0.0');
    const refused = await eventually('downgrade refused', async () =>
      (await updateReports()).find((x) => x.outcome === 'refused'),
    );
    expect(refused).toMatchObject({ code: 'DOWNGRADE_REFUSED' });
    expect(await currentVersion()).toBe('2.0.0');
    expect(begins('1.0.0')).toBe(0);

    const state = JSON.parse(await readFile(join(stateDir, 'state.json'), 'utf8')) as { agentId: string };
    await publish('1.0.0', { pins: { [`agent:${state.agentId}`]: '1.0.0' } });
    await eventually(
      'pinned 1.0.0 committed',
      async () => {
        const u = await updateFile();
        return u.machine.phase === 'committed' && u.machine.version === '1.0.0' ? u : undefined;
      },
      30_000,
    );
    expect(await currentVersion()).toBe('1.0.0');
    const v = await run(join(install, 'current', 'ferry-agent'), ['version'], agentEnv());
    expect(v.stdout).toBe('1.0.0\n');
  });

  it('v6 dies at load, before its own code: the prestart script rolls back; v1 reports it; not retried', async () => {
    const before = exits.filter((e) => e.code === 1).length;
    await publish('6.0.0');
    await eventually(
      'v6 rolled back',
      async () => {
        const u = await updateFile();
        return u.machine.phase === 'rolled-back' && u.machine.version === '6.0.0' ? u : undefined;
      },
      30_000,
    );
    expect(await currentVersion()).toBe('1.0.0');
    expect(await currentTarget()).toBe(join(install, 'versions', '1.0.0')); // switched by the script
    expect(prestartLog.join('')).toMatch(/rolled back to .*1\.0\.0 after 3 starts/);
    expect(exits.filter((e) => e.code === 1).length - before).toBe(LIMITS.maxAttempts);
    expect((await updateFile()).badVersions.some((b) => b.endsWith(':6.0.0'))).toBe(true);
    // removed right after the rollback is recorded: awaited, not raced
    await eventually('pending.* removed', async () =>
      (await readdir(stateDir)).some((n) => n.startsWith('pending.')) ? undefined : true,
    );
    const r = await eventually('v6 report', async () =>
      (await updateReports()).find((x) => x.version === '6.0.0'),
    );
    expect(r).toMatchObject({ outcome: 'rolled-back', phase: 'pending' }); // it never ran its own code
    expect(r.reason).toMatch(/6\.0\.0 started 3 times without a commit \(max 2\)/);
    await sleep(3_000);
    expect(begins('6.0.0')).toBe(1);
    expect(await currentVersion()).toBe('1.0.0');
  });

  it('ferry agent rollback: refuses with nothing to go back to; after a commit, returns to the previous', async () => {
    const agent1 = join(install, 'versions', '1.0.0', 'ferry-agent');
    const rollback = (...extra: string[]) =>
      run(
        agent1,
        ['rollback', '--state', stateDir, '--install-root', install, '--json', ...extra],
        agentEnv(),
      );
    const snapshot = async () => [
      await readFile(join(stateDir, 'update.json'), 'utf8'),
      await currentTarget(),
    ];

    // the last update (v6) was rolled back: no committed update to undo
    const before = await snapshot();
    const none = await rollback();
    expect(none.code).toBe(1);
    expect(JSON.parse(none.stdout)).toMatchObject({ ok: false, code: 'NO_PREVIOUS_VERSION' });
    expect(await snapshot()).toEqual(before);

    // 1.0.0 → 2.0.0 committed
    await publish('2.0.0');
    await eventually(
      'v2 committed again',
      async () => {
        const u = await updateFile();
        // and its report sent, so the running agent has nothing left to write to update.json
        return u.machine.phase === 'committed' && u.machine.version === '2.0.0' && u.unreported.length === 0
          ? u
          : undefined;
      },
      30_000,
    );
    const running = await snapshot();
    const busy = await rollback();
    expect(JSON.parse(busy.stdout)).toMatchObject({ ok: false, code: 'AGENT_RUNNING' });
    expect(await snapshot()).toEqual(running);

    stopping = true;
    child?.kill('SIGTERM');
    await supervisor;
    const ok = await rollback('--mark-bad');
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ ok: true, from: '2.0.0', to: '1.0.0', markedBad: true });
    expect(await currentTarget()).toBe(join('versions', '1.0.0'));
    const u = await updateFile();
    expect(u.machine).toMatchObject({ phase: 'rolled-back', version: '2.0.0' });
    expect(u.badVersions.filter((b) => b.endsWith(':2.0.0'))).toHaveLength(1);

    const began = begins('2.0.0');
    stopping = false;
    supervisor = supervise(5);
    const r = await eventually('manual rollback report', async () =>
      (await updateReports()).find((x) => x.reason.startsWith('manual rollback from 2.0.0 to 1.0.0')),
    );
    expect(r).toMatchObject({ outcome: 'rolled-back', version: '2.0.0', phase: 'committed' });
    await sleep(3_000);
    expect(begins('2.0.0')).toBe(began); // marked bad: not installed again
    expect(await currentVersion()).toBe('1.0.0');
  });
});
