/**
 * A signed policy an agent would not follow. `ferry bundle create` refuses to
 * sign one (POLICY_INVALID / POLICY_TOO_LARGE, naming artifact, field and
 * reason; nothing at --out). A bundle made elsewhere, written here byte by byte
 * with the core signing primitives so that no bundler check runs, is served by
 * a real mirror to a real agent: the agent logs each problem once with its
 * code, shows it in `ferry agent status` (and --json), carries it home in
 * every heartbeat while it lasts, and still runs what the valid policies say.
 */
import { writeFileSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createBundle, encodeHead } from '../bundler/create.js';
import { resolveSpec } from '../bundler/spec.js';
import { blobEntryName } from '../core/bundle/reader.js';
import { encodeHeader, paddingFor } from '../core/bundle/tar.js';
import { serializeEnvelope, signEnvelope } from '../core/dsse.js';
import { MANIFEST_PAYLOAD_TYPE } from '../core/manifest.js';
import { MAX_POLICY_BYTES } from '../core/policy.js';
import { isoUtc } from '../core/time.js';
import {
  agentStatus,
  eventually,
  importInto,
  readTelemetry,
  startAgent,
  startMirrorAt,
  OPEN_ENROLMENT,
} from './helpers/agent-proc.js';
import { buildBundle, ferry, snapshotDir, writeSpec, type ArtifactInput } from './helpers/fixtures.js';
import { runFerry, sha256, type LogLine } from './helpers/mirror-proc.js';
import { useWorld } from './helpers/world.js';

const w = useWorld();

const SCRIPT = '#!/bin/sh\necho ran >> "$1"\n';
const policy = (doc: Record<string, unknown>) => JSON.stringify({ type: 'ferry.policy/v1', ...doc });
const tickEvery = (schedule: string, script = 'tick') => ({
  scripts: [{ script, groups: ['*'], schedule }],
});

/** Artifacts every case carries beside its policy: a script, a file and an agent binary. */
const BASE: ArtifactInput[] = [
  { name: 'tick', kind: 'script', content: SCRIPT },
  { name: 'app-conf', kind: 'file', content: 'workers = 4\n' },
  {
    name: 'ferry-agent',
    kind: 'agent',
    version: '1.4.2',
    platform: 'linux-x64',
    content: Buffer.alloc(4096, 7),
  },
];

