/**
 * The telemetry path home with real processes: `ferry agent run` → `ferry
 * mirror serve` A → (its upstream link, or peer mirror B) → `ferry server
 * start`. Links are cut with a relay the test controls; relays and the server
 * are killed with SIGKILL mid-forward and restarted on the same ports. At the
 * end the server must hold every heartbeat each agent got to its mirror,
 * exactly once, and nothing may wait in any outbox.
 *
 * Then a 100,000-heartbeat backlog (1,000 agents) drains from a mirror to the
 * server through a kill -9 of the mirror mid-drain: zero loss, zero
 * duplicates stored.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signHeartbeat, type Heartbeat } from '../core/heartbeat.js';
import { generateKeyPair, keyIdOf } from '../core/ed25519.js';
import { agentIdOf } from '../core/heartbeat.js';
import { AgentsStore } from '../mirror/agents.js';
import { eventually, importInto, startAgent, type LoggedProc } from './helpers/agent-proc.js';
import { buildBundle, makeWorld, type World } from './helpers/fixtures.js';
import { startLink, type Link } from './helpers/link.js';
import { followLogs, killStrays, runFerry, spawnFerry, sleep } from './helpers/mirror-proc.js';

let w: World;
beforeAll(async () => {
  w = await makeWorld();
});
afterAll(async () => {
  await killStrays();
  await w.cleanup();
});

interface Proc extends LoggedProc {
  url: string;
  port: number;
}

async function started(p: LoggedProc, event: string): Promise<Proc> {
  const l = await p.waitForLog((x) => x.event === event, 20_000);
  const url = l.url as string;
  return { ...p, url, port: Number(new URL(url).port) };
}

const startServer = (data: string, port = 0) =>
  started(
    followLogs(spawnFerry(['server', 'start', '--data', data, '--listen', `127.0.0.1:${port}`]), 'server'),
    'server.started',
  );

const startMirror = (data: string, port: number, extra: string[]) =>
  started(
    followLogs(
      spawnFerry([
        'mirror',
        'serve',
        '--data',
        data,
        '--listen',
        `127.0.0.1:${port}`,
        '--trust',
        w.rootPath,
        '--site',
        'plant-7',
        '--retry-max',
        '1',
        ...extra,
      ]),
      'mirror',
    ),
    'mirror.started',
  );

async function ok(args: string[]): Promise<string> {
  const r = await runFerry(args);
  if (r.code !== 0) throw new Error(`ferry ${args.join(' ')} → ${r.code}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** Makes the mirror's key and registers it with the server for plant-7. */
async function register(server: string, mirror: string): Promise<string> {
  const pub = join(mirror, '..', `${mirror.split('/').pop()}.pub`);
  await mkdir(mirror, { recursive: true });
  const id = JSON.parse(await ok(['mirror', 'identity', '--data', mirror, '--out', pub, '--json'])) as {
    mirror: string;
  };
  await ok(['server', 'register-mirror', '--data', server, '--site', 'plant-7', '--pub', pub]);
  return id.mirror;
}

interface FleetAgent {
  id: string;
  heartbeats: number;
  lastCounter: number | null;
  counterGaps: { missing: number };
}

async function fleet(server: string): Promise<Map<string, FleetAgent>> {
  const r = await fetch(`${server}/v1/agents`);
  const body = (await r.json()) as { agents: FleetAgent[] };
  return new Map(body.agents.map((a) => [a.id, a]));
}

async function mirrorStatus(data: string): Promise<{ depth: number; head: number; acked: number }> {
  const s = JSON.parse(await ok(['mirror', 'status', '--data', data, '--json'])) as {
    telemetry: { depth: number; head: number; acked: number };
  };
  return s.telemetry;
}

const metric = async (url: string, line: RegExp) => {
  const text = await (await fetch(`${url}/metrics`)).text();
  return Number(line.exec(text)?.[1] ?? 0);
};

