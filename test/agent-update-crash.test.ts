/**
 * kill -9 at every phase of an agent self-update (v1 → v2), with real agent
 * builds, a real `ferry mirror serve` and this test playing systemd
 * (Restart=always). FERRY_CRASH_AT (a hook in agent/update/driver.ts) is set
 * for one start only: the old binary's for the phases before the swap, the new
 * binary's for the phases after it. After the crash the supervisor runs the
 * unit's prestart script (systemd/ferry-agent-prestart.sh) and starts `current`
 * again; the node must end wholly on v1 or wholly on v2, and the update must
 * end the way the design says, reported home.
 *
 * A second part fills the disk while staging: the install root on a tmpfs too
 * small for v2 (root and a working `mount -t tmpfs` needed).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmdirSync } from 'node:fs';
import { copyFile, mkdir, readFile, readdir, readlink, stat, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
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
interface Exit {
  code: number | null;
  signal: string | null;
  /** What was on disk right after the exit, before the next start. */
  tmpLeft: boolean;
  pendingLeft: boolean;
}
interface UpdateJson {
  machine: {
    phase: string;
    version: string | null;
    previous: string | null;
    highestCommitted: string | null;
  };
  badVersions: string[];
}
interface UpdateReportSeen {
  outcome: string;
  version: string;
  reason: string;
  code?: string;
}

const PRESTART = join(REPO, 'systemd', 'ferry-agent-prestart.sh');
const LIMITS = { maxAttempts: 2, selfTestMs: 15_000, healthMs: 4_000, soakMs: 1_000 };
const V1 = '1.0.0';
const V2 = '2.0.0';

let w: World;
let data: string;
let mirror: MirrorAt | undefined;
const bins: Record<string, string> = {};
const nodes: Node[] = [];

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

const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

async function build(v: string): Promise<void> {
  const out = join(w.dir, 'build', v, 'ferry-agent');
  const r = await run('npm', ['run', 'build:agent', '--silent', '--', '--version', v, '--out', out]);
  if (r.code !== 0) throw new Error(`build:agent ${v} failed: ${r.stdout}${r.stderr}`);
  bins[v] = out;
}

/** One agent host: its own install root (v1 installed, `current` → v1) and state. */
class Node {
  readonly logs: Line[] = [];
  readonly exits: Exit[] = [];
  private child: ChildProcess | undefined;
  private stopping = false;
  private supervisor: Promise<void> | undefined;

  constructor(
    readonly install: string,
    readonly stateDir: string,
  ) {}

  static async create(name: string, install = join(w.dir, name, 'opt-ferry')): Promise<Node> {
    await mkdir(join(install, 'versions', V1), { recursive: true });
    await copyFile(bins[V1]!, join(install, 'versions', V1, 'ferry-agent'));
    await symlink(join('versions', V1), join(install, 'current'));
    const n = new Node(install, join(w.dir, name, 'agent-state'));
    nodes.push(n);
    return n;
  }

  env(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
    return {
      ...process.env,
      PATH: `${dirname(process.execPath)}:${process.env.PATH ?? ''}`,
      FERRY_AGENT_INSTALL_ROOT: this.install,
      FERRY_AGENT_UPDATE_LIMITS: JSON.stringify(LIMITS),
      FERRY_CRASH_AT: '',
      ...extra,
    };
  }

  /** systemd's part: start `current`, again whenever it exits (RestartSec 0.2 s, bounded). */
  supervise(maxStarts: number, envFor: (target: string) => NodeJS.ProcessEnv = () => ({})): void {
    this.supervisor = (async () => {
      for (let starts = 0; starts < maxStarts && !this.stopping; starts++) {
        // the unit's ExecStartPre= (counts starts after a swap, may switch back), once it exists
        if (await exists(PRESTART)) {
          const pre = await run('sh', [PRESTART, this.stateDir, this.install]);
          if (pre.code !== 0) throw new Error(`prestart failed: ${pre.stderr}`);
        }
        const started = await this.current();
        const c = spawn(
          join(this.install, 'current', 'ferry-agent'),
          ['run', '--state', this.stateDir, '--mirror', mirror!.url, '--trust', w.rootPath].concat([
            '--site',
            'plant-7',
            '--interval',
            '1',
          ]),
          { stdio: ['ignore', 'ignore', 'pipe'], cwd: '/', env: this.env(envFor(started)) },
        );
        this.child = c;
        let partial = '';
        c.stderr.on('data', (d: Buffer) => {
          partial += d.toString();
          const lines = partial.split('\n');
          partial = lines.pop() ?? '';
          for (const l of lines)
            if (l.startsWith('{')) this.logs.push({ ...(JSON.parse(l) as Line), _started: started });
        });
        const exit = await new Promise<{ code: number | null; signal: string | null }>((resolve) =>
          c.once('close', (code, signal) => resolve({ code, signal })),
        );
        this.exits.push({
          ...exit,
          tmpLeft: (await this.tmpFiles()).length > 0,
          pendingLeft: await exists(join(this.stateDir, 'pending.json')),
        });
        if (!this.stopping) await sleep(200);
      }
    })();
  }

