#!/usr/bin/env node
/**
 * `npm run demo`: ferry's main job on embedded defaults, through the real CLI.
 * Generates keys and a trust root, builds a signed bundle of sample artifacts,
 * inspects and verifies it as an auditor would, splits a copy into volumes,
 * then shows the refusals: a tampered blob, the wrong site, an unauthorised key;
 * then a mirror serving an agent (refused without an enrolment token, enrolled
 * with one), and the agent's telemetry going home by
 * courier (signed export, ack back) and over a link (upstream forwarding);
 * a peer mirror; then a staged rollout: two agent versions built from this tree,
 * three nodes running the real single-file agent, a canary first, the rest
 * after an approval.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import {
  access,
  chmod,
  mkdtemp,
  readFile,
  readlink,
  writeFile,
  mkdir,
  copyFile,
  symlink,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomFillSync } from 'node:crypto';
import { installDemo } from './demo-install.js';

const FERRY = join(dirname(fileURLToPath(import.meta.url)), 'ferry.js');
const bold = (s: string) => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);

let work = '';

/** Every long-running process the demo starts; killed when the demo exits, however it exits. */
const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of children) c.kill('SIGTERM');
});
function step(title: string): void {
  console.log(`\n${bold(`== ${title}`)}`);
}

/**
 * Runs `ferry ARGS` in the work dir, echoing the command and its output (stdout only to the caller
 * when `secret`: it holds something not to be shown). Exits the demo when the exit code is not
 * `expect`; returns stdout and stderr.
 */
function ferry(args: string[], expect: 0 | 1, secret = false): { stdout: string; stderr: string } {
  console.log(`$ ferry ${args.map((a) => (a.startsWith(work) ? relative(work, a) || '.' : a)).join(' ')}`);
  const r = spawnSync(process.execPath, [FERRY, ...args], { cwd: work, encoding: 'utf8' });
  const out = ((secret ? '' : r.stdout) + r.stderr).trimEnd();
  if (out) console.log(out.replace(/^/gm, '  '));
  const code = r.status ?? -1;
  console.log(`  (exit ${code}${expect === 1 && code === 1 ? ': refused, as it should be' : ''})`);
  if (code !== expect) {
    console.error(`demo: expected exit ${expect}, got ${code}`);
    process.exit(1);
  }
  return { stdout: r.stdout, stderr: r.stderr };
}

interface Running {
  url: string;
  waitFor(event: string, ms?: number): Promise<Record<string, unknown>>;
  stop(): Promise<void>;
}

/** Starts a long-running `ferry …` (mirror serve, server start) and follows its JSON-line log. */
async function background(args: string[], started: string, stopped: string): Promise<Running> {
  console.log(`$ ferry ${args.map((a) => (a.startsWith(work) ? relative(work, a) : a)).join(' ')} &`);
  const child = spawn(process.execPath, [FERRY, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(child);
  child.once('exit', () => children.delete(child));
  const events: Record<string, unknown>[] = [];
  let buffered = '';
  child.stderr.on('data', (d: Buffer) => {
    buffered += d.toString();
    for (let i = buffered.indexOf('\n'); i >= 0; i = buffered.indexOf('\n')) {
      const line = buffered.slice(0, i);
      buffered = buffered.slice(i + 1);
      try {
        events.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        console.log(`  ${line}`);
      }
    }
  });
  const waitFor = async (event: string, ms = 15_000) => {
    for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, 100))) {
      const e = events.find((x) => x.event === event);
      if (e) return e;
    }
    throw new Error(`demo: ${args[0]} did not log ${event}`);
  };
  const url = String((await waitFor(started)).url);
  return {
    url,
    waitFor,
    stop: async () => {
      child.kill('SIGTERM');
      await waitFor(stopped).catch(() => undefined);
    },
  };
}

/**
 * The doctor on the demo's node (`node/` is its filesystem root, where the unit goes as the kit
 * installs it): one thing broken (the key's mode), found, fixed after a dry run, and checked again.
 */
async function doctorDemo(agentState: string, nodeRoot: string): Promise<void> {
  const units = join(nodeRoot, 'etc/systemd/system');
  await mkdir(join(units, 'multi-user.target.wants'), { recursive: true });
  await copyFile(
    join(dirname(FERRY), '../../systemd/ferry-agent.service'),
    join(units, 'ferry-agent.service'),
  );
  await symlink('../ferry-agent.service', join(units, 'multi-user.target.wants/ferry-agent.service'));
  const key = join(agentState, 'keys/agent.key');
  console.log(`$ chmod 644 ${relative(work, key)}   # someone loosened the agent's key`);
  await chmod(key, 0o644);
  const doctor = ['agent', 'doctor', '--state', agentState, '--root', nodeRoot];
  ferry(doctor, 1);
  ferry([...doctor, '--fix', '--dry-run'], 1);
  ferry([...doctor, '--fix'], 0);
}

