/**
 * Self-update reports go home as their own signed heartbeat (outbox kind
 * `update`, never compacted away), each as a `{update: …}` entry in `results`.
 */
import { serializeEnvelope } from '../../core/dsse.js';
import { signHeartbeat, HEARTBEAT_TYPE, type Heartbeat, type JsonObject } from '../../core/heartbeat.js';
import { isoUtc } from '../../core/time.js';
import type { ReportContext } from '../report.js';
import type { AgentState } from '../agent-state.js';
import type { UpdateReport } from './update-file.js';

/** Queues one heartbeat with counter `state.counter` (reserved and persisted by the caller). */
export async function queueUpdateReports(
  ctx: ReportContext,
  state: AgentState,
  reports: readonly UpdateReport[],
): Promise<boolean> {
  const now = ctx.now();
  const results: JsonObject[] = reports.map((r) => ({
    update: {
      outcome: r.outcome,
      version: r.version,
      reason: r.reason,
      ...(r.phase !== undefined && { phase: r.phase }),
      ...(r.code !== undefined && { code: r.code }),
      at: isoUtc(r.at),
    },
  }));
  const hb: Heartbeat = {
    type: HEARTBEAT_TYPE,
    agentId: ctx.identity.agentId,
    counter: state.counter,
    sentAt: isoUtc(now),
    version: ctx.version,
    manifestSequence: state.active?.sequence ?? null,
    results,
    drift: [],
    disconnectedSec:
      state.disconnectedSince === null ? 0 : Math.round((now - state.disconnectedSince) / 1000),
    resources: { rssBytes: process.memoryUsage.rss(), load1: 0 },
  };
  const bytes = Buffer.from(serializeEnvelope(signHeartbeat(hb, ctx.identity.key)));
  const r = await ctx.outbox.append('update', bytes);
  if (!r.ok) ctx.log.warn('outbox.refused', { reason: r.reason, counter: state.counter });
  return r.ok;
}