describe('ferry bundle create refuses a policy an agent would drop', () => {
  const cases: { what: string; policy: string | Buffer; code: string; says: RegExp }[] = [
    {
      what: 'a schedule under 10 s',
      policy: policy(tickEvery('every 5s')),
      code: 'POLICY_INVALID',
      says: /policy baseline \(.*art\/baseline\): scripts\[0\]\.schedule must be .*at least 10s/,
    },
    {
      what: 'a script the spec does not carry',
      policy: policy(tickEvery('every 1m', 'rotate-logs')),
      code: 'POLICY_INVALID',
      says: /scripts\[0\]\.script names rotate-logs, which is not an artifact of this bundle/,
    },
    {
      what: 'a script entry naming a file artifact',
      policy: policy(tickEvery('once', 'app-conf')),
      code: 'POLICY_INVALID',
      says: /scripts\[0\]\.script names app-conf, which is a file artifact, not a script/,
    },
    {
      what: 'a managed file taken from the agent binary',
      policy: policy({
        files: [{ path: '/etc/acme/x', artifact: 'ferry-agent', mode: '0644', enforce: true }],
      }),
      code: 'POLICY_INVALID',
      says: /files\[0\]\.artifact names ferry-agent, which is a agent artifact/,
    },
    {
      what: 'a managed file under /proc',
      policy: policy({ files: [{ path: '/proc/sys/x', artifact: 'app-conf', mode: '0644', enforce: true }] }),
      code: 'POLICY_INVALID',
      says: /files\[0\]\.path must not be under \/proc/,
    },
    {
      what: 'a document that is not JSON',
      policy: '{"type": "ferry.policy/v1", ',
      code: 'POLICY_INVALID',
      says: /policy baseline .*: document is not strict UTF-8 JSON/,
    },
    {
      what: 'an unknown field',
      policy: policy({ scripts: [], shedule: 'once' }),
      code: 'POLICY_INVALID',
      says: /shedule is not a known field/,
    },
    {
      what: 'a document over the agents\u2019 size limit',
      policy: Buffer.alloc(MAX_POLICY_BYTES + 1, 0x20),
      code: 'POLICY_TOO_LARGE',
      says: /policy baseline .* is 1048577 bytes; agents accept at most 1048576/,
    },
  ];

  let n = 0;
  for (const c of cases) {
    it(`${c.what}: ${c.code}, naming the field, and nothing at --out`, async () => {
      const dir = join(w.dir, `create-${++n}`);
      const spec = await writeSpec(dir, {}, [
        ...BASE,
        { name: 'baseline', kind: 'policy', content: c.policy },
      ]);
      const outDir = join(dir, 'out');
      await mkdir(outDir);
      const before = await snapshotDir(dir);
      const args = ['bundle', 'create', '--spec', spec, '--key', join(w.keyDir, 'release.key')];
      const r = await ferry([...args, '--out', join(outDir, 'b.ferry')]);
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toMatch(new RegExp(`^ferry: ${c.code}: `));
      expect(r.stderr).toMatch(c.says);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      const j = await ferry([...args, '--out', join(outDir, 'b.ferry'), '--json']);
      expect(JSON.parse(j.stdout)).toMatchObject({ ok: false, code: c.code });
      expect(await snapshotDir(dir)).toEqual(before); // no bundle, no volume, no temp file
    });
  }

  it('a policy file changed after it was checked (same size) is refused before anything is signed', async () => {
    const dir = join(w.dir, 'create-race');
    const checkedDoc = policy(tickEvery('every 10s'));
    const swapped = checkedDoc.replace('every 10s', 'every 05s'); // same length, not a schedule agents take
    const specPath = await writeSpec(join(dir, 'src'), {}, [
      ...BASE,
      { name: 'baseline', kind: 'policy', content: checkedDoc },
    ]);
    const spec = await resolveSpec(
      JSON.parse(await readFile(specPath, 'utf8')),
      join(dir, 'src'),
      Date.now(),
    );
    await mkdir(join(dir, 'out'));
    let swappedYet = false;
    const attempt = createBundle(spec, join(dir, 'out', 'b.ferry'), {
      signers: [w.bundleKey],
      // called while the first artifact is copied: after the check, before the policy is read again
      onProgress: () => {
        if (swappedYet) return;
        swappedYet = true;
        writeFileSync(join(dir, 'src', 'art', 'baseline'), swapped);
      },
    });
    await expect(attempt).rejects.toMatchObject({
      code: 'IO_ERROR',
      message: /changed after it was checked/,
    });
    expect(swappedYet).toBe(true);
    expect(await snapshotDir(join(dir, 'out'))).toEqual({});
  });

  it('a valid policy naming the spec\u2019s script and file is signed', async () => {
    const dir = join(w.dir, 'create-ok');
    const doc = policy({
      ...tickEvery('every 10s'),
      files: [{ path: '/etc/acme/app.conf', artifact: 'app-conf', mode: '0644', enforce: false }],
    });
    const spec = await writeSpec(dir, {}, [...BASE, { name: 'baseline', kind: 'policy', content: doc }]);
    const out = join(dir, 'b.ferry');
    const r = await ferry([
      'bundle',
      'create',
      '--spec',
      spec,
      '--key',
      join(w.keyDir, 'release.key'),
      '--out',
      out,
    ]);
    expect(r.code, r.stderr).toBe(0);
    const v = await ferry(['bundle', 'verify', out, '--trust', w.rootPath, '--json']);
    expect(JSON.parse(v.stdout)).toMatchObject({ ok: true, verified: true });
  });
});

