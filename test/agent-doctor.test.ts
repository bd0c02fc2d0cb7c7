/**
 * `ferry agent doctor` against a real state directory: one prepared by a real
 * agent cycle against a real mirror (enrolled, manifest applied, a managed file
 * placed, blobs cached), beside a node root holding the install layout and the
 * systemd unit. Each case copies it, breaks exactly one condition and sees that
 * check, and only that one, fail with the right evidence; each fix runs as a
 * dry run (every byte of the state directory, install root and managed file
 * hashed before and after) and for real (condition gone, checks green again).
 */
import { chmod, cp, mkdir, readFile, readdir, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serializeEnvelope } from '../core/dsse.js';
import { isoUtc } from '../core/time.js';
import { acquireLock } from '../platform/lock.js';
import {
  importInto,
  OPEN_ENROLMENT,
  startAgent,
  startMirrorAt,
  type MirrorAt,
} from './helpers/agent-proc.js';
import { buildBundle, makeKey, makeRootEnvelope, REPO, snapshotDir } from './helpers/fixtures.js';
import { runFerry, sha256 } from './helpers/mirror-proc.js';
import { useWorld } from './helpers/world.js';

interface Check {
  id: string;
  status: 'ok' | 'warn' | 'fail';
  evidence: string;
  fix: string;
  fixable?: string;
}
interface Report {
  ok: boolean;
  checks: Check[];
  counts: { ok: number; warn: number; fail: number };
}
interface FixReport {
  ok: boolean;
  dryRun: boolean;
  before: Report;
  planned: { pattern: string; check: string; what: string }[];
  applied?: { pattern: string; ok: boolean }[];
  after?: Report;
  didNotTake?: Check[];
  stillWrong?: Check[];
}

const w = useWorld();
const AGENT_BYTES = Buffer.alloc(70_000, 7);
const CONF = 'listen = 8080\n';
let base: string;
/** The prepared state directory and node root every case copies. */
let goldState: string;
let goldNode: string;
/** The managed file the signed policy owns (one path for every copy). */
let managed: string;
let mirror: MirrorAt;
let n = 0;

async function doctor(
  state: string,
  node: string,
  extra: string[] = [],
): Promise<{ code: number | null; report: Report; stdout: string }> {
  const r = await runFerry(['agent', 'doctor', '--state', state, '--root', node, '--json', ...extra]);
  return { code: r.code, report: JSON.parse(r.stdout) as Report, stdout: r.stdout + r.stderr };
}

async function fix(state: string, node: string, dry: boolean) {
  const r = await runFerry([
    'agent',
    'doctor',
    '--state',
    state,
    '--root',
    node,
    '--fix',
    ...(dry ? ['--dry-run'] : []),
    '--json',
  ]);
  return { code: r.code, out: JSON.parse(r.stdout) as FixReport & { code?: string; message?: string } };
}

const check = (r: Report, id: string) => r.checks.find((c) => c.id === id)!;
const notOk = (r: Report) => r.checks.filter((c) => c.status !== 'ok').map((c) => `${c.id}:${c.status}`);

/** A fresh copy of the prepared state directory and node root. */
async function copy(): Promise<{ state: string; node: string; install: string }> {
  const dir = join(base, `case-${++n}`);
  await cp(goldState, join(dir, 'state'), { recursive: true, verbatimSymlinks: true });
  await cp(goldNode, join(dir, 'node'), { recursive: true, verbatimSymlinks: true });
  return { state: join(dir, 'state'), node: join(dir, 'node'), install: join(dir, 'node', 'opt/ferry') };
}

/** Everything a fix may touch, hashed: the state directory, the node root and the managed file. */
async function everything(state: string, node: string) {
  return {
    state: await snapshotDir(state),
    node: await snapshotDir(node),
    managed: sha256(await readFile(managed)) + (await stat(managed)).mode.toString(8),
  };
}