/** Runs `ferry mirror serve` with a drop folder, drops a bundle in, and talks to it as an agent would. */
async function serveDemo(dir: string, root: string, bundle: string): Promise<void> {
  const drop = join(dir, 'drop');
  await mkdir(drop, { recursive: true });
  const data = join(dir, 'data');
  const args = ['mirror', 'serve', '--data', data, '--listen', '127.0.0.1:0'];
  args.push('--trust', root, '--site', 'plant-7', '--drop', drop);
  let mirror = await background(args, 'mirror.started', 'mirror.stopped');
  const url = mirror.url;
  const agentState = join(dir, 'node/agent');
  try {
    console.log(`  mirror listening on ${url}`);
    console.log(`$ cp ${relative(work, bundle)} served/drop/   # the courier`);
    await copyFile(bundle, join(drop, 'release-1.ferry'));
    const imported = await mirror.waitFor('import.accepted');
    console.log(`  log: ${JSON.stringify(imported)}`);
    const m = await fetch(`${url}/v1/manifest`);
    const etag = m.headers.get('etag') ?? '';
    console.log(
      `  GET /v1/manifest → ${m.status}, ETag ${etag}, ${(await m.arrayBuffer()).byteLength} bytes`,
    );
    const again = await fetch(`${url}/v1/manifest`, { headers: { 'If-None-Match': etag } });
    console.log(`  GET /v1/manifest (If-None-Match) → ${again.status}: nothing new, nothing sent`);
    const inv = (await (await fetch(`${url}/v1/inventory`)).json()) as { blobs: string[] };
    const blob = inv.blobs[0]!;
    const part = await fetch(`${url}/v1/blobs/sha256/${blob}`, { headers: { Range: 'bytes=0-1023' } });
    await part.arrayBuffer();
    console.log(
      `  GET /v1/blobs/sha256/${blob.slice(0, 12)}… Range bytes=0-1023 → ${part.status} ${part.headers.get('content-range')}`,
    );
    const metrics = await (await fetch(`${url}/metrics`)).text();
    for (const line of metrics
      .split('\n')
      .filter((l) => l.startsWith('ferry_mirror_imports') || l.startsWith('ferry_mirror_active'))) {
      console.log(`  metrics: ${line}`);
    }
    step(
      '9. A node agent: enrols with a token, verifies the manifest itself, fetches, runs the script, places the managed file, reports',
    );
    const pollArgs = ['agent', 'poll', '--now', '--state', agentState, '--mirror', url];
    const firstRun = ['--trust', root, '--site', 'plant-7', '--group', 'web'];
    console.log('  without a token the mirror enrols no one:');
    const refused = ferry([...pollArgs, ...firstRun], 1);
    if (!refused.stderr.includes('TOKEN_MISSING')) {
      console.error('demo: the enrolment without a token was not refused with TOKEN_MISSING');
      process.exit(1);
    }
    console.log(
      '  the site operator makes a one-use token for the web group (shown once; here it goes to a file):',
    );
    const made = ferry(
      ['mirror', 'token', 'create', '--data', data, '--ttl', '1h', '--group', 'web'],
      0,
      true,
    );
    const tokenFile = join(dir, 'node/enrol.token');
    await writeFile(tokenFile, made.stdout, { mode: 0o600 });
    ferry([...pollArgs, '--token-file', tokenFile], 0);
    ferry(['mirror', 'token', 'list', '--data', data], 0);
    ferry(['agent', 'status', '--state', agentState], 0);
    const conf = join(work, 'node/etc/acme/app.conf');
    console.log(`$ echo tampered > ${relative(work, conf)}; ferry agent poll --now …   # drift is restored`);
    await writeFile(conf, 'tampered\n');
    ferry(['agent', 'poll', '--now', '--state', agentState, '--json'], 0);
    console.log(`  ${relative(work, conf)} now: ${JSON.stringify(await readFile(conf, 'utf8'))}`);
    ferry(['mirror', 'status', '--data', data], 0);
    const fleet = (await (await fetch(`${url}/v1/fleet`)).json()) as {
      summary: { agents: number; behind: number };
    };
    console.log(
      `  GET /v1/fleet → ${fleet.summary.agents} agent(s), ${fleet.summary.behind} behind the version the manifest wants (also on the status page, and as ferry_agents* metrics)`,
    );
    await doctorDemo(agentState, join(work, 'node'));

    step('10. Telemetry home with no link at all: the courier carries a signed export out and the ack back');
    const server = join(work, 'server');
    const usb = join(work, 'usb');
    ferry(['server', 'identity', '--data', server, '--out', join(usb, 'server.pub')], 0);
    ferry(['mirror', 'identity', '--data', data, '--out', join(usb, 'mirror.pub')], 0);
    ferry(
      ['server', 'register-mirror', '--data', server, '--site', 'plant-7', '--pub', join(usb, 'mirror.pub')],
      0,
    );
    const exported = join(usb, 'plant-7-telemetry.1.jsonl');
    ferry(['mirror', 'export-telemetry', '--data', data, '--out', exported], 0); // done by the serving mirror
    const forged = join(usb, 'plant-7-telemetry.forged.jsonl');
    const lines = (await readFile(exported, 'utf8')).split('\n');
    const at = lines.findIndex((l) => l.includes('"kind":"heartbeat"'));
    lines[at] = lines[at]!.replace(/"counter":(\d+)/, (_, n: string) => `"counter":${Number(n) + 1000}`);
    await writeFile(forged, lines.join('\n'));
    console.log(`$ (one heartbeat's counter changed on the way) > ${relative(work, forged)}`);
    ferry(['server', 'import-telemetry', forged, '--data', server], 1);
    const ack = join(usb, 'plant-7.ack.1.json');
    ferry(['server', 'import-telemetry', exported, '--data', server, '--ack-out', ack], 0);
    ferry(['server', 'import-telemetry', exported, '--data', server], 0); // idempotent
    ferry(['mirror', 'import-ack', ack, '--data', data, '--server-key', join(usb, 'server.pub')], 0);
    ferry(['server', 'agents', '--data', server], 0);
    await mirror.stop();
    console.log('  SIGTERM → mirror stopped gracefully');

    step('11. A link comes back: the mirror forwards heartbeats to the server as they arrive');
    const srv = await background(
      ['server', 'start', '--data', server, '--listen', '127.0.0.1:0'],
      'server.started',
      'server.stopped',
    );
    try {
      // acks are checked with the server key pinned in the data dir: any other key refuses the start
      ferry([...args, '--server-key', join(usb, 'mirror.pub')], 1);
      mirror = await background(
        [
          ...args.slice(0, 4),
          '--listen',
          url.replace('http://', ''),
          '--upstream',
          srv.url,
          '--server-key',
          join(usb, 'server.pub'),
        ],
        'mirror.started',
        'mirror.stopped',
      );
      ferry(['agent', 'poll', '--now', '--state', agentState], 0);
      // the fleet API needs a signed-in user or a bearer token (shown once; not printed here)
      const token = ferry(
        ['server', 'token', 'create', '--data', server, '--user', 'admin'],
        0,
        true,
      ).stdout.trim();
      const auth = { headers: { authorization: `Bearer ${token}` } };
      let fleet: { agents: { hostname: string; heartbeats: number; lastCounter: number }[] } = { agents: [] };
      for (let i = 0; i < 50; i++) {
        fleet = (await (await fetch(`${srv.url}/v1/agents`, auth)).json()) as typeof fleet;
        if ((fleet.agents[0]?.heartbeats ?? 0) >= 3) break;
        await new Promise((r) => setTimeout(r, 200));
      }
      for (const a of fleet.agents)
        console.log(
          `  GET ${srv.url}/v1/agents → ${a.hostname}: ${a.heartbeats} heartbeat(s), last #${a.lastCounter}`,
        );
      ferry(['mirror', 'status', '--data', data], 0);
    } finally {
      await mirror.stop();
      await srv.stop();
      console.log('  SIGTERM → mirror and server stopped gracefully');
    }
  } catch (e) {
    await mirror.stop();
    throw e;
  }
}

