/**
 * The load generator of bench/telemetry.ts, run as its own child process (pinned to its own core by the
 * bench). It does no crypto: it reads pre-signed enrolment and heartbeat envelopes (JSON lines) from
 * files named in a config file, enrols every agent, then sends the heartbeats one per `POST /v1/telemetry`:
 * a warm-up, an open-loop phase on a fixed timetable (latency from the scheduled send time, so time spent
 * queued behind a slow server counts) and a closed-loop saturation phase. It prints one line
 * `RESULT {json}` and exits 0; anything else on stdout/stderr is diagnostics.
 *
 *   node dist/bench/telemetry-load.js CONFIG.json
 */
import { readFileSync } from 'node:fs';
import { Agent as HttpAgent, request as httpRequest } from 'node:http';
import { Pool } from 'undici';
import { cpuSeconds } from './proc.js';

export interface LoadConfig {
  url: string;
  /** JSON lines: one enrolment envelope a line. */
  enrollFile: string;
  /** JSON lines: heartbeat envelopes in the order they are to be sent. */
  heartbeatFile: string;
  client: 'undici' | 'http';
  connections: number;
  enrollConcurrency: number;
  warmSeconds: number;
  rate: number;
  seconds: number;
  saturationSeconds: number;
  /** How long to wait for answers once an open-loop timetable has run out, before giving up on them. */
  drainSeconds: number;
  /** The mirror's pid, for its CPU time per phase. */
  mirrorPid: number;
}

export interface PhaseResult {
  /** Requests scheduled (open loop) or sent (closed loop). */
  requests: number;
  accepted: number;
  /** Answered with a status other than 202, or failed at the socket, by "status code" (e.g. "400 REPLAY"). */
  failures: Record<string, number>;
  /** Never answered: still queued or in flight when the phase gave up on them. */
  unanswered: number;
  /** From the first scheduled send to the last answer (or giving up). */
  elapsedSec: number;
  /** 202s per second over max(timetable length, elapsedSec) (open loop) or elapsedSec (closed loop). */
  acceptedPerSec: number;
  /** Over every request; an unanswered one counts with the time it had waited when given up. */
  latencyMs: { p50: number; p99: number; max: number };
  cpuPct: { mirror: number; load: number };
  /** Closed loop only: true when the pre-signed heartbeats ran out before the time did. */
  exhausted?: boolean;
}

type Done = (status: number, code: string) => void;
type Send = (path: string, body: Buffer, done: Done) => void;

/** Splits a JSON-lines file into one Buffer a line, without copying. */
function lines(path: string): Buffer[] {
  const buf = readFileSync(path);
  const out: Buffer[] = [];
  for (let at = 0; at < buf.length;) {
    let nl = buf.indexOf(0x0a, at);
    if (nl < 0) nl = buf.length;
    if (nl > at) out.push(buf.subarray(at, nl));
    at = nl + 1;
  }
  return out;
}

/** The error code in a ferry error body ({code, …}), or '' when there is none. */
function bodyCode(chunks: Buffer[]): string {
  try {
    const v = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { code?: unknown };
    return typeof v.code === 'string' ? v.code : '';
  } catch {
    return '';
  }
}

const HEADERS = { 'content-type': 'application/json' };

/** undici Pool, pipelining 1, through the low-level dispatch API: no stream object per response. */
function undiciClient(url: string, connections: number): { send: Send; close: () => Promise<void> } {
  const pool = new Pool(url, {
    connections,
    pipelining: 1,
    headersTimeout: 120_000,
    bodyTimeout: 120_000,
    keepAliveTimeout: 60_000,
  });
  const send: Send = (path, body, done) => {
    let status = 0;
    let chunks: Buffer[] | undefined;
    pool.dispatch(
      { origin: url, path, method: 'POST', headers: HEADERS, body },
      {
        onRequestStart() {},
        onResponseStart(_c, statusCode) {
          status = statusCode;
          if (status !== 202 && status !== 200) chunks = [];
        },
        onResponseData(_c, chunk) {
          chunks?.push(chunk);
        },
        onResponseEnd() {
          done(status, chunks ? bodyCode(chunks) : '');
        },
        onResponseError(_c, err) {
          done(0, (err as NodeJS.ErrnoException).code ?? err.name);
        },
      },
    );
  };
  return { send, close: () => pool.destroy() };
}

