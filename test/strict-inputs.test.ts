/**
 * Bounded, unambiguous signed documents, attacked through real processes: a
 * manifest that is validly signed by the bundle key yet carries a deeply nested
 * unknown field inside a 4 MiB envelope, one with a wide unknown field, and an
 * envelope with `payload` twice (a decoy first). `ferry bundle verify` refuses
 * each, `ferry mirror import` refuses each and leaves the store byte for byte
 * as it was, and a real `ferry agent run` polling a mirror that serves them
 * refuses each, keeps its state and cache, and stays within its memory budget.
 */
import { readFile, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { serializeEnvelope, signEnvelope } from '../core/dsse.js';
import { MANIFEST_PAYLOAD_TYPE, MAX_MANIFEST_BYTES, type Manifest } from '../core/manifest.js';
import { importInto, startAgent, startMirrorAt, OPEN_ENROLMENT } from './helpers/agent-proc.js';
import { buildBundle, snapshotDir } from './helpers/fixtures.js';
import { runFerry } from './helpers/mirror-proc.js';
import { entry, joinArchive, splitArchive } from './helpers/tarcraft.js';
import { useWorld } from './helpers/world.js';

const w = useWorld();

/** Peak resident set (VmHWM) of a live process, in bytes. */
async function peakRss(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const m = /^VmHWM:\s+(\d+) kB$/m.exec(status);
  if (!m) throw new Error(`no VmHWM in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

/** The agent's peak RSS may not pass this, whatever a mirror serves. */
const RSS_BUDGET = 120 * 1024 * 1024;

interface Hostile {
  what: string;
  envelope: Buffer;
  code: string;
  why: RegExp;
}

/**
 * Manifests the bundle key really signed (sequence 2, the same artifacts as
 * the genuine sequence 1), each hostile in one way.
 */
function hostileManifests(m: Manifest): Hostile[] {
  const sign = (payload: string) =>
    Buffer.from(serializeEnvelope(signEnvelope(MANIFEST_PAYLOAD_TYPE, Buffer.from(payload), [w.bundleKey])));
  const genuine = JSON.stringify({ ...m, sequence: 2 });
  // fill the envelope to just under the cap: base64 grows the payload by 4/3, plus the envelope's own JSON
  const room = Math.floor(((MAX_MANIFEST_BYTES - 4096) * 3) / 4) - genuine.length;
  const withField = (field: string) => `${genuine.slice(0, -1)},"x":${field}}`;
  const depth = Math.floor(room / 2) - 8;
  const deep = sign(withField('['.repeat(depth) + ']'.repeat(depth)));
  const wide = sign(withField(JSON.stringify('A'.repeat(room - 16))));
  const decoy = JSON.parse(
    sign(JSON.stringify({ ...m, sequence: 2, pins: { 'group:web': '0.0.1' } })).toString(),
  ) as {
    payload: string;
  };
  const real = sign(genuine).toString();
  const dup = Buffer.from(
    real.replace('"payload": ', `"payload": ${JSON.stringify(decoy.payload)},\n  "payload": `),
  );
  for (const e of [deep, wide]) expect(e.length).toBeGreaterThan(MAX_MANIFEST_BYTES - 8192);
  for (const e of [deep, wide, dup]) expect(e.length).toBeLessThanOrEqual(MAX_MANIFEST_BYTES);
  expect(dup.toString().match(/"payload"/g)).toHaveLength(2);
  return [
    {
      what: 'a deeply nested unknown field',
      envelope: deep,
      code: 'MANIFEST_INVALID',
      why: /nesting deeper than/,
    },
    {
      what: 'a wide unknown field',
      envelope: wide,
      code: 'MANIFEST_INVALID',
      why: /"x" is not a known field/,
    },
    {
      what: 'payload twice, a decoy first',
      envelope: dup,
      code: 'ENVELOPE_INVALID',
      why: /duplicate key "payload"/,
    },
  ];
}

/** The genuine bundle with its manifest entry swapped for `envelope` (same blobs). */
function withManifest(genuine: Buffer, envelope: Buffer): Buffer {
  const { entries } = splitArchive(genuine);
  expect(entries[0]!.name).toBe('manifest.dsse.json');
  return joinArchive([entry({ name: 'manifest.dsse.json' }, envelope), ...entries.slice(1)]);
}

/** A mirror under an attacker's control: the real root chain, and whatever manifest the test sets. */
async function hostileMirror(rootPath: string) {
  const root = JSON.parse(await readFile(rootPath, 'utf8')) as unknown;
  let manifest: Buffer = Buffer.alloc(0);
  let roots: string = JSON.stringify([root]);
  const server: Server = createServer((req, res) => {
    req.resume();
    if (req.method === 'GET' && req.url === '/v1/root') {
      res.writeHead(200, { 'Content-Type': 'application/json' }).end(roots);
    } else if (req.method === 'GET' && req.url === '/v1/manifest') {
      res.writeHead(200, { 'Content-Type': 'application/json' }).end(manifest);
    } else {
      res.writeHead(404, { 'Content-Type': 'application/json' }).end('{"code":"NOT_FOUND","message":"no"}');
    }
  });
  server.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    serve: (bytes: Buffer) => {
      manifest = bytes;
    },
    serveRoots: (text: string) => {
      roots = text;
    },
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

describe('validly signed but hostile manifests', () => {
  let genuineFile: string;
  let genuine: Buffer;
  let cases: Hostile[];
  beforeAll(async () => {
    genuineFile = join(w.dir, 'genuine.ferry');
    const b = await buildBundle(w, genuineFile);
    genuine = await readFile(genuineFile);
    cases = hostileManifests(b.manifest);
  });

  it('are refused by ferry bundle verify with a stable code naming the reason', async () => {
    for (const c of cases) {
      const file = join(w.dir, 'verify.ferry');
      await writeFile(file, withManifest(genuine, c.envelope));
      const r = await runFerry(['bundle', 'verify', file, '--trust', w.rootPath, '--json']);
      expect(r.code, `${c.what}: ${r.stderr}`).toBe(1);
      const out = JSON.parse(r.stdout) as { ok: boolean; code: string; message: string };
      expect(out, c.what).toMatchObject({ ok: false, code: c.code });
      expect(out.message, c.what).toMatch(c.why);
      expect(out.message.split('\n')).toHaveLength(1);
    }
    // the genuine bundle passes the same command: the refusals above are about the manifest alone
    expect((await runFerry(['bundle', 'verify', genuineFile, '--trust', w.rootPath])).code).toBe(0);
  });

  it('are refused by ferry mirror import: the store unchanged but for the quarantine record naming the code', async () => {
    const data = join(w.dir, 'mirror-import');
    await importInto(data, genuineFile, w.rootPath);
    // A refusal is recorded in state.json's quarantine list, by design; nothing else may change.
    const store = async () => {
      const files = await snapshotDir(data);
      delete files['state.json'];
      const { quarantine, ...rest } = JSON.parse(await readFile(join(data, 'state.json'), 'utf8')) as {
        quarantine: { file: string; code: string }[];
      };
      return { files, state: rest, quarantine };
    };
    const before = await store();
    for (const c of cases) {
      const file = join(w.dir, 'import.ferry');
      await writeFile(file, withManifest(genuine, c.envelope));
      const r = await runFerry([
        'mirror',
        'import',
        file,
        '--data',
        data,
        '--trust',
        w.rootPath,
        '--site',
        'plant-7',
        '--json',
      ]);
      expect(r.code, `${c.what}: ${r.stdout}${r.stderr}`).toBe(1);
      const out = JSON.parse(r.stdout) as { ok: boolean; results: { code: string; message: string }[] };
      expect(out, c.what).toMatchObject({ ok: false, results: [{ ok: false, code: c.code }] });
      expect(out.results[0]!.message, c.what).toMatch(c.why);
      const after = await store();
      expect({ files: after.files, state: after.state }, c.what).toEqual({
        files: before.files,
        state: before.state,
      });
      expect(after.quarantine.at(-1), c.what).toMatchObject({ file, code: c.code });
    }
  });

  it('are refused by a real agent polling a mirror that serves them: state kept, RSS bounded', async () => {
    const data = join(w.dir, 'mirror-good');
    const state = join(w.dir, 'agent');
    await importInto(data, genuineFile, w.rootPath);
    const good = await startMirrorAt(data, 0, OPEN_ENROLMENT);
    const common = ['--state', state, '--trust', w.rootPath, '--site', 'plant-7', '--group', 'web'];
    const first = await runFerry(['agent', 'poll', '--now', '--mirror', good.url, ...common, '--json']);
    expect(first.code, first.stderr).toBe(0);
    await good.stop();

    const kept = async () => {
      const s = JSON.parse(await readFile(join(state, 'state.json'), 'utf8')) as Record<string, unknown>;
      return {
        active: s.active,
        roots: s.roots,
        etag: s.etag,
        trust: s.trust,
        cache: await snapshotDir(join(state, 'cache')),
      };
    };
    const before = await kept();
    expect(before.active).toMatchObject({ sequence: 1 });
    const sizeBefore = (await stat(join(state, 'state.json'))).size;

    const hostile = await hostileMirror(w.rootPath);
    const agent = startAgent(['--mirror', hostile.url, ...common, '--interval', '1']);
    try {
      for (const c of cases) {
        hostile.serve(c.envelope);
        const refused = await agent.nextLog(
          (l) => l.event === 'sync.refused' && l.code === c.code && c.why.test(String(l.reason)),
          30_000,
        );
        expect(refused, c.what).toMatchObject({ code: c.code });
        expect(await peakRss(agent.pid), `${c.what}: peak RSS`).toBeLessThan(RSS_BUDGET);
      }
      // a few more polls of the heaviest one: the peak does not creep up poll after poll
      hostile.serve(cases[0]!.envelope);
      for (let i = 0; i < 3; i++) await agent.nextLog((l) => l.event === 'sync.refused', 30_000);
      const peak = await peakRss(agent.pid);
      expect(peak, `peak RSS ${(peak / 2 ** 20).toFixed(1)} MiB`).toBeLessThan(RSS_BUDGET);
    } finally {
      expect(await agent.stop()).toEqual({ code: 0, signal: null });
      await hostile.close();
    }
    expect(await kept()).toEqual(before);
    // state.json still holds the small genuine manifest, not a 5 MB hostile one
    expect((await stat(join(state, 'state.json'))).size).toBeLessThan(sizeBefore + 4096);
  });
});

describe('a mirror serving the root chain with a key twice', () => {
  it('is refused by the agent before any root or manifest is used, and its state is kept', async () => {
    const data = join(w.dir, 'mirror-roots');
    const state = join(w.dir, 'agent-roots');
    const file = join(w.dir, 'roots.ferry');
    await buildBundle(w, file);
    await importInto(data, file, w.rootPath);
    const good = await startMirrorAt(data, 0, OPEN_ENROLMENT);
    const common = ['--state', state, '--trust', w.rootPath, '--site', 'plant-7', '--group', 'web'];
    expect((await runFerry(['agent', 'poll', '--now', '--mirror', good.url, ...common])).code).toBe(0);
    await good.stop();
    const stateBefore = await readFile(join(state, 'state.json'), 'utf8');
    const hostile = await hostileMirror(w.rootPath);
    try {
      // the genuine root, with a decoy payload first: JSON.parse would keep the genuine one and go on
      const rootText = (await readFile(w.rootPath, 'utf8')).trim();
      hostile.serveRoots(`[${rootText.replace('"payload": ', '"payload": "e30=",\n  "payload": ')}]`);
      const r = await runFerry([
        'agent',
        'poll',
        '--now',
        '--state',
        state,
        '--mirror',
        hostile.url,
        '--json',
      ]);
      expect(r.code, r.stderr).toBe(1);
      const out = JSON.parse(r.stdout) as { sync: { kind: string; code: string; reason: string } };
      expect(out.sync).toMatchObject({ kind: 'refused', code: 'ENVELOPE_INVALID' });
      expect(out.sync.reason).toMatch(/duplicate key "payload"/);
    } finally {
      await hostile.close();
    }
    const s = (t: string) => {
      const { active, roots, etag, trust } = JSON.parse(t) as Record<string, unknown>;
      return { active, roots, etag, trust };
    };
    expect(s(await readFile(join(state, 'state.json'), 'utf8'))).toEqual(s(stateBefore));
  });
});