/** A signed bundle written directly (manifest, blobs, end marker): no bundler check runs. */
async function writeUncheckedBundle(
  out: string,
  sequence: number,
  artifacts: ArtifactInput[],
): Promise<void> {
  const now = Date.now();
  const entries = artifacts.map((a) => {
    const bytes = Buffer.from(a.content);
    return {
      bytes,
      artifact: {
        name: a.name,
        kind: a.kind,
        version: a.version ?? '1',
        ...(a.kind === 'script' && { interpreter: 'sh' }),
        sha256: sha256(bytes),
        size: bytes.length,
      },
    };
  });
  const manifest = {
    type: 'ferry.manifest/v1',
    publisher: 'acme-ops',
    sequence,
    created: isoUtc(now),
    expires: isoUtc(now + 30 * 86_400_000),
    sites: ['plant-7'],
    artifacts: entries.map((e) => e.artifact),
  };
  const env = signEnvelope(MANIFEST_PAYLOAD_TYPE, Buffer.from(JSON.stringify(manifest)), [w.bundleKey]);
  const mtime = Math.floor(now / 1000);
  const parts = [encodeHead(Buffer.from(serializeEnvelope(env)), [], mtime)];
  for (const e of entries)
    parts.push(
      encodeHeader(blobEntryName(e.artifact.sha256), e.bytes.length, mtime),
      e.bytes,
      Buffer.alloc(paddingFor(e.bytes.length)),
    );
  parts.push(Buffer.alloc(1024));
  await writeFile(out, Buffer.concat(parts));
}

const event =
  (name: string, fields: Record<string, unknown> = {}) =>
  (l: LogLine) =>
    l.event === name && Object.entries(fields).every(([k, v]) => l[k] === v);

interface DriftEntry {
  policy?: string;
  code?: string;
  message?: string;
  sha256?: string;
}