/** node:http with a keep-alive Agent of `connections` sockets. */
function httpClient(url: string, connections: number): { send: Send; close: () => Promise<void> } {
  const u = new URL(url);
  const agent = new HttpAgent({ keepAlive: true, maxSockets: connections, maxFreeSockets: connections });
  const reqs = new Set<ReturnType<typeof httpRequest>>();
  const send: Send = (path, body, done) => {
    let settled = false;
    const finish = (status: number, code: string) => {
      if (settled) return;
      settled = true;
      reqs.delete(req);
      done(status, code);
    };
    const req = httpRequest(
      {
        agent,
        host: u.hostname,
        port: u.port,
        path,
        method: 'POST',
        headers: { ...HEADERS, 'content-length': body.length },
      },
      (res) => {
        const status = res.statusCode ?? 0;
        if (status === 202 || status === 200) {
          res.resume();
          res.on('end', () => finish(status, ''));
        } else {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => finish(status, bodyCode(chunks)));
        }
        res.on('error', (e: NodeJS.ErrnoException) => finish(0, e.code ?? e.name));
      },
    );
    reqs.add(req);
    req.on('error', (e: NodeJS.ErrnoException) => finish(0, e.code ?? e.name));
    req.end(body);
  };
  const close = () => {
    for (const r of reqs) r.destroy(Object.assign(new Error('given up'), { code: 'GIVEN_UP' }));
    agent.destroy();
    return Promise.resolve();
  };
  return { send, close };
}

const makeClient = (c: LoadConfig) => (c.client === 'http' ? httpClient : undiciClient)(c.url, c.connections);

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

class Tally {
  accepted = 0;
  answered = 0;
  failures: Record<string, number> = {};
  constructor(readonly lat: Float64Array) {
    this.got = new Uint8Array(lat.length);
  }
  readonly got: Uint8Array;
  record(k: number, ms: number, status: number, code: string): void {
    this.lat[k] = ms;
    this.got[k] = 1;
    this.answered++;
    if (status === 202) this.accepted++;
    else {
      const key = status ? `${status}${code ? ' ' + code : ''}` : code || 'socket error';
      this.failures[key] = (this.failures[key] ?? 0) + 1;
    }
  }
}

function summarise(
  t: Tally,
  n: number,
  elapsedSec: number,
  rateWindowSec: number,
  cpu: { mirror: number; load: number },
): PhaseResult {
  const sorted = t.lat.subarray(0, n).slice().sort();
  return {
    requests: n,
    accepted: t.accepted,
    failures: t.failures,
    unanswered: n - t.answered,
    elapsedSec,
    acceptedPerSec: t.accepted / rateWindowSec,
    latencyMs: { p50: percentile(sorted, 50), p99: percentile(sorted, 99), max: sorted[n - 1] ?? NaN },
    cpuPct: { mirror: (100 * cpu.mirror) / elapsedSec, load: (100 * cpu.load) / elapsedSec },
  };
}

function cpuMeter(pid: number) {
  const [m0, l0] = [cpuSeconds(pid), process.cpuUsage()];
  return () => {
    const l = process.cpuUsage(l0);
    return { mirror: cpuSeconds(pid) - m0, load: (l.user + l.system) / 1e6 };
  };
}

/**
 * Sends `bodies` on a timetable of `rate` per second, whatever the answers; each latency runs from the
 * request's scheduled time. Gives up on what is still unanswered `drainSec` after the timetable ends.
 */