describe('agents → mirror A → peer B → server, with links cut and relays killed', () => {
  it('delivers every heartbeat exactly once', async () => {
    const dir = join(w.dir, 'relay');
    const S = join(dir, 'server');
    const A = join(dir, 'mirror-a');
    const B = join(dir, 'mirror-b');
    await mkdir(S, { recursive: true });
    const idA = await register(S, A);
    const idB = await register(S, B);

    let server = await startServer(S);
    const link: Link = await startLink(server.url); // A's own way to the server
    let b = await startMirror(B, 0, ['--upstream', server.url]);
    const a = await startMirror(A, 0, ['--upstream', link.url, '--peer', b.url]);
    const { volumes } = await buildBundle(w, join(dir, 'b.ferry'), { spec: { sequence: 1 } });
    await importInto(A, volumes[0]!.path, w.rootPath);

    const states = [join(dir, 'agent-1'), join(dir, 'agent-2')];
    const agents = states.map((state) =>
      startAgent([
        '--state',
        state,
        '--mirror',
        a.url,
        '--trust',
        w.rootPath,
        '--site',
        'plant-7',
        '--interval',
        '1',
      ]),
    );
    const beats = async (min: number) =>
      eventually(
        `every agent has at least ${min} heartbeats at the server`,
        async () => {
          const f = await fleet(server.url);
          return f.size === 2 && [...f.values()].every((x) => x.heartbeats >= min) ? f : undefined;
        },
        30_000,
      );
    await beats(2);
    expect(await metric(b.url, /ferry_mirror_forwarded_records_total (\d+)/)).toBe(0); // straight from A so far

    // A's link goes down: it relays through B
    await link.cut();
    const before = Math.max(...[...(await fleet(server.url)).values()].map((x) => x.heartbeats));
    await beats(before + 2);
    expect(await metric(b.url, /ferry_mirror_forwarded_records_total (\d+)/)).toBeGreaterThan(0);

    // B dies mid-forward and comes back on its port; then the server does the same
    await b.stop('SIGKILL');
    await sleep(1500); // A's outbox grows with nowhere to go
    b = await startMirror(B, b.port, ['--upstream', server.url]);
    await beats(before + 4);
    await server.stop('SIGKILL');
    await sleep(1500);
    server = await startServer(S, server.port);
    await beats(before + 6);

    // A's link is back; the agents stop, and everything still in flight must arrive
    await link.restore();
    await Promise.all(agents.map((p) => p.stop('SIGTERM')));
    await eventually(
      'the outboxes are empty',
      async () => {
        const [sa, sb] = [await mirrorStatus(A), await mirrorStatus(B)];
        return sa.depth === 0 && sb.depth === 0 ? true : undefined;
      },
      30_000,
    );

    const f = await fleet(server.url);
    for (const state of states) {
      const st = JSON.parse(await readFile(join(state, 'state.json'), 'utf8')) as {
        agentId: string;
        counter: number;
      };
      const status = JSON.parse(await ok(['agent', 'status', '--state', state, '--json'])) as {
        outbox: number;
      };
      const got = f.get(st.agentId)!;
      // every counter the agent handed to its mirror, once: 1..(counter − what it still holds)
      expect(got.counterGaps.missing).toBe(0);
      expect(got.lastCounter).toBe(st.counter - status.outbox);
      expect(got.heartbeats).toBe(got.lastCounter);
    }
    // the server saw batches from both mirrors and refused nothing
    const rej = (await (await fetch(`${server.url}/v1/rejections`)).json()) as { total: number };
    expect(rej.total).toBe(0);
    const mirrors = (await (await fetch(`${server.url}/v1/mirrors`)).json()) as {
      mirrors: { id: string; coverage: string[] }[];
    };
    const coverage = new Map(mirrors.mirrors.map((m) => [m.id, m.coverage]));
    const aHead = (await mirrorStatus(A)).head;
    expect(coverage.get(idA)).toEqual([`1–${aHead}`]); // every seq of A accounted for
    expect(coverage.get(idB)?.length ?? 0).toBeLessThanOrEqual(1);

    await Promise.all([a, b, server].map((p) => p.stop('SIGTERM')));
    await link.close();
  }, 180_000);
});

describe('a 100,000-heartbeat backlog', () => {
  it('drains to the server through a kill -9 of the mirror, with zero loss and zero duplicates', async () => {
    const dir = join(w.dir, 'backlog');
    const S = join(dir, 'server');
    const A = join(dir, 'mirror');
    await mkdir(S, { recursive: true });
    await register(S, A);
    // The mirror's data dir, and its outbox filled while the link was down: 1,000 agents × 100 heartbeats
    await ok([
      'mirror',
      'import',
      (await buildBundle(w, join(dir, 'b.ferry'), {})).volumes[0]!.path,
      '--data',
      A,
      '--trust',
      w.rootPath,
      '--site',
      'plant-7',
    ]);
    const store = new AgentsStore(A);
    const AGENTS = 1000;
    const PER = 100;
    const keys = Array.from({ length: AGENTS }, () => generateKeyPair());
    for (const k of keys)
      await store.enroll({
        type: 'ferry.enroll/v1',
        publicKey: Buffer.from(k.publicKey).toString('hex'),
        hostname: 'n',
        platform: 'linux/amd64',
        groups: [],
        at: new Date().toISOString(),
      });
    const sentAt = new Date().toISOString();
    for (let c = 1; c <= PER; c++) {
      const items = keys.map((k) => {
        const hb: Heartbeat = {
          type: 'ferry.heartbeat/v1',
          agentId: agentIdOf(k.publicKey),
          counter: c,
          sentAt,
          version: '1.0.0',
          manifestSequence: 1,
          results: [],
          drift: [],
          disconnectedSec: 0,
          resources: { rssBytes: 1, load1: 0 },
        };
        return { heartbeat: hb, envelope: signHeartbeat(hb, { keyid: keyIdOf(k.publicKey), seed: k.seed }) };
      });
      expect(new Set(await store.commit(items))).toEqual(new Set(['accepted']));
    }
    await store.close();
    expect((await mirrorStatus(A)).depth).toBe(AGENTS + AGENTS * PER);

    const server = await startServer(S);
    const t0 = Date.now();
    let m = await startMirror(A, 0, ['--upstream', server.url]);
    // kill -9 once part of it has gone
    await eventually(
      'some of the backlog is acknowledged',
      async () => {
        const f = await fleet(server.url);
        return [...f.values()].reduce((n, x) => n + x.heartbeats, 0) >= 20_000 ? true : undefined;
      },
      120_000,
      100,
    );
    await m.stop('SIGKILL');
    m = await startMirror(A, m.port, ['--upstream', server.url]);
    await eventually(
      'the backlog is drained',
      async () => ((await mirrorStatus(A)).depth === 0 ? true : undefined),
      180_000,
      500,
    );
    const seconds = (Date.now() - t0) / 1000;
    const f = await fleet(server.url);
    expect(f.size).toBe(AGENTS);
    let total = 0;
    for (const x of f.values()) {
      expect(x.counterGaps.missing).toBe(0);
      expect(x.lastCounter).toBe(PER);
      expect(x.heartbeats).toBe(PER);
      total += x.heartbeats;
    }
    expect(total).toBe(AGENTS * PER);
    console.log(
      `100,000-heartbeat backlog drained in ${seconds.toFixed(1)} s (${Math.round(total / seconds)}/s) through one kill -9`,
    );
    await Promise.all([m, server].map((p) => p.stop('SIGTERM')));
  }, 300_000);
});
