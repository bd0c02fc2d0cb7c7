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
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { signHeartbeat } from '../core/heartbeat.js';
import { generateKeyPair, keyIdOf } from '../core/ed25519.js';
import { agentIdOf } from '../core/heartbeat.js';
import { enroll, loadOrCreateIdentity } from '../agent/identity.js';
import { AgentsStore } from '../mirror/agents.js';
import { eventually, importInto, startAgent, type LoggedProc } from './helpers/agent-proc.js';
import { buildBundle, snapshotDir } from './helpers/fixtures.js';
import { useWorld } from './helpers/world.js';
import { testHeartbeat } from './helpers/heartbeats.js';
import { startLink, type Link } from './helpers/link.js';
import { followLogs, runFerry, spawnFerry, sleep } from './helpers/mirror-proc.js';

const w = useWorld();

interface Proc extends LoggedProc {
  url: string;
  port: number;
}

async function started(p: LoggedProc, event: string): Promise<Proc> {
  const l = await p.waitForLog((x) => x.event === event, 20_000);
  const url = l.url as string;
  return { ...p, url, port: Number(new URL(url).port) };
}

const tokens = new Map<string, string>();
const auth = (url: string) => ({ headers: { authorization: `Bearer ${tokens.get(url)}` } });
async function startServer(data: string, port = 0): Promise<Proc> {
  const p = await started(
    followLogs(spawnFerry(['server', 'start', '--data', data, '--listen', `127.0.0.1:${port}`]), 'server'),
    'server.started',
  );
  // the fleet view needs a viewer: a bearer token for the admin the first start created
  const t = await runFerry(['server', 'token', 'create', '--data', data, '--user', 'admin']);
  expect(t.code, t.stderr).toBe(0);
  tokens.set(p.url, t.stdout.trim());
  return p;
}

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
        '--open-enrolment', // these tests are about the way home, not about who may enrol
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
  const r = await fetch(`${server}/v1/agents`, {
    headers: { authorization: `Bearer ${tokens.get(server)}` },
  });
  const body = (await r.json()) as { agents: FleetAgent[] };
  return new Map(body.agents.map((a) => [a.id, a]));
}

/**
 * Every heartbeat the agent at `state` handed to its mirror is at the server, once:
 * counters 1..(last counter − what the agent still holds), no gaps.
 */
async function expectAllDelivered(state: string, fleetById: Map<string, FleetAgent>): Promise<void> {
  const st = JSON.parse(await readFile(join(state, 'state.json'), 'utf8')) as {
    agentId: string;
    counter: number;
  };
  const status = JSON.parse(await ok(['agent', 'status', '--state', state, '--json'])) as { outbox: number };
  const got = fleetById.get(st.agentId)!;
  expect(got.counterGaps.missing).toBe(0);
  expect(got.lastCounter).toBe(st.counter - status.outbox);
  expect(got.heartbeats).toBe(got.lastCounter);
}