/**
 * A second mirror of the site that no courier visits: it polls the first as a peer, pulls what it
 * lacks, adopts it under its own trust root, and serves an agent that knows only it.
 */
async function peerDemo(dir: string, root: string, firstData: string): Promise<void> {
  const data = join(dir, 'data');
  // Each mirror lists the other's key: the second takes the first's site log (enrolments, revocations,
  // rollout decisions), and the first answers only mirrors it lists.
  await mkdir(dir, { recursive: true });
  const firstPub = join(dir, 'first-mirror.pub');
  const secondPub = join(dir, 'second-mirror.pub');
  ferry(['mirror', 'identity', '--data', firstData, '--out', firstPub], 0);
  ferry(['mirror', 'identity', '--data', data, '--out', secondPub], 0);
  const first = await background(
    ['mirror', 'serve', '--data', firstData, '--listen', '127.0.0.1:0', '--peer-key', secondPub],
    'mirror.started',
    'mirror.stopped',
  );
  const second = await background(
    [
      ...['mirror', 'serve', '--data', data, '--listen', '127.0.0.1:0', '--trust', root, '--site', 'plant-7'],
      ...['--peer', first.url, '--peer-interval', '0.5', '--peer-key', firstPub],
    ],
    'mirror.started',
    'mirror.stopped',
  );
  try {
    const adopted = await second.waitFor('peer.adopted', 60_000);
    console.log(
      `  second mirror adopted sequence ${String(adopted.sequence)} from peer ${String(adopted.offeredBy)} (${String(adopted.blobsAdded)} blobs pulled and verified)`,
    );
    const known = await second.waitFor('site.agent_adopted', 60_000);
    console.log(
      `  site log: the second mirror serves agent ${String(known.agentId)}, enrolled at the first, from the first mirror's signed entry`,
    );
    ferry(['mirror', 'status', '--data', data], 0);
    const made = ferry(
      ['mirror', 'token', 'create', '--data', data, '--ttl', '1h', '--group', 'web'],
      0,
      true,
    );
    const tokenFile = join(dir, 'node/enrol.token');
    await mkdir(join(dir, 'node'), { recursive: true });
    await writeFile(tokenFile, made.stdout, { mode: 0o600 });
    const agent = join(dir, 'node/agent');
    ferry(
      [
        ...['agent', 'poll', '--now', '--state', agent, '--mirror', second.url, '--trust', root],
        ...['--site', 'plant-7', '--group', 'web', '--token-file', tokenFile],
      ],
      0,
    );
    ferry(['agent', 'status', '--state', agent], 0);
  } finally {
    await second.stop();
    await first.stop();
    console.log('  SIGTERM → both mirrors stopped gracefully');
  }
}