async function openLoop(c: LoadConfig, bodies: Buffer[], rate: number): Promise<PhaseResult> {
  const n = bodies.length;
  const t = new Tally(new Float64Array(n));
  const client = makeClient(c);
  const cpu = cpuMeter(c.mirrorPid);
  const gap = 1000 / rate;
  const t0 = performance.now();
  let sent = 0;
  let givenUp = false;
  let finish!: () => void;
  const finished = new Promise<void>((ok) => (finish = ok));
  const answered = () => {
    if (t.answered === n) finish();
  };
  const tick = () => {
    const due = Math.min(n, Math.floor((performance.now() - t0) / gap) + 1);
    while (sent < due) {
      const k = sent++;
      const scheduled = t0 + k * gap;
      client.send('/v1/telemetry', bodies[k]!, (status, code) => {
        if (givenUp) return;
        t.record(k, performance.now() - scheduled, status, code);
        answered();
      });
    }
    if (sent < n) setTimeout(tick, 1);
  };
  tick();
  const deadline = (n / rate + c.drainSeconds) * 1000;
  const timer = setTimeout(finish, deadline);
  await finished;
  clearTimeout(timer);
  const end = performance.now();
  const used = cpu();
  if (t.answered < n) {
    givenUp = true;
    for (let k = 0; k < n; k++) if (!t.got[k]) t.lat[k] = end - (t0 + k * gap);
  }
  await client.close().catch(() => undefined);
  const elapsedSec = (end - t0) / 1000;
  return summarise(t, n, elapsedSec, Math.max(n / rate, elapsedSec), used);
}

/** `connections` senders, each sending its next heartbeat as soon as the last is answered. */
async function closedLoop(c: LoadConfig, bodies: Buffer[], seconds: number): Promise<PhaseResult> {
  const t = new Tally(new Float64Array(bodies.length));
  const client = makeClient(c);
  const cpu = cpuMeter(c.mirrorPid);
  const t0 = performance.now();
  const stopAt = t0 + seconds * 1000;
  let next = 0;
  let exhausted = false;
  const worker = () =>
    new Promise<void>((ok) => {
      const go = () => {
        if (performance.now() >= stopAt) return ok();
        if (next >= bodies.length) return ((exhausted = true), ok());
        const k = next++;
        const start = performance.now();
        client.send('/v1/telemetry', bodies[k]!, (status, code) => {
          t.record(k, performance.now() - start, status, code);
          go();
        });
      };
      go();
    });
  await Promise.all(Array.from({ length: c.connections }, worker));
  const elapsedSec = (performance.now() - t0) / 1000;
  const used = cpu();
  await client.close().catch(() => undefined);
  return { ...summarise(t, next, elapsedSec, elapsedSec, used), exhausted };
}

/** Enrols every agent with `POST /v1/enroll`, a few at a time; all must be answered 200. */
async function enrollAll(
  c: LoadConfig,
  bodies: Buffer[],
): Promise<{ seconds: number; failures: Record<string, number> }> {
  const client = makeClient({ ...c, connections: c.enrollConcurrency });
  const failures: Record<string, number> = {};
  const t0 = performance.now();
  let next = 0;
  const worker = () =>
    new Promise<void>((ok) => {
      const go = () => {
        if (next >= bodies.length) return ok();
        client.send('/v1/enroll', bodies[next++]!, (status, code) => {
          if (status !== 200) failures[`${status} ${code}`] = (failures[`${status} ${code}`] ?? 0) + 1;
          go();
        });
      };
      go();
    });
  await Promise.all(Array.from({ length: c.enrollConcurrency }, worker));
  await client.close();
  return { seconds: (performance.now() - t0) / 1000, failures };
}

const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));

async function main(): Promise<void> {
  const c = JSON.parse(readFileSync(process.argv[2]!, 'utf8')) as LoadConfig;
  const enroll = await enrollAll(c, lines(c.enrollFile));
  const bad = Object.values(enroll.failures).reduce((a, b) => a + b, 0);
  if (bad > 0) {
    console.log(`RESULT ${JSON.stringify({ enroll })}`);
    return;
  }
  const hb = lines(c.heartbeatFile);
  let at = 0;
  const take = (k: number) => hb.slice(at, (at = Math.min(hb.length, at + k)));
  const warmN = Math.round(c.rate * c.warmSeconds);
  const warm = warmN > 0 ? await openLoop(c, take(warmN), c.rate) : undefined;
  await sleep(500);
  const open = await openLoop(c, take(Math.round(c.rate * c.seconds)), c.rate);
  await sleep(500);
  const saturation = await closedLoop(c, take(hb.length), c.saturationSeconds);
  console.log(`RESULT ${JSON.stringify({ enroll, warm, open, saturation })}`);
}

await main();