type OutboxStatus = { depth: number; head: number; acked: number; bytes: number; oldestAt?: string };
async function mirrorStatus(data: string): Promise<OutboxStatus> {
  const s = JSON.parse(await ok(['mirror', 'status', '--data', data, '--json'])) as {
    telemetry: OutboxStatus;
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
    // B relays only what A signed (A's key pinned on B)
    const bArgs = ['--upstream', server.url, '--relay-key', join(dir, 'mirror-a.pub')];
    let b = await startMirror(B, 0, bArgs);
    expect(await b.waitForLog((l) => l.event === 'mirror.started')).toMatchObject({ relayFrom: [idA] });
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
        60_000,
      ).catch(async (e: Error) => {
        // what each hop holds, for a failure that can be read without rerunning
        const f = await fleet(server.url).catch((x: Error) => x.message);
        const hops = {
          fleet: f instanceof Map ? [...f.values()].map((x) => [x.id.slice(0, 8), x.heartbeats]) : f,
          A: await mirrorStatus(A).catch((x: Error) => x.message),
          B: await mirrorStatus(B).catch((x: Error) => x.message),
          agents: agents.map((p) => p.logs.filter((l) => l.event === 'agent.cycle').slice(-2)),
          forwarding: [a, b].map((m) =>
            m.logs.filter((l) => String(l.event).startsWith('forward.')).slice(-4),
          ),
        };
        throw new Error(`${e.message}\n${JSON.stringify(hops, null, 1)}`);
      });
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
    b = await startMirror(B, b.port, bArgs);
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
    for (const state of states) await expectAllDelivered(state, f);
    // the server saw batches from both mirrors and refused nothing
    const rej = (await (await fetch(`${server.url}/v1/rejections`, auth(server.url))).json()) as {
      total: number;
    };
    expect(rej.total).toBe(0);
    const mirrors = (await (await fetch(`${server.url}/v1/mirrors`, auth(server.url))).json()) as {
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
        const hb = testHeartbeat(agentIdOf(k.publicKey), c, { sentAt });
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
    // live traffic while the backlog drains: a new agent's heartbeats are answered promptly
    const live = await loadOrCreateIdentity(join(dir, 'live-agent'));
    await enroll(m.url, live, { hostname: 'live', platform: 'linux/amd64', groups: [] });
    const latencies: number[] = [];
    for (let c = 1; c <= 20; c++) {
      const hb = testHeartbeat(live.agentId, c);

      const t = Date.now();
      const r = await fetch(`${m.url}/v1/telemetry`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(signHeartbeat(hb, live.key)),
      });
      latencies.push(Date.now() - t);
      expect(r.status).toBe(202);
      await sleep(50);
    }
    const depthDuring = (await mirrorStatus(A)).depth;
    await eventually(
      'the backlog is drained',
      async () => ((await mirrorStatus(A)).depth === 0 ? true : undefined),
      180_000,
      500,
    );
    const seconds = (Date.now() - t0) / 1000;
    const f = await fleet(server.url);
    expect(f.size).toBe(AGENTS + 1);
    let total = 0;
    for (const x of [...f.values()].filter((a) => a.id !== live.agentId)) {
      expect(x.counterGaps.missing).toBe(0);
      expect(x.lastCounter).toBe(PER);
      expect(x.heartbeats).toBe(PER);
      total += x.heartbeats;
    }
    expect(total).toBe(AGENTS * PER);
    expect(depthDuring).toBeGreaterThan(0); // the live heartbeats really met the drain
    expect(Math.max(...latencies)).toBeLessThan(2000);
    const liveAtServer = f.get(live.agentId);
    expect(liveAtServer).toMatchObject({ heartbeats: 20, lastCounter: 20 });
    console.log(
      `live heartbeats during the drain: 202 in at most ${Math.max(...latencies)} ms (median ${latencies.sort((x, y) => x - y)[10]} ms)`,
    );
    console.log(
      `100,000-heartbeat backlog drained in ${seconds.toFixed(1)} s (${Math.round(total / seconds)}/s) through one kill -9`,
    );
    await Promise.all([m, server].map((p) => p.stop('SIGTERM')));
  }, 300_000);
});