/**
 * The connected server with its web UI: a release registered from the artifacts above, the site's next
 * bundle (sequence 2, a canary plan) signed and dropped at the site's mirror, which has a link home;
 * then both stay up for a browser until Ctrl-C (or stop at once with --exit).
 */
async function serverDemo(dir: string, root: string): Promise<void> {
  step("15. The connected server: a release, the site's next bundle with a canary plan, the web UI");
  const server = join(work, 'server');
  const usb = join(work, 'usb');
  const release = {
    name: 'fleet',
    version: '1.4.2',
    artifacts: [
      {
        name: 'ferry-agent',
        kind: 'agent',
        version: '1.4.2',
        platform: 'linux-x64',
        path: 'artifacts/ferry-agent',
      },
      {
        name: 'rotate-logs',
        kind: 'script',
        version: '3',
        interpreter: 'sh',
        path: 'artifacts/rotate-logs.sh',
      },
      { name: 'app-conf', kind: 'file', version: '1', path: 'artifacts/app.conf' },
      { name: 'baseline', kind: 'policy', version: '7', path: 'artifacts/baseline.json' },
    ],
  };
  await writeFile(join(work, 'release.json'), JSON.stringify(release, null, 2) + '\n');
  ferry(['server', 'release', 'add', '--data', server, '--spec', join(work, 'release.json')], 0);
  // the site already runs sequence 1 (step 8): its next bundle must be above it
  ferry(
    [
      'server',
      'site',
      'add',
      '--data',
      server,
      '--name',
      'plant-7',
      '--publisher',
      'acme-ops',
      '--sequence',
      '1',
    ],
    0,
  );
  const next = join(usb, 'plant-7-2.ferry');
  ferry(
    [
      'server',
      'bundle',
      '--data',
      server,
      '--site',
      'plant-7',
      '--release',
      'fleet@1.4.2',
      '--strategy',
      'staggered',
    ].concat(['--key', join(work, 'keys/release.key'), '--out', next]),
    0,
  );
  ferry(['bundle', 'verify', next, '--trust', root, '--site', 'plant-7'], 0);
  ferry(['server', 'audit', 'verify', '--data', server], 0);
  console.log('  a user for this demo (its password is shown once, here):');
  const user = ferry(['server', 'user', 'add', '--data', server, '--name', 'demo', '--role', 'admin'], 0);
  const password = /password \(shown once\): (\S+)/.exec(user.stdout)?.[1] ?? '';
  const srv = await background(
    ['server', 'start', '--data', server, '--listen', '127.0.0.1:0'],
    'server.started',
    'server.stopped',
  );
  let mirror: Running | undefined;
  try {
    const drop = join(dir, 'drop');
    mirror = await background(
      ['mirror', 'serve', '--data', join(dir, 'data'), '--listen', '127.0.0.1:0', '--drop', drop].concat([
        '--upstream',
        srv.url,
        '--server-key',
        join(usb, 'server.pub'),
      ]),
      'mirror.started',
      'mirror.stopped',
    );
    console.log(`$ cp ${relative(work, next)} ${relative(work, drop)}/   # the courier`);
    await copyFile(next, join(drop, 'plant-7-2.ferry'));
    await mirror.waitFor('import.accepted');
    console.log(
      '  the mirror imported sequence 2 with its canary plan; its telemetry goes home over the link',
    );
    console.log(`\n${bold('server web UI')}: ${srv.url}/  (sign in as demo / ${password})`);
    console.log(`${bold('mirror status page')}: ${mirror.url}/`);
    if (!process.argv.includes('--exit')) {
      console.log('both stay up until Ctrl-C');
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
    }
  } finally {
    await mirror?.stop();
    await srv.stop();
    console.log('  SIGTERM → mirror and server stopped gracefully');
  }
}

/** Polls `check` every 200 ms until it gives a value; throws after `ms` naming what it waited for. */
async function until<T>(what: string, check: () => Promise<T | undefined>, ms = 60_000): Promise<T> {
  for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, 200))) {
    const v = await check();
    if (v !== undefined) return v;
  }
  throw new Error(`demo: gave up waiting for ${what} after ${ms / 1000} s`);
}

/**
 * One node of the rollout step: a real single-file agent installed as <install>/versions/<v>/ferry-agent
 * with <install>/current pointing at it, kept running the way systemd/ferry-agent.service does
 * (ferry-agent-prestart.sh before every start, a restart whenever it exits, as after activating a new
 * version).
 */
