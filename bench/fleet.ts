/**
 * The fleet view at the size of a large site: a real `ferry mirror serve` with an active bundle, N agents
 * (default 10,000) enrolled with their own keys and one signed heartbeat each (a third behind, some with a
 * failed update, some with drift, one in ten with a failing doctor check), then the status page (`GET /`, one page of 50 agents, all or filtered)
 * and `GET /v1/fleet` timed, p50/p99. Each is timed twice: steady (nothing changed since the last request)
 * and after a change (a heartbeat accepted just before each request, so the fleet is evaluated afresh).
 * The baseline is the same measurement against a mirror of 10 agents, in the same run: the ratio says how
 * much a site of N costs over a site of ten.
 *
 *   npm run bench:fleet -- [--agents 10000] [--requests 200] [--json]
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { Envelope, Signer } from '../core/dsse.js';
import { generateKeyPair, keyIdOf } from '../core/ed25519.js';
import {
  agentIdOf,
  ENROLL_TYPE,
  HEARTBEAT_TYPE,
  signEnrollRequest,
  signHeartbeat,
} from '../core/heartbeat.js';
import { ferry, FERRY, freePort, printTable, ready, start, stopAll } from './proc.js';

const { values } = parseArgs({
  options: {
    agents: { type: 'string', default: '10000' },
    requests: { type: 'string', default: '200' },
    json: { type: 'boolean', default: false },
  },
});
const AGENTS = Number(values.agents);
const REQUESTS = Number(values.requests);

interface SimAgent {
  signer: Signer;
  id: string;
  counter: number;
  enrol: Envelope;
}

function makeAgents(n: number): SimAgent[] {
  const at = new Date().toISOString();
  return Array.from({ length: n }, (_, i) => {
    const { seed, publicKey } = generateKeyPair();
    const signer = { keyid: keyIdOf(publicKey), seed };
    const enrol = signEnrollRequest(
      {
        type: ENROLL_TYPE,
        publicKey: Buffer.from(publicKey).toString('hex'),
        hostname: `node-${i}`,
        platform: 'linux-x64',
        groups: [i % 10 === 0 ? 'canary' : 'plant'],
        at,
      },
      signer,
    );
    return { signer, id: agentIdOf(publicKey), counter: 0, enrol };
  });
}

/** The doctor summary one agent in ten carries: a failing check and a warning. */
const DOCTOR = {
  at: new Date().toISOString(),
  ok: 14,
  warn: 1,
  fail: 1,
  problems: [
    { id: 'key', status: 'fail' as const, evidence: 'keys/agent.key has mode 0644' },
    { id: 'temp', status: 'warn' as const, evidence: '1 left by an interrupted write' },
  ],
};

function heartbeatOf(a: SimAgent, i: number): Envelope {
  a.counter++;
  const failed = i % 97 === 0;
  return signHeartbeat(
    {
      type: HEARTBEAT_TYPE,
      agentId: a.id,
      counter: a.counter,
      sentAt: new Date().toISOString(),
      version: i % 3 === 0 ? '1.3.0' : '1.4.2',
      manifestSequence: 1,
      results: failed
        ? [
            {
              update: {
                outcome: 'failed',
                version: '1.4.2',
                reason: 'health check failed',
                at: new Date().toISOString(),
              },
            },
          ]
        : [],
      drift: i % 50 === 0 ? [{ path: '/etc/app.conf', status: 'changed' }] : [],
      disconnectedSec: 0,
      resources: { rssBytes: 1, load1: 0 },
      ...(i % 10 === 0 && { doctor: DOCTOR }),
    },
    a.signer,
  );
}

async function post(url: string, body: unknown, want: number): Promise<void> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (res.status !== want) throw new Error(`${url}: ${res.status} ${await res.text()}`);
  await res.arrayBuffer();
}

/** Enrols every agent (32 at a time) and sends one heartbeat each, 500 to a request. */
async function load(url: string, agents: SimAgent[]): Promise<void> {
  for (let i = 0; i < agents.length; i += 32)
    await Promise.all(agents.slice(i, i + 32).map((a) => post(`${url}/v1/enroll`, a.enrol, 200)));
  for (let i = 0; i < agents.length; i += 500) {
    const envelopes = agents.slice(i, i + 500).map((a, j) => heartbeatOf(a, i + j));
    await post(`${url}/v1/telemetry`, { envelopes }, 202);
  }
}

const pct = (xs: number[], p: number) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]!;

interface Figures {
  p50: number;
  p99: number;
}