async function editState(state: string, f: (s: Record<string, unknown>) => void) {
  const p = join(state, 'state.json');
  const s = JSON.parse(await readFile(p, 'utf8')) as Record<string, unknown>;
  f(s);
  await writeFile(p, JSON.stringify(s));
}

beforeAll(async () => {
  base = join(w.dir, 'doctor');
  managed = join(w.dir, 'etc-acme', 'app.conf');
  const policy = {
    type: 'ferry.policy/v1',
    scripts: [{ script: 'hello', groups: ['*'], schedule: 'once' }],
    files: [{ path: managed, artifact: 'app-conf', mode: '0640', enforce: true }],
  };
  const bundle = join(w.dir, 'b1.ferry');
  await buildBundle(w, bundle, {
    artifacts: [
      { name: 'ferry-agent', kind: 'agent', version: '1.4.2', platform: 'linux-x64', content: AGENT_BYTES },
      { name: 'hello', kind: 'script', content: '#!/bin/sh\necho hello\n' },
      { name: 'app-conf', kind: 'file', content: CONF },
      { name: 'baseline', kind: 'policy', content: JSON.stringify(policy) },
    ],
  });
  const data = join(w.dir, 'mirror');
  await importInto(data, bundle, w.rootPath);
  mirror = await startMirrorAt(data, 0, OPEN_ENROLMENT);
  goldState = join(base, 'gold-state');
  const poll = await runFerry([
    'agent',
    'poll',
    '--now',
    '--state',
    goldState,
    '--mirror',
    mirror.url,
    '--trust',
    w.rootPath,
    '--site',
    'plant-7',
    '--json',
  ]);
  expect(poll.code, poll.stdout + poll.stderr).toBe(0);
  // The node root: the install layout (/opt/ferry) and the unit, enabled.
  goldNode = join(base, 'gold-node');
  const install = join(goldNode, 'opt/ferry');
  for (const v of ['1.4.1', '1.4.2']) {
    await mkdir(join(install, 'versions', v), { recursive: true });
    await writeFile(join(install, 'versions', v, 'ferry-agent'), v === '1.4.2' ? AGENT_BYTES : 'old', {
      mode: 0o755,
    });
  }
  await symlink('versions/1.4.2', join(install, 'current'));
  const units = join(goldNode, 'etc/systemd/system');
  await mkdir(join(units, 'multi-user.target.wants'), { recursive: true });
  await cp(join(REPO, 'systemd/ferry-agent.service'), join(units, 'ferry-agent.service'));
  await symlink('../ferry-agent.service', join(units, 'multi-user.target.wants/ferry-agent.service'));
}, 120_000);

afterAll(async () => {
  await mirror?.stop();
});