class DemoNode {
  readonly install: string;
  readonly state: string;
  readonly logs: Record<string, unknown>[] = [];
  private child: ChildProcess | undefined;
  private supervisor: Promise<void> | undefined;
  private stopping = false;
  constructor(
    readonly name: string,
    dir: string,
  ) {
    this.install = join(dir, name, 'opt-ferry');
    this.state = join(dir, name, 'state');
  }

  async setUp(build: string, version: string): Promise<void> {
    await mkdir(join(this.install, 'versions', version), { recursive: true });
    await copyFile(build, join(this.install, 'versions', version, 'ferry-agent'));
    await symlink(join('versions', version), join(this.install, 'current'));
  }

  start(runArgs: string[]): void {
    this.supervisor = this.supervise(runArgs);
  }

  private async supervise(runArgs: string[]): Promise<void> {
    const env = { ...process.env, PATH: `${dirname(process.execPath)}:${process.env.PATH ?? ''}` };
    const prestart = join(dirname(FERRY), '../../systemd/ferry-agent-prestart.sh');
    for (let starts = 0; starts < 20 && !this.stopping; starts++) {
      spawnSync('sh', [prestart, this.state, this.install], { stdio: 'ignore' });
      const c = spawn(join(this.install, 'current', 'ferry-agent'), ['run', ...runArgs], {
        stdio: ['ignore', 'ignore', 'pipe'],
        cwd: '/',
        env,
      });
      this.child = c;
      children.add(c);
      let partial = '';
      c.stderr.on('data', (d: Buffer) => {
        partial += d.toString();
        const lines = partial.split('\n');
        partial = lines.pop() ?? '';
        for (const l of lines) {
          try {
            this.logs.push(JSON.parse(l) as Record<string, unknown>);
          } catch {
            this.logs.push({ event: 'text', line: l });
          }
        }
      });
      await new Promise((resolve) => c.once('close', resolve));
      children.delete(c);
      if (!this.stopping) await new Promise((r) => setTimeout(r, 200));
    }
  }

  /** Asks for a cycle now (SIGUSR1) rather than at the next interval. */
  poke(): void {
    this.child?.kill('SIGUSR1');
  }

  async version(): Promise<string> {
    return basename(await readlink(join(this.install, 'current')));
  }

  async agentId(): Promise<string | undefined> {
    const text = await readFile(join(this.state, 'state.json'), 'utf8').catch(() => '{}');
    const id = (JSON.parse(text) as { agentId?: unknown }).agentId;
    return typeof id === 'string' ? id : undefined;
  }

  /** True once the update machine committed `v` and `current` points at it. */
  async committed(v: string): Promise<boolean> {
    const text = await readFile(join(this.state, 'update.json'), 'utf8').catch(() => 'null');
    const u = JSON.parse(text) as { machine?: { phase: string; version: string | null } } | null;
    return u?.machine?.phase === 'committed' && u.machine.version === v && (await this.version()) === v;
  }

  async stop(): Promise<void> {
    this.stopping = true;
    this.child?.kill('SIGTERM');
    await this.supervisor;
  }
}

/**
 * A staged rollout with real agents: two agent versions built from this tree (scripts/build-agent.mjs),
 * a bundle that moves the site from 2.0.0 to 2.1.0 under a manual plan, a mirror, and three nodes running
 * the real single-file agent. They wait at the mirror's gate; `update-now` lets a canary go first, and
 * `approve` lets the rest follow. Every process started here is stopped, whatever happens.
 */
