/**
 * Staged rollout with real agents: three real single-file agents (npm run build:agent), each installed as
 * <install>/versions/<v>/ferry-agent with <install>/current and kept running by this test playing systemd
 * (as in test/agent-update.test.ts), all polling one real `ferry mirror serve`. Each agent asks the mirror's
 * gate before it starts the rollout's version: under a manual plan they wait; `update-now` lets one go
 * first; `approve` lets the rest follow. A bad version (never passes its health check) taken by the first
 * rolls back by itself, the mirror halts the rollout, and the other two never start it. An abort with
 * --revert sends the canary back through its own rollback.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFile, mkdir, readFile, readlink, symlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  eventually,
  importInto,
  OPEN_ENROLMENT,
  startMirrorAt,
  type MirrorAt,
} from './helpers/agent-proc.js';
import { buildBundle, makeWorld, REPO, type World } from './helpers/fixtures.js';
import { killStrays, runFerry, sleep } from './helpers/mirror-proc.js';

type Line = Record<string, unknown>;
const LIMITS = { maxAttempts: 2, selfTestMs: 15_000, healthMs: 4_000, soakMs: 1_000 };

let w: World;
let data: string;
let mirror: MirrorAt | undefined;
let stopping = false;
const bins: Record<string, string> = {};

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env) {
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: REPO, env });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.once('error', reject);
    c.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

class Node {
  readonly install: string;
  readonly state: string;
  readonly logs: Line[] = [];
  child: ChildProcess | undefined;
  supervisor: Promise<void> | undefined;
  constructor(readonly name: string) {
    this.install = join(w.dir, name, 'opt-ferry');
    this.state = join(w.dir, name, 'state');
  }
  env(): NodeJS.ProcessEnv {
    return {
      ...process.env,
      PATH: `${dirname(process.execPath)}:${process.env.PATH ?? ''}`,
      FERRY_AGENT_INSTALL_ROOT: this.install,
      FERRY_AGENT_UPDATE_LIMITS: JSON.stringify(LIMITS),
    };
  }
  async setUp(): Promise<void> {
    await mkdir(join(this.install, 'versions', '1.0.0'), { recursive: true });
    await copyFile(bins['1.0.0']!, join(this.install, 'versions', '1.0.0', 'ferry-agent'));
    await symlink(join('versions', '1.0.0'), join(this.install, 'current'));
    this.supervisor = this.supervise(40);
  }
  private async supervise(maxStarts: number): Promise<void> {
    for (let starts = 0; starts < maxStarts && !stopping; starts++) {
      const pre = await run('sh', [
        join(REPO, 'systemd', 'ferry-agent-prestart.sh'),
        this.state,
        this.install,
      ]);
      if (pre.code !== 0) throw new Error(`prestart failed: ${pre.stderr}`);
      const c = spawn(
        join(this.install, 'current', 'ferry-agent'),
        [
          'run',
          '--state',
          this.state,
          '--mirror',
          mirror!.url,
          '--trust',
          w.rootPath,
          '--site',
          'plant-7',
          '--interval',
          '1',
        ],
        { stdio: ['ignore', 'ignore', 'pipe'], cwd: '/', env: this.env() },
      );
      this.child = c;
      let partial = '';
      c.stderr.on('data', (d: Buffer) => {
        partial += d.toString();
        const lines = partial.split('\n');
        partial = lines.pop() ?? '';
        for (const l of lines) if (l.startsWith('{')) this.logs.push(JSON.parse(l) as Line);
      });
      await new Promise((resolve) => c.once('close', resolve));
      if (!stopping) await sleep(200);
    }
  }
  async version(): Promise<string> {
    return basename(await readlink(join(this.install, 'current')));
  }
  async agentId(): Promise<string> {
    return eventually(
      `${this.name} enrolled`,
      async () => {
        const s = JSON.parse(await readFile(join(this.state, 'state.json'), 'utf8').catch(() => '{}')) as {
          agentId?: string;
        };
        return s.agentId ?? undefined;
      },
      30_000,
    );
  }
  async update(): Promise<{ machine: { phase: string; version: string | null } } | undefined> {
    return JSON.parse(await readFile(join(this.state, 'update.json'), 'utf8').catch(() => 'null')) as
      { machine: { phase: string; version: string | null } } | undefined;
  }
  began(v: string): number {
    return this.logs.filter((l) => l.event === 'update.begin' && l.version === v).length;
  }
  poke(): void {
    this.child?.kill('SIGUSR1');
  }
}

const nodes: Node[] = [];
let seq = 1;

async function publish(version: string, rollout: Record<string, unknown>): Promise<void> {
  seq += 1;
  const b = await buildBundle(w, join(w.dir, `s${seq}.ferry`), {
    spec: { sequence: seq, rollout: { agent: version, ...rollout } },
    artifacts: [
      {
        name: 'ferry-agent',
        kind: 'agent',
        version,
        platform: 'linux-x64',
        content: await readFile(bins[version]!),
      },
    ],
  });
  await importInto(data, b.volumes[0]!.path, w.rootPath);
  for (const n of nodes) n.poke();
}

async function ferryOk(...args: string[]): Promise<string> {
  const r = await runFerry(args);
  expect(r.code, r.stdout + r.stderr).toBe(0);
  return r.stdout;
}

async function rolloutStatus(): Promise<{ phase: string; version: string; haltReason: string | null }> {
  return (
    JSON.parse(await ferryOk('mirror', 'rollout', 'status', '--data', data, '--json')) as {
      rollout: { phase: string; version: string; haltReason: string | null };
    }
  ).rollout;
}

/** Resolves once each node has completed `k` more cycles than now. */
async function cyclesPass(list: Node[], k: number): Promise<void> {
  const cycles = (n: Node) => n.logs.filter((l) => l.event === 'agent.cycle').length;
  const from = list.map(cycles);
  await eventually(
    `${k} more cycles`,
    () => Promise.resolve(list.every((n, i) => cycles(n) >= from[i]! + k) ? true : undefined),
    60_000,
  );
}

