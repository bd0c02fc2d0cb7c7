/**
 * Telemetry from the agent: signed heartbeats (and result batches) go to the
 * durable outbox first, then drain to a mirror's POST /v1/telemetry whenever
 * one answers. An entry leaves the outbox only when a mirror acknowledged it.
 */
import { arch, hostname, loadavg, platform } from 'node:os';
import { serializeEnvelope } from '../core/dsse.js';
import {
  signHeartbeat,
  HEARTBEAT_TYPE,
  type DoctorSummary,
  type Heartbeat,
  type JsonObject,
} from '../core/heartbeat.js';
import { request, type ClientLimits } from '../platform/http/client.js';
import type { Logger } from '../platform/log.js';
import { isoUtc } from '../core/time.js';
import type { ApplyReport } from './apply.js';
import type { MirrorSet } from './fetch.js';
import { enroll, type AgentIdentity } from './identity.js';
import type { AgentOutbox } from './outbox.js';
import type { AgentState } from './agent-state.js';

export interface ReportContext {
  identity: AgentIdentity;
  outbox: AgentOutbox;
  log: Logger;
  now: () => number;
  version: string;
  timeoutMs: number;
  /** Deadlines of the HTTP client (defaults when absent). */
  limits?: Partial<ClientLimits>;
  /** The enrolment token, for a mirror that has not met this agent yet (never logged). */
  token?: string;
}

/** Policy problems carried per heartbeat (a hostile policy could name thousands of missing artifacts). */
const MAX_REPORTED_PROBLEMS = 100;

/**
 * Queues one signed heartbeat with counter `state.counter`, carrying the
 * results of this cycle (results make it undroppable). The caller persists the
 * counter before calling, so a crash can leave a gap in counters, never reuse one.
 */
export async function queueHeartbeat(
  ctx: ReportContext,
  state: AgentState,
  report: ApplyReport,
  /** More drift the cycle saw beyond managed files (a storage shortage). */
  extraDrift: JsonObject[] = [],
  /** A doctor summary just made (agent/doctor/summary.ts), to go home in this heartbeat. */
  doctor?: DoctorSummary,
): Promise<void> {
  const counter = state.counter;
  const results: JsonObject[] = report.scripts.map((s) => ({
    script: s.script,
    sha256: s.sha256,
    reason: s.reason,
    exitCode: s.exitCode,
    signal: s.signal,
    timedOut: s.timedOut,
    durationMs: s.durationMs,
    stdout: s.stdout.slice(0, 4096),
    stderr: s.stderr.slice(0, 4096),
    truncated: s.truncated || s.stdout.length > 4096 || s.stderr.length > 4096,
    ...(s.refused && { refused: { code: s.refused.code, message: s.refused.message } }),
    ...(s.forced && { forced: true, runNowId: s.forced.id }),
  }));
  // A signed policy the agent cannot follow is a difference between desired and actual state too: it
  // travels as drift (`{policy, …}`, beside files' `{path, …}`), which every mirror and server accept.
  const drift: JsonObject[] = [
    ...report.files
      .filter((f) => f.status !== 'ok')
      .map((f) => ({ path: f.path, artifact: f.artifact, status: f.status, action: f.action })),
    ...report.problems.slice(0, MAX_REPORTED_PROBLEMS).map((p) => ({
      policy: p.policy,
      sha256: p.sha256,
      code: p.code,
      message: p.message.slice(0, 1024),
    })),
    ...extraDrift,
  ];
  const now = ctx.now();
  const hb: Heartbeat = {
    type: HEARTBEAT_TYPE,
    agentId: ctx.identity.agentId,
    counter,
    sentAt: isoUtc(now),
    version: ctx.version,
    manifestSequence: report.sequence,
    results,
    drift,
    disconnectedSec:
      state.disconnectedSince === null ? 0 : Math.round((now - state.disconnectedSince) / 1000),
    resources: { rssBytes: process.memoryUsage.rss(), load1: loadavg()[0] ?? 0 },
    ...(doctor && { doctor }),
  };
  const bytes = Buffer.from(serializeEnvelope(signHeartbeat(hb, ctx.identity.key)));
  const r = await ctx.outbox.append(results.length > 0 ? 'result' : 'heartbeat', bytes);
  if (!r.ok) ctx.log.warn('outbox.refused', { reason: r.reason, counter });
  else if (r.dropped.length > 0) ctx.log.warn('outbox.compacted', { droppedHeartbeats: r.dropped.length });
}

const BATCH = 200;

/** Sends queued entries to the first mirror that takes them; returns how many were acknowledged. */
export async function drainOutbox(
  ctx: ReportContext,
  mirrors: MirrorSet,
  state: AgentState,
): Promise<number> {
  let sent = 0;
  for (const mirror of mirrors.candidates(ctx.now())) {
    try {
      for (;;) {
        const batch = await ctx.outbox.peek(BATCH);
        if (batch.length === 0) return sent;
        const body = JSON.stringify({
          envelopes: batch.map((e) => JSON.parse(e.bytes.toString('utf8')) as unknown),
        });
        const res = await request(`${mirror}/v1/telemetry`, {
          method: 'POST',
          body,
          headers: { 'Content-Type': 'application/json' },
          timeoutMs: ctx.timeoutMs,
          maxBytes: 1024 * 1024,
          ...(ctx.limits && { limits: ctx.limits }),
        });
        const answer = JSON.parse(res.body.toString('utf8') || '{}') as {
          rejected?: { index: number; code: string }[];
        };
        const rejected = answer.rejected ?? [];
        if (rejected.some((r) => r.code === 'UNKNOWN_AGENT')) {
          // this mirror has not met us: enrol, then send again
          await enroll(mirror, ctx.identity, {
            hostname: hostnameOf(),
            platform: platformOf(),
            groups: state.groups,
            timeoutMs: ctx.timeoutMs,
            ...(ctx.token !== undefined && { token: ctx.token }),
          });
          ctx.log.info('agent.enrolled', { mirror, agentId: ctx.identity.agentId });
          continue;
        }
        if (res.status !== 202 && res.status !== 400)
          throw new Error(`${mirror}/v1/telemetry: HTTP ${res.status}`);
        // REPLAY means the mirror already has it; anything else it will never take: both leave the outbox
        for (const r of rejected.filter((x) => x.code !== 'REPLAY')) {
          ctx.log.error('telemetry.rejected', { mirror, seq: batch[r.index]?.seq, code: r.code });
        }
        await ctx.outbox.ack(batch.at(-1)!.seq);
        sent += batch.length;
      }
    } catch (e) {
      ctx.log.warn('telemetry.send_failed', { mirror, reason: (e as Error).message });
      mirrors.markBad(mirror, (e as Error).message, ctx.now());
    }
  }
  return sent;
}

export const hostnameOf = () => hostname();
export const platformOf = () => `${platform()}-${arch()}`;