async function rolloutDemo(dir: string, root: string): Promise<void> {
  step('14. A staged rollout with real agents: three nodes move from 2.0.0 to 2.1.0, a canary first');
  const began = Date.now();
  const repo = join(dirname(FERRY), '../..');
  const from = '2.0.0';
  const to = '2.1.0';
  const build = (v: string) => join(work, 'agent-builds', v, 'ferry-agent');
  await Promise.all(
    [from, to].map(async (v) => {
      const out = build(v);
      if (
        await access(out).then(
          () => true,
          () => false,
        )
      ) {
        console.log(`  reusing ${relative(work, out)}`);
        return;
      }
      const r = await new Promise<{ code: number | null; text: string }>((resolve, reject) => {
        const c = spawn(
          process.execPath,
          [join(repo, 'scripts/build-agent.mjs'), '--version', v, '--out', out],
          { stdio: ['ignore', 'pipe', 'pipe'] },
        );
        let text = '';
        c.stdout.on('data', (d: Buffer) => (text += d.toString()));
        c.stderr.on('data', (d: Buffer) => (text += d.toString()));
        c.once('error', reject);
        c.once('close', (code) => resolve({ code, text }));
      });
      if (r.code !== 0) throw new Error(`demo: building agent ${v} failed: ${r.text}`);
      const first = r.text.split('\n')[0] ?? '';
      console.log(`$ node scripts/build-agent.mjs --version ${v} --out ${relative(work, out)}`);
      console.log(`  ${first.replace(out, relative(work, out))}`);
    }),
  );

  const platform = `linux-${process.arch}`;
  const spec = {
    publisher: 'acme-ops',
    sequence: 1,
    expires: '90d',
    sites: ['plant-7'],
    artifacts: [
      { name: 'ferry-agent', kind: 'agent', version: to, platform, path: relative(work, build(to)) },
    ],
    // the first wave is (almost surely) empty at three nodes: the rollout waits for an approval at once
    rollout: {
      agent: to,
      strategy: 'manual',
      waves: [{ percent: 0.01 }, { percent: 100 }],
      maxFailureRate: 0,
    },
  };
  await mkdir(dir, { recursive: true });
  const specPath = join(work, 'rollout-spec.json');
  await writeFile(specPath, JSON.stringify(spec, null, 2) + '\n');
  console.log(`  plan: agent ${to}, strategy manual, waves 0.01 % then 100 %, halt on the first failure`);
  const bundle = join(dir, `agent-${to}.ferry`);
  ferry(
    ['bundle', 'create', '--spec', specPath, '--key', join(work, 'keys/release.key'), '--out', bundle],
    0,
  );
  const data = join(dir, 'data');
  ferry(['mirror', 'import', bundle, '--data', data, '--trust', root, '--site', 'plant-7'], 0);

  const nodes = ['node-1', 'node-2', 'node-3'].map((n) => new DemoNode(n, dir));
  let mirror: Running | undefined;
  try {
    mirror = await background(
      ['mirror', 'serve', '--data', data, '--listen', '127.0.0.1:0'],
      'mirror.started',
      'mirror.stopped',
    );
    const made = ferry(
      ['mirror', 'token', 'create', '--data', data, '--ttl', '1h', '--uses', '3', '--group', 'web'],
      0,
      true,
    );
    const tokenFile = join(dir, 'enrol.token');
    await writeFile(tokenFile, made.stdout, { mode: 0o600 });
    const runArgs = (n: DemoNode) => [
      ...['--state', n.state, '--mirror', mirror!.url, '--trust', root, '--site', 'plant-7'],
      ...['--group', 'web', '--token-file', tokenFile, '--install-root', n.install],
      ...['--interval', '1', '--update-soak', '1'],
    ];
    for (const n of nodes) {
      await n.setUp(build(from), from);
      n.start(runArgs(n));
    }
    console.log(
      `  3 nodes, each with ${relative(work, join(dir, 'node-N/opt-ferry'))}/current → versions/${from}, ` +
        'kept running as systemd would (prestart boot counter, restart on exit):',
    );
    console.log(
      `$ ${relative(work, join(dir, 'node-N/opt-ferry/current/ferry-agent'))} run --state … --mirror ${mirror.url} ` +
        '--token-file … --interval 1 --update-soak 1 &',
    );
    const ids = await until('the three agents to enrol', async () => {
      const all = await Promise.all(nodes.map((n) => n.agentId()));
      return all.every((x): x is string => x !== undefined) ? all : undefined;
    });
    for (const [i, n] of nodes.entries())
      console.log(`  ${n.name}: agent ${ids[i]} enrolled, running ${from}`);
    const phase = (): string => {
      const r = spawnSync(
        process.execPath,
        [FERRY, 'mirror', 'rollout', 'status', '--data', data, '--json'],
        {
          encoding: 'utf8',
        },
      );
      return r.status === 0 ? (JSON.parse(r.stdout) as { rollout: { phase: string } }).rollout.phase : '';
    };
    const committedAtMirror = (): number => {
      const r = spawnSync(
        process.execPath,
        [FERRY, 'mirror', 'rollout', 'status', '--data', data, '--json'],
        {
          encoding: 'utf8',
        },
      );
      if (r.status !== 0) return 0;
      const v = JSON.parse(r.stdout) as { rollout: { perWave: { committed: number }[] } };
      return v.rollout.perWave.reduce((n, w) => n + w.committed, 0);
    };
    await until('the rollout to await approval', async () =>
      Promise.resolve(phase() === 'awaiting-approval' ? true : undefined),
    );
    console.log(`  every node asks the gate each cycle; nobody may start ${to} yet:`);
    ferry(['mirror', 'rollout', 'status', '--data', data], 0);

    // the canary: the first node still on the old version (a node in the tiny first wave went already)
    const versions = await Promise.all(nodes.map((n) => n.version()));
    const ci = Math.max(0, versions.indexOf(from));
    const canary = nodes[ci]!;
    console.log(`  the operator lets ${canary.name} go first:`);
    ferry(['mirror', 'update-now', '--agent', ids[ci]!, '--data', data, '--actor', 'ops'], 0);
    canary.poke();
    const t0 = Date.now();
    await until(`${canary.name} to commit ${to}`, async () =>
      (await canary.committed(to)) ? true : undefined,
    );
    // its heartbeat saying so reaches the mirror on its next cycle
    await until(`the mirror to hear ${canary.name} committed`, async () =>
      Promise.resolve(committedAtMirror() >= 1 ? true : undefined),
    );
    const others = nodes.filter((n) => n !== canary);
    const otherVersions = await Promise.all(others.map((n) => n.version()));
    console.log(
      `  ${canary.name} downloaded ${to}, verified it, self-tested it, switched current, restarted, passed its ` +
        `health check, soaked 1 s and committed (${((Date.now() - t0) / 1000).toFixed(1)} s); ` +
        others.map((n, i) => `${n.name} ${otherVersions[i]}`).join(', '),
    );
    ferry(['mirror', 'rollout', 'status', '--data', data], 0);

    console.log('  the canary is healthy: the operator approves the next wave');
    ferry(['mirror', 'rollout', 'approve', '--data', data, '--actor', 'ops'], 0);
    for (const n of others) n.poke();
    await until('every node to commit', async () =>
      (await Promise.all(others.map((n) => n.committed(to)))).every(Boolean) ? true : undefined,
    );
    await until('the rollout to complete', async () =>
      Promise.resolve(phase() === 'completed' ? true : undefined),
    );
    ferry(['mirror', 'rollout', 'status', '--data', data], 0);
    const fleetLine = await until('the mirror to see every agent on the new version', () => {
      const r = spawnSync(process.execPath, [FERRY, 'mirror', 'status', '--data', data], {
        encoding: 'utf8',
      });
      const line = /^\s*fleet: .*$/m.exec(r.stdout)?.[0].trim();
      return Promise.resolve(line?.includes(`(${to}: 3)`) ? line : undefined);
    });
    console.log(
      `$ ferry mirror status --data ${relative(work, data)}   # its fleet line, from the agents' heartbeats`,
    );
    console.log(`  ${fleetLine}`);
    ferry(['agent', 'status', '--state', canary.state], 0);
    for (const n of nodes) {
      const bin = join(n.install, 'current', 'ferry-agent');
      const v = spawnSync(bin, ['--version'], {
        encoding: 'utf8',
        env: { ...process.env, PATH: `${dirname(process.execPath)}:${process.env.PATH ?? ''}` },
      });
      console.log(`$ ${relative(work, bin)} --version   # current → versions/${await n.version()}`);
      console.log(`  ${v.stdout.trim()}`);
    }
    console.log(
      `  all three nodes on ${to}; this step took ${((Date.now() - began) / 1000).toFixed(1)} s, builds included`,
    );
  } catch (e) {
    for (const n of nodes) {
      const tail = n.logs
        .filter((l) => String(l.event).startsWith('update') || l.level === 'error')
        .slice(-6);
      console.error(`  ${n.name} (last update events): ${JSON.stringify(tail)}`);
    }
    throw e;
  } finally {
    await Promise.all(nodes.map((n) => n.stop()));
    await mirror?.stop();
    console.log('  SIGTERM → agents and mirror stopped');
  }
}