  async stop(): Promise<void> {
    this.stopping = true;
    this.child?.kill('SIGTERM');
    await this.supervisor;
  }

  /** The version `current` points at (the agent links it relative, the prestart script absolute). */
  async current(): Promise<string> {
    return basename(await readlink(join(this.install, 'current')));
  }

  async update(): Promise<UpdateJson | undefined> {
    return readFile(join(this.stateDir, 'update.json'), 'utf8').then(
      (t) => JSON.parse(t) as UpdateJson,
      () => undefined,
    );
  }

  /** Half-written files of the staging and the swap. */
  async tmpFiles(): Promise<string[]> {
    const out: string[] = [];
    const versions = join(this.install, 'versions');
    for (const v of await readdir(versions).catch(() => [])) {
      const t = join(versions, v, 'ferry-agent.tmp');
      if (await exists(t)) out.push(t);
    }
    if (await exists(join(this.install, 'current.tmp'))) out.push('current.tmp');
    return out;
  }

  begins(v: string): number {
    return this.logs.filter((l) => l.event === 'update.begin' && l.version === v).length;
  }

  async agentId(): Promise<string> {
    const s = JSON.parse(await readFile(join(this.stateDir, 'state.json'), 'utf8')) as { agentId: string };
    return s.agentId;
  }

  /** This node's `{update: …}` entries that reached the mirror's telemetry. */
  async reports(): Promise<UpdateReportSeen[]> {
    const id = await this.agentId();
    const out: UpdateReportSeen[] = [];
    for (const hb of await readTelemetry(data)) {
      if (hb.agentId !== id) continue;
      for (const r of hb.payload.results as unknown as { update?: UpdateReportSeen }[])
        if (r.update) out.push(r.update);
    }
    return out;
  }

  /** Stopped: the node is wholly on one version; returns it. */
  async assertWhole(): Promise<string> {
    const v = await this.current();
    expect([V1, V2]).toContain(v);
    const ran = await run(join(this.install, 'current', 'ferry-agent'), ['version'], this.env());
    expect.soft(ran).toMatchObject({ code: 0, stdout: `${v}\n` });
    const u = (await this.update())!;
    if (u.machine.phase === 'committed') expect.soft(u.machine.version).toBe(v);
    else if (u.machine.phase === 'rolled-back') expect.soft(u.machine.previous).toBe(v);
    else expect.soft({ phase: u.machine.phase, running: v }).toEqual({ phase: 'idle', running: V1 });
    expect.soft(await this.tmpFiles(), 'half-written files').toEqual([]);
    expect.soft(await exists(join(this.stateDir, 'pending.json')), 'pending.json left').toBe(false);
    return v;
  }
}

beforeAll(async () => {
  w = await makeWorld();
  await build(V1);
  await build(V2);
  data = join(w.dir, 'mirror');
  const first = await buildBundle(w, join(w.dir, 's1.ferry'), {
    spec: { sequence: 1, rollout: { agent: V1, waves: [{ percent: 100 }] } },
    artifacts: [{ name: 'ferry-agent', kind: 'agent', version: V1, content: await readFile(bins[V1]!) }],
  });
  await importInto(data, first.volumes[0]!.path, w.rootPath);
  // every node starts on v1 and finds v2 offered on its first poll
  const second = await buildBundle(w, join(w.dir, 's2.ferry'), {
    spec: { sequence: 2, rollout: { agent: V2, waves: [{ percent: 100 }] } },
    artifacts: [
      {
        name: 'ferry-agent',
        kind: 'agent',
        version: V2,
        platform: 'linux-x64',
        content: await readFile(bins[V2]!),
      },
    ],
  });
  await importInto(data, second.volumes[0]!.path, w.rootPath);
  mirror = await startMirrorAt(data, 0, OPEN_ENROLMENT);
}, 120_000);