describe('the courier round trip, twice, with real processes', () => {
  it('exports from a serving mirror, refuses tampered, reordered and stale exports, and trims on each ack', async () => {
    const dir = join(w.dir, 'courier');
    const S = join(dir, 'server');
    const A = join(dir, 'mirror');
    const usb = join(dir, 'usb');
    await mkdir(S, { recursive: true });
    await mkdir(usb, { recursive: true });
    await register(S, A);
    await ok(['server', 'identity', '--data', S, '--out', join(usb, 'server.pub')]);
    const m = await startMirror(A, 0, []); // no link at all
    const state = join(dir, 'agent');
    const agent = startAgent([
      '--state',
      state,
      '--mirror',
      m.url,
      '--trust',
      w.rootPath,
      '--site',
      'plant-7',
      '--interval',
      '1',
    ]);
    const waitDepth = (n: number) =>
      eventually(
        `${n}+ records in the outbox`,
        async () => ((await mirrorStatus(A)).depth >= n ? true : undefined),
        30_000,
      );
    const exportNo = async (n: number) => {
      const out = join(usb, `export-${n}.jsonl`);
      const r = JSON.parse(await ok(['mirror', 'export-telemetry', '--data', A, '--out', out, '--json'])) as {
        number: number;
        via: string;
        to: number;
      };
      expect(r).toMatchObject({ number: n, via: 'serve' }); // carried out by the serving mirror
      return { out, to: r.to };
    };
    const importExport = (file: string, ack?: string) =>
      runFerry([
        'server',
        'import-telemetry',
        file,
        '--data',
        S,
        ...(ack ? ['--ack-out', ack] : []),
        '--json',
      ]);

    // round 1
    await waitDepth(3);
    expect(await metric(m.url, /ferry_mirror_outbox_records (\d+)/)).toBeGreaterThanOrEqual(3);
    // how much waits, and since when: what an operator alerts on for a site cut off too long
    const waiting = await mirrorStatus(A);
    expect(waiting.bytes).toBeGreaterThan(0);
    const oldest = Date.parse(waiting.oldestAt!);
    expect(oldest).toBeGreaterThan(Date.now() - 120_000);
    expect(oldest).toBeLessThanOrEqual(Date.now());
    expect(await metric(m.url, /ferry_mirror_outbox_oldest_timestamp_seconds (\d+)/)).toBe(
      Math.floor(oldest / 1000),
    );
    expect(await metric(m.url, /ferry_mirror_outbox_bytes (\d+)/)).toBeGreaterThan(0);
    const page = await (await fetch(`${m.url}/`)).text();
    expect(page).toMatch(/id="outbox">\d+<\/b> record\(s\) waiting/);
    expect(page).toContain(`the oldest since <span id="oldest">${waiting.oldestAt}</span>`);
    expect(page).toMatch(/leaves by courier/);
    const e1 = await exportNo(1);
    const lines = (await readFile(e1.out, 'utf8')).split('\n');
    const tampered = join(usb, 'tampered.jsonl');
    const at = lines.findIndex((l) => l.includes('"kind":"heartbeat"'));
    await writeFile(
      tampered,
      lines.map((l, i) => (i === at ? l.replace('"counter":', '"counter":9') : l)).join('\n'),
    );
    const reordered = join(usb, 'reordered.jsonl');
    await writeFile(reordered, [lines[0], lines[2], lines[1], ...lines.slice(3)].join('\n'));
    const before = await snapshotDir(S);
    for (const bad of [tampered, reordered]) {
      const r = await importExport(bad);
      expect(r.code).toBe(1);
      expect(JSON.parse(r.stdout)).toMatchObject({ ok: false, code: 'EXPORT_TAMPERED' });
    }
    expect(await snapshotDir(S)).toEqual(before); // refusals change nothing
    expect((await importExport(e1.out, join(usb, 'ack-1.json'))).code).toBe(0);
    const again = await importExport(e1.out);
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/already/);
    await ok([
      'mirror',
      'import-ack',
      join(usb, 'ack-1.json'),
      '--data',
      A,
      '--server-key',
      join(usb, 'server.pub'),
    ]);
    // (the agent keeps sending meanwhile, so what waits is what came after export 1)
    expect((await mirrorStatus(A)).acked).toBe(e1.to);

    // round 2: what came after, chained to export 1
    await eventually(
      'more heartbeats',
      async () => ((await mirrorStatus(A)).head > e1.to + 1 ? true : undefined),
      30_000,
    );
    const e2 = await exportNo(2);
    const h2 = JSON.parse(
      Buffer.from(
        (JSON.parse((await readFile(e2.out, 'utf8')).split('\n')[0]!) as { payload: string }).payload,
        'base64',
      ).toString(),
    ) as {
      from: number;
      prev: string;
    };
    expect(h2.from).toBe(e1.to + 1);
    expect(h2.prev).toMatch(/^[0-9a-f]{64}$/);
    // exports 3 and 4 made, 4 imported first: 3 is stale and refused, nothing lost (4 holds all of it)
    await eventually(
      'more heartbeats',
      async () => ((await mirrorStatus(A)).head > e2.to ? true : undefined),
      30_000,
    );
    const e3 = await exportNo(3);
    await eventually(
      'more heartbeats',
      async () => ((await mirrorStatus(A)).head > e3.to ? true : undefined),
      30_000,
    );
    await agent.stop('SIGTERM');
    const e4 = await exportNo(4);
    expect((await importExport(e2.out, join(usb, 'ack-2.json'))).code).toBe(0);
    const r4 = await importExport(e4.out, join(usb, 'ack-4.json'));
    expect(r4.code).toBe(0);
    expect(JSON.parse(r4.stdout)).toMatchObject({ ok: true });
    const r3 = await importExport(e3.out);
    expect(r3.code).toBe(1);
    expect(JSON.parse(r3.stdout)).toMatchObject({ code: 'EXPORT_OUT_OF_ORDER' });
    for (const n of [2, 4]) await ok(['mirror', 'import-ack', join(usb, `ack-${n}.json`), '--data', A]); // the key is pinned now
    // an ack applied twice changes nothing
    const twice = JSON.parse(
      await ok(['mirror', 'import-ack', join(usb, 'ack-1.json'), '--data', A, '--json']),
    ) as {
      alreadyApplied: boolean;
    };
    expect(twice.alreadyApplied).toBe(true);
    expect(await mirrorStatus(A)).toMatchObject({ depth: 0, acked: e4.to });
    expect(await metric(m.url, /ferry_mirror_outbox_records (\d+)/)).toBe(0);
    expect(await metric(m.url, /ferry_mirror_outbox_oldest_timestamp_seconds (\d+)/)).toBe(0);
    expect((await mirrorStatus(A)).oldestAt).toBeUndefined();
    expect(await (await fetch(`${m.url}/`)).text()).toMatch(/id="outbox">nothing waiting/);

    // every heartbeat the agent handed over is at the server, once
    const fleetOffline = JSON.parse(await ok(['server', 'agents', '--data', S, '--json'])) as {
      agents: FleetAgent[];
    };
    await expectAllDelivered(state, new Map(fleetOffline.agents.map((x) => [x.id, x])));
    await m.stop('SIGTERM');
  }, 120_000);
});