describe('ferry agent doctor: the checks', () => {
  it('a healthy node: every check ok, one line each and a summary, exit 0', async () => {
    const r = await doctor(goldState, goldNode);
    expect(notOk(r.report)).toEqual([]);
    expect(r.code).toBe(0);
    expect(r.report.checks.length).toBeGreaterThanOrEqual(12);
    expect(check(r.report, 'mirrors').evidence).toContain('manifest sequence 1 verifies');
    expect(check(r.report, 'binary').evidence).toContain(sha256(AGENT_BYTES));
    const text = await runFerry(['agent', 'doctor', '--state', goldState, '--root', goldNode]);
    const lines = text.stdout.trim().split('\n');
    expect(lines.filter((l) => l.startsWith('[✓]')).length).toBe(r.report.checks.length);
    expect(lines.at(-1)).toMatch(/^• No issues found! \(\d+ checks passed\)$/);
  });

  it('ferry-agent doctor, the single-file agent, finds the same', async () => {
    const bin = join(base, 'bin', 'ferry-agent');
    const built = await runNode([join(REPO, 'scripts/build-agent.mjs'), '--out', bin]);
    expect(built.code, built.out).toBe(0);
    const r = await runNode([bin, 'doctor', '--state', goldState, '--root', goldNode, '--json']);
    expect(r.code, r.out).toBe(0);
    const mine = JSON.parse(r.out) as Report;
    const theirs = (await doctor(goldState, goldNode)).report;
    expect(mine.checks.map((c) => `${c.id}:${c.status}`)).toEqual(
      theirs.checks.map((c) => `${c.id}:${c.status}`),
    );
  });

  it('doctor itself changes nothing, whatever it finds', async () => {
    const c = await copy();
    await chmod(join(c.state, 'keys/agent.key'), 0o644);
    const before = await everything(c.state, c.node);
    expect((await doctor(c.state, c.node, ['--deep'])).code).toBe(1);
    expect(await everything(c.state, c.node)).toEqual(before);
  });

  it('mirrors: one that serves a manifest that does not verify fails, naming the refusal', async () => {
    // a mirror in between that serves the real root chain and the real manifest with its payload changed
    const root = Buffer.from(await (await fetch(`${mirror.url}/v1/root`)).arrayBuffer());
    const real = JSON.parse(await (await fetch(`${mirror.url}/v1/manifest`)).text()) as { payload: string };
    const payload = JSON.parse(Buffer.from(real.payload, 'base64').toString('utf8')) as { sequence: number };
    const forged = {
      ...real,
      payload: Buffer.from(JSON.stringify({ ...payload, sequence: 99 })).toString('base64'),
    };
    const liar = createServer((req, res) => {
      res.setHeader('Content-Type', 'application/json');
      res.end(req.url === '/v1/root' ? root : JSON.stringify(forged));
    });
    liar.listen(0, '127.0.0.1');
    await once(liar, 'listening');
    try {
      const c = await copy();
      const url = `http://127.0.0.1:${(liar.address() as AddressInfo).port}`;
      await editState(c.state, (s) => (s.mirrors = [url, mirror.url]));
      const r = await doctor(c.state, c.node);
      expect(r.code).toBe(1);
      expect(notOk(r.report)).toEqual(['mirrors:fail']);
      expect(check(r.report, 'mirrors').evidence).toMatch(
        new RegExp(`^${url}: refused: SIGNATURE_THRESHOLD: .*; ${mirror.url}: manifest sequence 1 verifies`),
      );
      expect(check(r.report, 'manifest').evidence).not.toContain('99'); // nothing it served is believed
    } finally {
      liar.close();
    }
  });

  it('state-dir: a state directory that is not one fails, and so does everything that needs it', async () => {
    const c = await copy();
    const r = await doctor(join(c.state, 'state.json'), c.node);
    expect(r.code).toBe(1);
    expect(check(r.report, 'state-dir')).toMatchObject({ status: 'fail' });
    expect(check(r.report, 'state-dir').evidence).toMatch(/state\.json is not a directory$/);
    expect(check(r.report, 'state').status).toBe('fail');
  });

  it('every mirror unreachable: the mirrors check says so and names it; the rest still run', async () => {
    const c = await copy();
    await editState(c.state, (s) => (s.mirrors = ['http://127.0.0.1:9']));
    const r = await doctor(c.state, c.node);
    expect(r.code).toBe(1);
    expect(notOk(r.report)).toEqual(['mirrors:fail']);
    expect(check(r.report, 'mirrors').evidence).toMatch(/^http:\/\/127\.0\.0\.1:9: unreachable: /);
  });

  const cases: {
    name: string;
    id: string;
    status: 'warn' | 'fail';
    evidence: RegExp;
    args?: (c: { state: string; node: string }) => string[];
    breakIt: (c: { state: string; node: string; install: string }) => Promise<unknown>;
  }[] = [
    {
      name: 'config file that is not JSON',
      id: 'config',
      status: 'fail',
      evidence: /--config .*agent\.json: /,
      breakIt: async (c) => {
        await mkdir(join(c.node, 'etc/ferry'), { recursive: true });
        await writeFile(join(c.node, 'etc/ferry/agent.json'), '{"state": ');
      },
    },
    {
      name: 'state directory open to others',
      id: 'state-dir',
      status: 'warn',
      evidence: /mode 0755, [\d.]+ MiB free: open to group or others/,
      breakIt: (c) => chmod(c.state, 0o755),
    },
    {
      name: 'state written by an older agent',
      id: 'state',
      status: 'warn',
      evidence: /written by an older agent/,
      breakIt: (c) =>
        editState(c.state, (s) => {
          const t = s.trust as { mark: { sequence: number; payloadDigest: string } };
          s.trust = { publishers: { 'acme-ops': t.mark }, highestTime: 0 };
        }),
    },
    {
      name: 'key readable by others',
      id: 'key',
      status: 'fail',
      evidence: /agent\.key has mode 0644/,
      breakIt: (c) => chmod(join(c.state, 'keys/agent.key'), 0o644),
    },
    {
      name: 'key that is not the enrolled one',
      id: 'key',
      status: 'fail',
      evidence: /agent\.key is agent [0-9a-f]{32}, but the state is enrolled as [0-9a-f]{32}/,
      breakIt: async (c) => {
        await rm(join(c.state, 'keys'), { recursive: true });
        await makeKey(join(c.state, 'keys'), 'agent');
      },
    },
    {
      name: 'pinned root that expires within 30 days',
      id: 'root',
      status: 'warn',
      evidence: /root v1 \(chain of 1\) expires .*: in 10 day\(s\)/,
      breakIt: (c) =>
        editState(c.state, (s) => {
          const env = makeRootEnvelope({
            rootKeys: [w.rootKey],
            bundleKeys: [w.bundleKey],
            expires: isoUtc(Date.now() + 9.5 * 86_400_000),
          });
          s.roots = [Buffer.from(serializeEnvelope(env)).toString('base64')];
        }),
    },
    {
      name: 'clock behind the latest signed time',
      id: 'clock',
      status: 'fail',
      evidence: /the clock is \d+ min behind what was signed/,
      breakIt: (c) =>
        editState(c.state, (s) => {
          (s.trust as { signedTime: number }).signedTime = Date.now() + 86_400_000;
        }),
    },
    {
      name: 'manifest not confirmed with a mirror for two days',
      id: 'manifest',
      status: 'warn',
      evidence: /not confirmed with a mirror for longer than 60 min/,
      breakIt: (c) => editState(c.state, (s) => (s.lastContactAt = Date.now() - 2 * 86_400_000)),
    },
    {
      name: 'installed binary that is not what the manifest names',
      id: 'binary',
      status: 'fail',
      evidence:
        /versions\/1\.4\.2\/ferry-agent sha256 [0-9a-f]{64}, but the manifest names [0-9a-f]{64} for 1\.4\.2/,
      breakIt: (c) => writeFile(join(c.install, 'versions/1.4.2/ferry-agent'), 'tampered'),
    },
    {
      name: 'update whose health-check deadline passed',
      id: 'update',
      status: 'fail',
      evidence: /phase health-checking \(1\.4\.1 → 1\.4\.2\): its deadline .* passed/,
      breakIt: (c) => writeUpdate(c.state, 'health-checking', { deadline: Date.now() - 60_000 }),
    },
    {
      name: 'outbox over its cap',
      id: 'outbox',
      status: 'fail',
      evidence: /10001 entries, .*: over its cap/,
      breakIt: (c) => fillOutbox(c.state, 10_001),
    },
    {
      name: 'managed file changed on disk',
      id: 'files',
      status: 'fail',
      evidence: /etc-acme\/app\.conf: drift/,
      breakIt: () => writeFile(managed, 'listen = 0.0.0.0:22\n'),
    },
    {
      name: 'cached blob whose bytes changed',
      id: 'cache',
      status: 'fail',
      evidence: /blob\(s\) re-hashed; corrupt: .*cache\/blobs\/sha256\/[0-9a-f]{64}/,
      breakIt: (c) => corruptBlob(c.state),
    },
    {
      name: 'temp file a crash left',
      id: 'temp',
      status: 'warn',
      evidence: /1 left by an interrupted write: .*\.state\.json\.abc123\.tmp/,
      breakIt: (c) => oldTemp(c.state),
    },
    {
      name: 'unit installed but not enabled',
      id: 'unit',
      status: 'fail',
      evidence: /multi-user\.target\.wants\/ferry-agent\.service is missing: not enabled/,
      breakIt: (c) => rm(join(c.node, 'etc/systemd/system/multi-user.target.wants/ferry-agent.service')),
    },
    {
      name: 'unit missing',
      id: 'unit',
      status: 'fail',
      evidence: /etc\/systemd\/system\/ferry-agent\.service is missing/,
      breakIt: (c) => rm(join(c.node, 'etc/systemd/system'), { recursive: true }),
    },
    {
      name: 'interpreter the policy needs, not on the allowlist',
      id: 'interpreters',
      status: 'fail',
      evidence: /the policy needs sh, not on this node's allowlist \(bash\)/,
      args: () => ['--allow-interpreter', 'bash'],
      breakIt: () => Promise.resolve(),
    },
  ];

  for (const k of cases) {
    it(`${k.id}: ${k.name}`, async () => {
      const c = await copy();
      try {
        await k.breakIt(c);
        const r = await doctor(c.state, c.node, k.args?.(c) ?? []);
        const got = check(r.report, k.id);
        expect(got.status, got.evidence).toBe(k.status);
        expect(got.evidence).toMatch(k.evidence);
        expect(got.fix).not.toBe('');
        // exactly this condition: every other check is still ok
        expect(notOk(r.report).filter((x) => !x.startsWith(`${k.id}:`))).toEqual([]);
        expect(r.code).toBe(k.status === 'fail' ? 1 : 0);
      } finally {
        await writeFile(managed, CONF);
        await chmod(managed, 0o640);
      }
    });
  }
});