afterAll(async () => {
  for (const n of nodes) await n.stop();
  await mirror?.stop();
  await killStrays();
  if (mounted) execFileSync('umount', [mounted]);
  await w.cleanup();
});

interface CrashCase {
  phase: string;
  /** Whose start gets FERRY_CRASH_AT. */
  binary: typeof V1 | typeof V2;
  /** Limits for that start only. */
  limits?: Partial<typeof LIMITS>;
  end: 'committed' | 'rolled-back';
  /** update.begin of v2 seen this many times in all. */
  begins: number;
  /** Reports that must reach the mirror. */
  reports: string[];
  /** A check of what was on disk at the crash: proves the crash hit where it was meant to. */
  atCrash?: Partial<Pick<Exit, 'tmpLeft' | 'pendingLeft'>>;
}

/*
 * What the machine (agent/update/machine.ts) says follows each crash:
 * - before the swap (old binary v1): the restarted v1 finds a pre-swap phase (or
 *   `swapping` with itself running) → `interrupted`, staged copy discarded,
 *   idle; the next poll begins again and v2 is committed.
 * - after the swap, in v1: `swapping` with v2 running → v2 counts the boot and
 *   health-checks; committed without a second download.
 * - in v2's health check or soak: the crashed start counted as a boot
 *   (attempts 1 of maxAttempts 2), so the supervisor's restart is the retry and
 *   commits. Not a rollback: one crash is within the boot budget.
 * - after the commit was recorded: v2 stays committed; its `committed` report
 *   and the pending record's removal must survive the crash.
 * - during a rollback (forced by maxAttempts 0 for that v2 start): the design
 *   says the bad version is remembered and reported and never retried, and the
 *   node ends on v1.
 */
const CASES: CrashCase[] = [
  ...['downloaded', 'verified', 'stage-tmp', 'staged', 'self-tested', 'pending-written'].map(
    (phase): CrashCase => ({
      phase,
      binary: V1,
      end: 'committed',
      begins: 2,
      reports: ['interrupted', 'committed'],
      atCrash:
        phase === 'stage-tmp'
          ? { tmpLeft: true }
          : phase === 'pending-written'
            ? { pendingLeft: true }
            : { pendingLeft: false },
    }),
  ),
  {
    phase: 'swapped',
    binary: V1,
    end: 'committed',
    begins: 1,
    reports: ['committed'],
    atCrash: { pendingLeft: true },
  },
  { phase: 'boot-counted', binary: V2, end: 'committed', begins: 1, reports: ['committed'] },
  { phase: 'before-commit', binary: V2, end: 'committed', begins: 1, reports: ['healthy', 'committed'] },
  { phase: 'committed', binary: V2, end: 'committed', begins: 1, reports: ['committed'] },
  {
    phase: 'rolling-back',
    binary: V2,
    limits: { maxAttempts: 0 },
    end: 'rolled-back',
    begins: 1,
    reports: ['rolled-back'],
  },
  {
    phase: 'rollback-switched',
    binary: V2,
    limits: { maxAttempts: 0 },
    end: 'rolled-back',
    begins: 1,
    reports: ['rolled-back'],
  },
];