const committed = (n: Node, v: string) =>
  eventually(
    `${n.name} committed ${v}`,
    async () => {
      const u = await n.update();
      return u?.machine.phase === 'committed' && u.machine.version === v && (await n.version()) === v
        ? true
        : undefined;
    },
    60_000,
    200,
  );

// A manual plan whose first wave is (almost surely) empty: it passes at once and the rollout waits for an
// approval; the canary is chosen with update-now.
const MANUAL = { strategy: 'manual', waves: [{ percent: 0.01 }, { percent: 100 }], maxFailureRate: 0 };

beforeAll(async () => {
  w = await makeWorld();
  const build = async (v: string, patch?: [string, string]) => {
    const out = join(w.dir, 'build', v, 'ferry-agent');
    const r = await run('npm', ['run', 'build:agent', '--silent', '--', '--version', v, '--out', out]);
    if (r.code !== 0) throw new Error(`build:agent ${v} failed: ${r.stdout}${r.stderr}`);
    if (patch) {
      const { writeFile } = await import('node:fs/promises');
      const text = await readFile(out, 'utf8');
      if (text.split(patch[0]).length !== 2) throw new Error(`${v}: patch target not found once`);
      await writeFile(out, text.replace(patch[0], patch[1]), { mode: 0o755 });
    }
    bins[v] = out;
  };
  await build('1.0.0');
  await build('2.0.0');
  await build('2.1.0');
  // 3: starts and stays up, but never completes a cycle: never passes its health check
  await build('3.0.0', ['async cycle() {', 'async cycle() { throw new Error("v3: cannot read its state");']);
  data = join(w.dir, 'mirror');
  const first = await buildBundle(w, join(w.dir, 's1.ferry'), {
    spec: { sequence: 1 },
    artifacts: [
      { name: 'ferry-agent', kind: 'agent', version: '1.0.0', content: await readFile(bins['1.0.0']!) },
    ],
  });
  await importInto(data, first.volumes[0]!.path, w.rootPath);
  mirror = await startMirrorAt(data, 0, OPEN_ENROLMENT);
  for (const name of ['a', 'b', 'c']) nodes.push(new Node(name));
  for (const n of nodes) await n.setUp();
  for (const n of nodes) await n.agentId();
}, 180_000);

afterAll(async () => {
  stopping = true;
  for (const n of nodes) n.child?.kill('SIGTERM');
  for (const n of nodes) await n.supervisor;
  await mirror?.stop();
  await killStrays();
  await w.cleanup();
});