describe('an agent meeting a bad signed policy (bundle made by an older bundler)', () => {
  it('logs it once with a code, shows it in agent status, reports it home, runs the rest, and clears it', async () => {
    const dir = join(w.dir, 'agent');
    await mkdir(dir, { recursive: true });
    const data = join(dir, 'mirror');
    const state = join(dir, 'state');
    const marker = join(dir, 'marker');
    const good = policy({ scripts: [{ script: 'tick', groups: ['*'], schedule: 'once', args: [marker] }] });
    const fast = policy({
      scripts: [{ script: 'tick', groups: ['*'], schedule: 'every 5s', args: [marker] }],
    });
    const dangling = policy({
      files: [{ path: join(dir, 'app.conf'), artifact: 'no-such-conf', mode: '0644', enforce: true }],
    });
    const file = join(dir, 'old-bundler.ferry');
    await writeUncheckedBundle(file, 1, [
      { name: 'tick', kind: 'script', content: SCRIPT },
      { name: 'good', kind: 'policy', content: good },
      { name: 'fast', kind: 'policy', content: fast },
      { name: 'dangling', kind: 'policy', content: dangling },
    ]);
    // the mirror takes it: its signature is good, and policies are the agents' business
    await importInto(data, file, w.rootPath);
    const mirror = await startMirrorAt(data, 0, OPEN_ENROLMENT);
    const agent = startAgent([
      ...['--state', state, '--mirror', mirror.url, '--trust', w.rootPath, '--site', 'plant-7'],
      ...['--group', 'web', '--interval', '1'],
    ]);

    const fastLog = await agent.waitForLog(event('policy.invalid', { policy: 'fast' }));
    expect(fastLog).toMatchObject({
      level: 'warn',
      code: 'POLICY_INVALID',
      sha256: sha256(Buffer.from(fast)),
    });
    expect(String(fastLog.reason)).toMatch(/^policy fast: scripts\[0\]\.schedule must be .*at least 10s/);
    const danglingLog = await agent.waitForLog(event('policy.invalid', { policy: 'dangling' }));
    expect(danglingLog).toMatchObject({ code: 'POLICY_INVALID' });
    expect(String(danglingLog.reason)).toMatch(/files\[0\]\.artifact names no-such-conf/);
    await agent.waitForLog(event('script.ran', { script: 'tick', exitCode: 0 })); // the valid policy still runs
    const agentId = String((await agent.waitForLog(event('agent.enrolled'))).agentId);

    // every heartbeat while the problem lasts carries it, as drift the mirror (and server) accept
    const hbs = await eventually('three heartbeats with the problems', async () => {
      const h = (await readTelemetry(data)).filter(
        (x) => x.agentId === agentId && x.payload.manifestSequence === 1,
      );
      return h.length >= 3 ? h : undefined;
    });
    for (const h of hbs.slice(1)) {
      const drift = h.payload.drift as DriftEntry[];
      expect(drift).toEqual(
        expect.arrayContaining([
          expect.objectContaining({
            policy: 'fast',
            code: 'POLICY_INVALID',
            sha256: sha256(Buffer.from(fast)),
          }),
          expect.objectContaining({ policy: 'dangling', code: 'POLICY_INVALID' }),
        ]),
      );
      expect(drift.some((d) => d.policy === 'good')).toBe(false);
    }
    expect(agent.logs.filter(event('policy.invalid', { policy: 'fast' }))).toHaveLength(1); // once, not per cycle

    const s = (await agentStatus(state)) as Awaited<ReturnType<typeof agentStatus>> & {
      policyProblems: DriftEntry[];
    };
    expect(s.policyProblems).toEqual([
      expect.objectContaining({ policy: 'fast', code: 'POLICY_INVALID' }),
      expect.objectContaining({ policy: 'dangling', code: 'POLICY_INVALID' }),
    ]);
    const status = await runFerry(['agent', 'status', '--state', state]);
    expect(status.stdout).toMatch(/^policy problem: POLICY_INVALID: policy fast: scripts\[0\]\.schedule /m);
    expect(status.stdout).toMatch(/^policy problem: POLICY_INVALID: policy dangling: files\[0\]\.artifact /m);
    expect(await readFile(marker, 'utf8')).toBe('ran\n');

    // a fixed bundle (the bundler's own, checked) clears them everywhere
    const fixed = join(dir, 'fixed.ferry');
    await buildBundle(w, fixed, {
      spec: { sequence: 2 },
      artifacts: [
        { name: 'tick', kind: 'script', content: SCRIPT },
        { name: 'good', kind: 'policy', content: good },
      ],
    });
    await importInto(data, fixed, w.rootPath);
    await agent.waitForLog(event('policy.problems_cleared', { cleared: 2 }), 30_000);
    expect((await agentStatus(state)) as unknown).toMatchObject({ policyProblems: [] });
    const later = await eventually('a heartbeat under sequence 2', async () => {
      const h = (await readTelemetry(data)).filter(
        (x) => x.agentId === agentId && x.payload.manifestSequence === 2,
      );
      return h.length >= 1 ? h : undefined;
    });
    expect((later.at(-1)!.payload.drift as DriftEntry[]).filter((d) => d.policy)).toEqual([]);
    await agent.stop();

    // with no agent running, `agent poll --now` runs the cycle itself and says what it met
    const again = join(dir, 'old-bundler-3.ferry');
    await writeUncheckedBundle(again, 3, [
      { name: 'tick', kind: 'script', content: SCRIPT },
      { name: 'fast', kind: 'policy', content: fast },
    ]);
    await importInto(data, again, w.rootPath);
    const poll = await runFerry(['agent', 'poll', '--now', '--state', state, '--json']);
    expect(poll.code, poll.stderr).toBe(0);
    const polled = JSON.parse(poll.stdout) as { sequence: number; policyProblems: DriftEntry[] };
    expect(polled.sequence).toBe(3);
    expect(polled.policyProblems).toEqual([
      expect.objectContaining({ policy: 'fast', code: 'POLICY_INVALID' }),
    ]);
    const human = await runFerry(['agent', 'poll', '--now', '--state', state]);
    expect(human.stderr).toMatch(/^ferry: POLICY_INVALID: policy fast: scripts\[0\]\.schedule /m);
    await mirror.stop();
  }, 90_000);
});