/** Times REQUESTS GETs of `path(i)`; with `change`, one heartbeat is accepted (untimed) before each. */
async function time(
  url: string,
  agents: SimAgent[],
  path: (i: number) => string,
  change: boolean,
): Promise<Figures> {
  const ms: number[] = [];
  for (let i = 0; i < REQUESTS; i++) {
    if (change) {
      const a = agents[i % agents.length]!;
      await post(`${url}/v1/telemetry`, heartbeatOf(a, i), 202);
    }
    const t = process.hrtime.bigint();
    const res = await fetch(url + path(i));
    await res.arrayBuffer();
    ms.push(Number(process.hrtime.bigint() - t) / 1e6);
    if (res.status !== 200) throw new Error(`${path(i)}: ${res.status}`);
  }
  return { p50: pct(ms, 50), p99: pct(ms, 99) };
}

async function site(work: string, name: string, n: number): Promise<Record<string, Figures>> {
  const data = join(work, name);
  ferry(['mirror', 'import', 'b.ferry', '--data', data, '--trust', 'root.json', '--site', 'site'], work);
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const log = join(work, `${name}.log`);
  // the bench measures the fleet view, not enrolment: agents enrol without a token
  const argv = ['mirror', 'serve', '--data', data, '--listen', `127.0.0.1:${port}`, '--open-enrolment'];
  const child = start([process.execPath, FERRY, ...argv], log);
  await ready(child, `${url}/healthz`, log);
  const agents = makeAgents(n);
  const t0 = Date.now();
  await load(url, agents);
  if (!values.json)
    console.error(
      `${name}: ${n} agents enrolled and heard from in ${((Date.now() - t0) / 1000).toFixed(1)} s`,
    );
  const pages = Math.max(1, Math.ceil(n / 50));
  const routes: Record<string, (i: number) => string> = {
    'page (all, page i)': (i) => `/?page=${(i % pages) + 1}`,
    'page (behind)': () => '/?filter=behind',
    '/v1/fleet (page i)': (i) => `/v1/fleet?page=${(i % pages) + 1}`,
    '/v1/fleet (failing)': () => '/v1/fleet?filter=failing',
    '/v1/fleet (doctor)': () => '/v1/fleet?filter=doctor',
  };
  const out: Record<string, Figures> = {};
  for (const [label, path] of Object.entries(routes)) {
    out[`${label} steady`] = await time(url, agents, path, false);
    out[`${label} after a change`] = await time(url, agents, path, true);
  }
  return out;
}

async function main(): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'ferry-bench-fleet-'));
  try {
    ferry(['keys', 'generate', '--out', 'keys', '--name', 'root'], work);
    ferry(['keys', 'generate', '--out', 'keys', '--name', 'rel'], work);
    ferry(
      ['trust', 'init', '--root-key', 'keys/root.key', '--bundle-key', 'keys/rel.pub', '--out', 'root.json'],
      work,
    );
    mkdirSync(join(work, 'art'));
    writeFileSync(join(work, 'art/agent'), 'agent 1.4.2');
    const spec = {
      publisher: 'bench',
      sequence: 1,
      expires: '30d',
      sites: ['site'],
      artifacts: [
        { name: 'ferry-agent', kind: 'agent', version: '1.4.2', platform: 'linux-x64', path: 'art/agent' },
      ],
      rollout: { agent: '1.4.2', waves: [{ percent: 100 }] },
    };
    writeFileSync(join(work, 'spec.json'), JSON.stringify(spec));
    ferry(['bundle', 'create', '--spec', 'spec.json', '--key', 'keys/rel.key', '--out', 'b.ferry'], work);
    const small = await site(work, 'ten', 10);
    const large = await site(work, 'large', AGENTS);
    if (values.json) {
      console.log(JSON.stringify({ agents: AGENTS, requests: REQUESTS, large, ten: small }));
      return;
    }
    const rows = [
      [
        'request',
        `${AGENTS} agents p50 ms`,
        'p99 ms',
        '10 agents p50 ms',
        'p99 ms',
        'ratio p50',
        'ratio p99',
      ],
    ];
    for (const [k, f] of Object.entries(large)) {
      const b = small[k]!;
      rows.push([
        k,
        f.p50.toFixed(2),
        f.p99.toFixed(2),
        b.p50.toFixed(2),
        b.p99.toFixed(2),
        (f.p50 / b.p50).toFixed(1),
        (f.p99 / b.p99).toFixed(1),
      ]);
    }
    printTable(rows);
  } finally {
    await stopAll();
    rmSync(work, { recursive: true, force: true });
  }
}

await main();