/** `node ARGS…` to the end: exit code and stdout (stderr appended when it fails). */
function runNode(args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, out: code === 0 ? out : out + err }));
  });
}

async function writeUpdate(state: string, phase: string, over: Record<string, unknown> = {}) {
  const machine = {
    phase,
    version: '1.4.2',
    previous: '1.4.1',
    payloadDigest: 'a'.repeat(64),
    attempts: 1,
    deadline: null,
    soakUntil: null,
    highestCommitted: '1.4.1',
    highestBefore: '1.4.1',
    limits: { maxAttempts: 3, selfTestMs: 60_000, healthMs: 120_000, soakMs: 600_000 },
    ...over,
  };
  await writeFile(
    join(state, 'update.json'),
    JSON.stringify({
      format: 'ferry.agent-update/v1',
      machine,
      badVersions: [],
      unreported: [],
      lastRefusal: null,
    }),
    { mode: 0o600 },
  );
}

async function fillOutbox(state: string, count: number) {
  const dir = join(state, 'outbox');
  await mkdir(dir, { recursive: true });
  const have = (await readdir(dir)).filter((x) => /^\d{16}\./.test(x)).length;
  for (let i = 0; i < count - have; i++)
    await writeFile(join(dir, `${String(1000 + i).padStart(16, '0')}.heartbeat`), '{}');
}