describe('kill -9 at every phase of a self-update v1 → v2', () => {
  for (const c of CASES) {
    it(`FERRY_CRASH_AT=${c.phase} in ${c.binary}: wholly v1 or v2, then ${c.end}`, async () => {
      const n = await Node.create(`crash-${c.phase}`);
      let armed = true;
      n.supervise(12, (target) => {
        if (!armed || target !== c.binary) return {};
        armed = false;
        return {
          FERRY_CRASH_AT: c.phase,
          ...(c.limits ? { FERRY_AGENT_UPDATE_LIMITS: JSON.stringify({ ...LIMITS, ...c.limits }) } : {}),
        };
      });
      try {
        const crash = await eventually('the SIGKILL', () =>
          Promise.resolve(n.exits.find((e) => e.signal === 'SIGKILL')),
        );
        if (c.atCrash) expect(crash).toMatchObject(c.atCrash);
        await eventually(
          `settled ${c.end}`,
          async () => {
            const u = await n.update();
            const cur = await n.current();
            if (c.end === 'committed')
              return u?.machine.phase === 'committed' && u.machine.version === V2 && cur === V2
                ? u
                : undefined;
            return u?.machine.phase === 'rolled-back' && cur === V1 ? u : undefined;
          },
          25_000,
          100,
        );
        if (c.end === 'rolled-back') await sleep(2_500); // a few polls of v1: no retry
        const settledAt = Date.now();
        // the reports expected, or whatever arrived within a few heartbeats
        const seen = await eventually('reports at the mirror', async () => {
          const got = (await n.reports()).filter((r) => r.version === V2).map((r) => r.outcome);
          return c.reports.every((o) => got.includes(o)) || Date.now() - settledAt > 6_000 ? got : undefined;
        });
        for (const outcome of c.reports)
          expect.soft(seen, `${outcome} report at the mirror`).toContain(outcome);
      } finally {
        await n.stop();
      }
      expect.soft(n.exits.filter((e) => e.signal === 'SIGKILL')).toHaveLength(1);
      expect.soft(await n.assertWhole()).toBe(c.end === 'committed' ? V2 : V1);
      expect.soft(n.begins(V2)).toBe(c.begins);
      const u = (await n.update())!;
      if (c.end === 'rolled-back') {
        expect.soft(u.machine).toMatchObject({ phase: 'rolled-back', version: V2, highestCommitted: null });
        expect.soft(u.badVersions.some((b) => b.endsWith(`:${V2}`))).toBe(true);
      } else {
        expect.soft(u.machine.highestCommitted).toBe(V2);
        expect.soft(u.badVersions).toEqual([]);
      }
    });
  }
});

/** Why the tmpfs cannot be had, or undefined when it can. */
function tmpfsUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'not running as root (mount -t tmpfs needs it)';
  const probe = mkdtempSync(join(tmpdir(), 'ferry-tmpfs-probe-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe], { stdio: 'pipe' });
    execFileSync('umount', [probe]);
    return undefined;
  } catch (e) {
    return `mount -t tmpfs is not permitted here (${(e as Error).message.split('\n')[0]})`;
  } finally {
    rmdirSync(probe);
  }
}

const noTmpfs = tmpfsUnavailable();
if (noTmpfs && process.env.FERRY_REQUIRE_ALL === '1')
  throw new Error(`a tmpfs is required (FERRY_REQUIRE_ALL=1): ${noTmpfs}`);
if (noTmpfs) console.warn(`skipping the full-disk staging test: ${noTmpfs}`);
let mounted: string | undefined;

describe('a full disk while staging', () => {
  it.skipIf(noTmpfs !== undefined)(
    'ENOSPC: staging fails with a code, v1 keeps running, nothing partial, reported',
    async () => {
      const install = join(w.dir, 'enospc', 'opt-ferry');
      await mkdir(install, { recursive: true });
      // room for v1 and a few pages more, not for v2
      const pages = Math.ceil((await stat(bins[V1]!)).size / 4096) + 8;
      execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${pages * 4}k`, 'tmpfs', install]);
      mounted = install;
      const n = await Node.create('enospc', install);
      n.supervise(5);
      try {
        const failed = await eventually(
          'a failed update report naming ENOSPC',
          () =>
            Promise.resolve(
              n.logs.find(
                (l) =>
                  l.event === 'update.report' &&
                  l.outcome === 'failed' &&
                  JSON.stringify(l).includes('ENOSPC'),
              ),
            ),
          20_000,
          100,
        );
        const t0 = Date.now();
        const report = await eventually('reports at the mirror', async () => {
          const r = (await n.reports()).find((x) => x.outcome === 'failed' && x.version === V2);
          return r ?? (Date.now() - t0 > 8_000 ? null : undefined);
        });
        expect
          .soft(report?.reason ?? '(no failed report)', 'a failed report naming ENOSPC')
          .toContain('ENOSPC');
        // keeps polling: cycles after the failure, still v1
        const from = n.logs.indexOf(failed);
        await eventually('cycles after the failure', () =>
          Promise.resolve(
            n.logs.slice(from).filter((l) => l.event === 'agent.cycle').length >= 2 || undefined,
          ),
        );
        expect.soft(n.exits).toEqual([]); // never restarted: v1 ran throughout
        expect.soft(await n.current()).toBe(V1);
        expect.soft(await n.tmpFiles(), 'half-written files').toEqual([]);
        expect.soft(await exists(join(install, 'versions', V2)), 'versions/2.0.0 left').toBe(false);
        expect.soft((await n.update())?.machine.phase).toBe('idle');
      } finally {
        await n.stop();
      }
      expect.soft(await n.assertWhole()).toBe(V1);
    },
  );
});