describe('real agents follow the site gate', () => {
  it('manual: they wait; update-now lets the canary go; approve lets the rest follow', async () => {
    const [a, b, c] = nodes as [Node, Node, Node];
    await publish('2.0.0', MANUAL);
    await eventually('awaiting approval', async () =>
      (await rolloutStatus()).phase === 'awaiting-approval' ? true : undefined,
    );
    // three more cycles each, asking the gate every time: nobody starts
    await cyclesPass(nodes, 3);
    for (const n of nodes) {
      expect(n.began('2.0.0')).toBe(0);
      expect(await n.version()).toBe('1.0.0');
    }
    await ferryOk('mirror', 'update-now', '--agent', await a.agentId(), '--data', data, '--actor', 'ops');
    a.poke();
    await committed(a, '2.0.0');
    expect(b.began('2.0.0') + c.began('2.0.0')).toBe(0);
    await ferryOk('mirror', 'rollout', 'approve', '--data', data, '--actor', 'ops');
    b.poke();
    c.poke();
    await committed(b, '2.0.0');
    await committed(c, '2.0.0');
    await eventually(
      'completed',
      async () => ((await rolloutStatus()).phase === 'completed' ? true : undefined),
      30_000,
    );
  });

  it(
    'a bad version fails its health check on the canary, rolls back; the rollout halts; the others never start it',
    { timeout: 180_000 },
    async () => {
      const [a, b, c] = nodes as [Node, Node, Node];
      await publish('3.0.0', MANUAL);
      await eventually('awaiting approval', async () =>
        (await rolloutStatus()).phase === 'awaiting-approval' ? true : undefined,
      );
      await ferryOk('mirror', 'update-now', '--agent', await a.agentId(), '--data', data, '--actor', 'ops');
      a.poke();
      const st = await eventually(
        'halted',
        async () => {
          const s = await rolloutStatus();
          return s.phase === 'halted' ? s : undefined;
        },
        60_000,
      ).catch((e: Error) => {
        const seen = a.logs.filter((l) => String(l.event).startsWith('update')).slice(-10);
        throw new Error(`${e.message}; the canary's update log: ${JSON.stringify(seen)}`);
      });
      expect(st.haltReason).toMatch(/1 of 1 failed/);
      expect(a.began('3.0.0')).toBe(1);
      await eventually(
        'a back on 2.0.0',
        async () => ((await a.version()) === '2.0.0' ? true : undefined),
        30_000,
      );
      const approve = await runFerry(['mirror', 'rollout', 'approve', '--data', data, '--actor', 'ops']);
      expect(approve.code).toBe(1);
      expect(approve.stderr).toMatch(/NOT_AWAITING_APPROVAL/);
      await cyclesPass([b, c], 3);
      for (const n of [b, c]) {
        expect(n.began('3.0.0')).toBe(0);
        expect(await n.version()).toBe('2.0.0');
      }
    },
  );

  it(
    'abort --revert returns the canary to the version it ran before; the others never moved',
    { timeout: 180_000 },
    async () => {
      const [a, b, c] = nodes as [Node, Node, Node];
      await publish('2.1.0', MANUAL);
      await eventually('awaiting approval', async () =>
        (await rolloutStatus()).phase === 'awaiting-approval' ? true : undefined,
      );
      await ferryOk('mirror', 'update-now', '--agent', await a.agentId(), '--data', data, '--actor', 'ops');
      a.poke();
      await committed(a, '2.1.0');
      await ferryOk('mirror', 'rollout', 'abort', '--revert', '--data', data, '--actor', 'ops');
      a.poke();
      await eventually(
        'a back on 2.0.0',
        async () => ((await a.version()) === '2.0.0' ? true : undefined),
        60_000,
      );
      expect(a.logs.some((l) => l.event === 'update.revert' && l.to === '2.0.0')).toBe(true);
      await cyclesPass([a, b, c], 3);
      expect(await a.version()).toBe('2.0.0'); // and it stays there
      for (const n of [b, c]) {
        expect(n.began('2.1.0')).toBe(0);
        expect(await n.version()).toBe('2.0.0');
      }
    },
  );
});