async function corruptBlob(state: string): Promise<string> {
  const dir = join(state, 'cache/blobs/sha256');
  const name = (await readdir(dir)).sort()[0]!;
  await writeFile(join(dir, name), 'not these bytes');
  return join(dir, name);
}

async function oldTemp(state: string): Promise<string> {
  const p = join(state, '.state.json.abc123.tmp');
  await writeFile(p, '{"torn":');
  const old = new Date(Date.now() - 3_600_000);
  await utimes(p, old, old);
  return p;
}

describe('ferry agent doctor --fix', () => {
  const fixes: {
    pattern: string;
    id: string;
    breakIt: (c: { state: string; node: string; install: string }) => Promise<unknown>;
    /** The condition is gone (beyond the check being green). */
    gone: (c: { state: string; node: string; install: string }) => Promise<void>;
  }[] = [
    {
      pattern: 'key-mode',
      id: 'key',
      breakIt: (c) => chmod(join(c.state, 'keys/agent.key'), 0o644),
      gone: async (c) => expect((await stat(join(c.state, 'keys/agent.key'))).mode & 0o777).toBe(0o600),
    },
    {
      pattern: 'state-migrate',
      id: 'state',
      breakIt: (c) =>
        editState(c.state, (s) => {
          const t = s.trust as { mark: { sequence: number; payloadDigest: string } };
          s.trust = { publishers: { 'acme-ops': t.mark }, highestTime: 0 };
        }),
      gone: async (c) => {
        const s = JSON.parse(await readFile(join(c.state, 'state.json'), 'utf8')) as {
          trust: { mark: { sequence: number } };
        };
        expect(s.trust.mark.sequence).toBe(1);
      },
    },
    {
      pattern: 'update-stale',
      id: 'update',
      // staged, and no agent left to finish it: the machine's `started` rule abandons it
      breakIt: async (c) => {
        await mkdir(join(c.install, 'versions/1.4.3'));
        await writeFile(join(c.install, 'versions/1.4.3/ferry-agent'), 'staged');
        await writeUpdate(c.state, 'staged', { version: '1.4.3', previous: '1.4.2' });
      },
      gone: async (c) => {
        const u = JSON.parse(await readFile(join(c.state, 'update.json'), 'utf8')) as {
          machine: { phase: string };
          unreported: { outcome: string }[];
        };
        expect(u.machine.phase).toBe('idle');
        expect(u.unreported.map((x) => x.outcome)).toEqual(['interrupted']);
        expect(await readdir(join(c.install, 'versions'))).toEqual(['1.4.1', '1.4.2']);
      },
    },
    {
      pattern: 'temp-files',
      id: 'temp',
      breakIt: (c) => oldTemp(c.state),
      gone: async (c) => expect(await readdir(c.state)).not.toContain('.state.json.abc123.tmp'),
    },
    {
      pattern: 'file-drift',
      id: 'files',
      breakIt: async () => {
        await writeFile(managed, 'listen = 0.0.0.0:22\n');
        await chmod(managed, 0o666);
      },
      gone: async () => {
        expect(await readFile(managed, 'utf8')).toBe(CONF);
        expect((await stat(managed)).mode & 0o777).toBe(0o640);
      },
    },
    {
      pattern: 'cache-corrupt',
      id: 'cache',
      breakIt: (c) => corruptBlob(c.state),
      gone: async (c) => {
        const dir = join(c.state, 'cache/blobs/sha256');
        for (const name of await readdir(dir)) expect(sha256(await readFile(join(dir, name)))).toBe(name);
      },
    },
    {
      pattern: 'outbox-compact',
      id: 'outbox',
      breakIt: (c) => fillOutbox(c.state, 10_003),
      gone: async (c) =>
        expect((await readdir(join(c.state, 'outbox'))).filter((x) => /^\d{16}\./.test(x)).length).toBe(
          10_000,
        ),
    },
  ];

  for (const f of fixes) {
    it(`${f.pattern}: the dry run lists the change and changes nothing; the real run mends ${f.id}`, async () => {
      const c = await copy();
      try {
        await f.breakIt(c);
        const before = await everything(c.state, c.node);
        const dry = await fix(c.state, c.node, true);
        expect(dry.out.dryRun).toBe(true);
        expect(dry.out.planned.map((p) => p.pattern)).toEqual([f.pattern]);
        expect(await everything(c.state, c.node)).toEqual(before);

        const real = await fix(c.state, c.node, false);
        expect(real.out.applied).toEqual([expect.objectContaining({ pattern: f.pattern, ok: true })]);
        expect(real.out.planned).toEqual(dry.out.planned);
        expect(check(real.out.after!, f.id).status).not.toBe('fail');
        expect(real.out.after!.counts.fail).toBe(0);
        expect(real.out.didNotTake!.filter((x) => x.status === 'fail')).toEqual([]);
        expect(real.code).toBe(0);
        await f.gone(c);
        // and the doctor agrees on its own
        expect(check((await doctor(c.state, c.node)).report, f.id).status).not.toBe('fail');
      } finally {
        await writeFile(managed, CONF);
        await chmod(managed, 0o640);
      }
    });
  }

  it('a fix that did not take is said plainly: drift whose cached blob is corrupt too', async () => {
    const c = await copy();
    try {
      await writeFile(managed, 'listen = 0.0.0.0:22\n');
      const blob = join(c.state, 'cache/blobs/sha256', sha256(Buffer.from(CONF)));
      await writeFile(blob, 'not these bytes');
      const real = await fix(c.state, c.node, false);
      expect(real.code).toBe(1);
      expect(real.out.applied).toEqual([
        expect.objectContaining({ pattern: 'file-drift', ok: false }),
        expect.objectContaining({ pattern: 'cache-corrupt', ok: true }),
      ]);
      expect(real.out.didNotTake!.map((x) => `${x.id}:${x.status}`)).toEqual(['files:fail']);
      expect(await readFile(managed, 'utf8')).toBe('listen = 0.0.0.0:22\n'); // never the wrong bytes
      await writeFile(blob, 'not these bytes');
      const text = await runFerry(['agent', 'doctor', '--state', c.state, '--root', c.node, '--fix']);
      expect(text.stdout).toMatch(/FAILED \[file-drift\] restore .*FILE_BLOB_MISMATCH/);
      expect(text.stdout).toMatch(/^did not take: files: .*: drift/m);
    } finally {
      await writeFile(managed, CONF);
      await chmod(managed, 0o640);
    }
  });

  it('refuses while something holds the agent lock, and changes nothing', async () => {
    const c = await copy();
    await chmod(join(c.state, 'keys/agent.key'), 0o644);
    const release = await acquireLock(join(c.state, 'agent.lock'), { timeoutMs: 0 });
    try {
      const before = await everything(c.state, c.node);
      const r = await fix(c.state, c.node, false);
      expect(r.code).toBe(1);
      expect(r.out).toMatchObject({ ok: false, code: 'AGENT_RUNNING' });
      expect(r.out.message).toContain(`pid ${process.pid}`);
      expect(await everything(c.state, c.node)).toEqual(before);
    } finally {
      await release();
    }
    // once it is free, the same fix runs
    expect((await fix(c.state, c.node, false)).code).toBe(0);
  });

  it('refuses while a real agent runs on the state directory', async () => {
    const c = await copy();
    const temp = await oldTemp(c.state);
    const agent = startAgent(['--state', c.state, '--mirror', mirror.url, '--interval', '3600']);
    try {
      await agent.waitForLog((l) => l.event === 'agent.cycle', 60_000);
      const r = await fix(c.state, c.node, false);
      expect(r.code).toBe(1);
      expect(r.out).toMatchObject({ ok: false, code: 'AGENT_RUNNING' });
      expect(r.out.message).toContain(`pid ${agent.pid}`);
      await stat(temp); // still there
    } finally {
      await agent.stop();
    }
    const after = await fix(c.state, c.node, false);
    expect(after.code).toBe(0);
    await expect(stat(temp)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