async function main(): Promise<void> {
  const dirFlag = process.argv.indexOf('--dir');
  work =
    dirFlag > 0 && process.argv[dirFlag + 1]
      ? process.argv[dirFlag + 1]!
      : await mkdtemp(join(tmpdir(), 'ferry-demo-'));
  await mkdir(work, { recursive: true });
  console.log(`ferry demo — working in ${work}`);

  step('1. Keys: an offline root key and a release (bundle) key');
  ferry(['keys', 'generate', '--out', join(work, 'keys'), '--name', 'root'], 0);
  ferry(['keys', 'generate', '--out', join(work, 'keys'), '--name', 'release'], 0);

  step('2. Trust root: root role signs roots, bundle role signs bundles');
  ferry(
    [
      'trust',
      'init',
      '--root-key',
      join(work, 'keys/root.key'),
      '--bundle-key',
      join(work, 'keys/release.pub'),
      '--expires',
      '365d',
      '--out',
      join(work, 'root.json'),
    ],
    0,
  );

  step('3. Build a signed bundle: agent binaries, a script and a policy for site plant-7');
  await mkdir(join(work, 'artifacts'), { recursive: true });
  await writeFile(join(work, 'artifacts/ferry-agent'), randomFillSync(Buffer.alloc(1536 * 1024)));
  await writeFile(join(work, 'artifacts/ferry-agent-arm64'), randomFillSync(Buffer.alloc(1024 * 1024)));
  await writeFile(
    join(work, 'artifacts/rotate-logs.sh'),
    // harmless on any machine: the demo's node is this one
    '#!/bin/sh\necho "rotating logs of the demo site (keep $2)"; date -u +%FT%TZ >> "$(dirname "$0")/../../rotations.log" 2>/dev/null || true\n',
  );
  await writeFile(join(work, 'artifacts/app.conf'), 'listen = 8080\nlog_level = info\n');
  const policy = {
    type: 'ferry.policy/v1',
    scripts: [
      { script: 'rotate-logs', groups: ['*'], schedule: 'every 15m', args: ['--keep', '7'], timeoutSec: 60 },
    ],
    files: [
      { path: join(work, 'node/etc/acme/app.conf'), artifact: 'app-conf', mode: '0640', enforce: true },
    ],
    agent: { pollIntervalSec: 30 },
  };
  await writeFile(join(work, 'artifacts/baseline.json'), JSON.stringify(policy, null, 2) + '\n');
  const spec = {
    publisher: 'acme-ops',
    sequence: 1,
    expires: '90d',
    sites: ['plant-7'],
    artifacts: [
      {
        name: 'ferry-agent',
        kind: 'agent',
        version: '1.4.2',
        platform: 'linux-x64',
        path: 'artifacts/ferry-agent',
      },
      {
        name: 'ferry-agent-arm64',
        kind: 'agent',
        version: '1.4.2',
        platform: 'linux-arm64',
        path: 'artifacts/ferry-agent-arm64',
      },
      {
        name: 'rotate-logs',
        kind: 'script',
        version: '3',
        interpreter: 'sh',
        path: 'artifacts/rotate-logs.sh',
      },
      { name: 'app-conf', kind: 'file', version: '1', path: 'artifacts/app.conf' },
      { name: 'baseline', kind: 'policy', version: '7', path: 'artifacts/baseline.json' },
    ],
    rollout: {
      agent: '1.4.2',
      strategy: 'staggered',
      waves: [{ percent: 5, soakMinutes: 30 }, { percent: 100 }],
    },
    minAgentVersion: '1.3.0',
  };
  await writeFile(join(work, 'spec.json'), JSON.stringify(spec, null, 2) + '\n');
  const bundle = join(work, 'release-1.ferry');
  ferry(
    [
      'bundle',
      'create',
      '--spec',
      join(work, 'spec.json'),
      '--key',
      join(work, 'keys/release.key'),
      '--out',
      bundle,
    ],
    0,
  );

  step('4. The auditor: inspect, then verify offline with nothing but root.json');
  ferry(['bundle', 'inspect', bundle], 0);
  ferry(['bundle', 'verify', bundle, '--trust', join(work, 'root.json'), '--site', 'plant-7'], 0);

  step('5. Volumes for small media: each volume verifies on its own');
  await mkdir(join(work, 'usb'), { recursive: true });
  ferry(
    [
      'bundle',
      'create',
      '--spec',
      join(work, 'spec.json'),
      '--key',
      join(work, 'keys/release.key'),
      '--out',
      join(work, 'usb/release-1.ferry'),
      '--volume-size',
      '2M',
    ],
    0,
  );
  ferry(['bundle', 'verify', join(work, 'usb/release-1.vol1.ferry'), '--trust', join(work, 'root.json')], 0);
  ferry(['bundle', 'verify', join(work, 'usb/release-1.vol2.ferry'), '--trust', join(work, 'root.json')], 0);

  step('6. Refusals: a flipped bit, the wrong site, an unauthorised key');
  const tampered = join(work, 'tampered.ferry');
  await copyFile(bundle, tampered);
  const bytes = await readFile(tampered);
  bytes[8192] = (bytes[8192] ?? 0) ^ 0x01; // inside the agent binary's blob
  await writeFile(tampered, bytes);
  ferry(['bundle', 'verify', tampered, '--trust', join(work, 'root.json')], 1);
  ferry(['bundle', 'verify', bundle, '--trust', join(work, 'root.json'), '--site', 'ship-3'], 1);
  ferry(['keys', 'generate', '--out', join(work, 'keys'), '--name', 'intruder'], 0);
  const forged = join(work, 'forged.ferry');
  ferry(
    [
      'bundle',
      'create',
      '--spec',
      join(work, 'spec.json'),
      '--key',
      join(work, 'keys/intruder.key'),
      '--out',
      forged,
    ],
    0,
  );
  ferry(['bundle', 'verify', forged, '--trust', join(work, 'root.json'), '--json'], 1);

  step(
    '7. The site mirror: volumes imported in any order, activated only when complete; refusals quarantined',
  );
  const data = join(work, 'mirror-data');
  const vol = (n: number) => join(work, `usb/release-1.vol${n}.ferry`);
  ferry(
    ['mirror', 'import', vol(2), '--data', data, '--trust', join(work, 'root.json'), '--site', 'plant-7'],
    0,
  );
  ferry(['mirror', 'import', vol(1), '--data', data], 0);
  ferry(['mirror', 'import', tampered, '--data', data], 1);
  ferry(['mirror', 'status', '--data', data], 0);

  step(
    '8. The mirror serving agents: a courier drops a bundle, agents poll with ETag and resume blobs with Range',
  );
  await serveDemo(join(work, 'served'), join(work, 'root.json'), bundle);
  await installDemo(work, { step, ferry, background });

  step(
    '13. A peer mirror: no courier visits it; it pulls the release from the first mirror and serves an agent',
  );
  await peerDemo(join(work, 'peer'), join(work, 'root.json'), join(work, 'served/data'));

  await rolloutDemo(join(work, 'rollout'), join(work, 'root.json'));

  console.log(
    `\n${bold('demo complete')}: every good bundle verified, every bad one was refused with its reason. Files are in ${work}`,
  );
  await serverDemo(join(work, 'served'), join(work, 'root.json'));
}

await main();
