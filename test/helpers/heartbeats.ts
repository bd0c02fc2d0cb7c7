/** A plain heartbeat payload for tests: counter and agent as given, the rest fixed. */
import type { Heartbeat } from '../../core/heartbeat.js';

export function testHeartbeat(agentId: string, counter: number, extra: Partial<Heartbeat> = {}): Heartbeat {
  return {
    type: 'ferry.heartbeat/v1',
    agentId,
    counter,
    sentAt: new Date().toISOString(),
    version: '1.0.0',
    manifestSequence: 1,
    results: [],
    drift: [],
    disconnectedSec: 0,
    resources: { rssBytes: 1, load1: 0 },
    ...extra,
  };
}
