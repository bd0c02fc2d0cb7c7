/**
 * The mirror's promise to agents: a `202` means the heartbeat is on disk.
 * Heartbeats pour into a real `ferry mirror serve` from many agents at once;
 * the mirror is killed with SIGKILL at a random moment, three times. After each
 * restart every heartbeat that was answered 202 is in the outbox exactly once,
 * a heartbeat that was in flight is either there or accepted when sent again
 * (never both), and the agents' counters go on.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { enroll, loadOrCreateIdentity, type AgentIdentity } from '../agent/identity.js';
import { signHeartbeat } from '../core/heartbeat.js';
import { readTelemetry, OPEN_ENROLMENT, startMirrorAt } from './helpers/agent-proc.js';
import { testHeartbeat } from './helpers/heartbeats.js';
import { buildBundle } from './helpers/fixtures.js';
import { useWorld } from './helpers/world.js';
import { runFerry, sleep } from './helpers/mirror-proc.js';

const w = useWorld();

const beat = (a: AgentIdentity, counter: number) => testHeartbeat(a.agentId, counter);

async function post(url: string, a: AgentIdentity, counter: number): Promise<number | 'down'> {
  try {
    const r = await fetch(`${url}/v1/telemetry`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(signHeartbeat(beat(a, counter), a.key)),
    });
    const body = (await r.json()) as { code?: string };
    // a 400 here may only mean "already stored": anything else is a failure of the test's premise
    if (r.status === 400 && body.code !== 'REPLAY') throw new Error(`400 ${body.code}`);
    return r.status;
  } catch {
    return 'down';
  }
}

describe('kill -9 of the mirror while heartbeats arrive', () => {
  it('keeps every acknowledged heartbeat, once, across three kills', async () => {
    const data = join(w.dir, 'mirror');
    const { volumes } = await buildBundle(w, join(w.dir, 'b.ferry'), {});
    const r = await runFerry([
      'mirror',
      'import',
      volumes[0]!.path,
      '--data',
      data,
      '--trust',
      w.rootPath,
      '--site',
      'plant-7',
    ]);
    expect(r.code).toBe(0);
    let m = await startMirrorAt(data, 0, OPEN_ENROLMENT);
    const agents: AgentIdentity[] = [];
    for (let i = 0; i < 24; i++) {
      const dir = join(w.dir, `agent-${i}`);
      await mkdir(dir, { recursive: true });
      const a = await loadOrCreateIdentity(dir);
      await enroll(m.url, a, { hostname: `n${i}`, platform: 'linux/amd64', groups: [] });
      agents.push(a);
    }
    const next = new Map(agents.map((a) => [a.agentId, 1]));
    const acked = new Set<string>(); // agentId:counter answered 202
    const inFlight = new Map<string, number>(); // per agent: a counter sent but not answered

    for (let round = 0; round < 3; round++) {
      let stop = false;
      const loops = agents.map(async (a) => {
        while (!stop) {
          const c = inFlight.get(a.agentId) ?? next.get(a.agentId)!;
          const status = await post(m.url, a, c);
          if (status === 202) {
            acked.add(`${a.agentId}:${c}`);
            inFlight.delete(a.agentId);
            next.set(a.agentId, c + 1);
          } else if (status === 'down') {
            inFlight.set(a.agentId, c); // unknown outcome: send the same one again later
            return;
          } else throw new Error(`unexpected ${status}`);
        }
      });
      await sleep(300 + Math.random() * 700);
      await m.stop('SIGKILL');
      stop = true;
      await Promise.all(loops);
      m = await startMirrorAt(data, m.port, OPEN_ENROLMENT);
      // a heartbeat whose answer was lost is either stored (then REPLAY now) or accepted now: never twice
      for (const a of agents) {
        const c = inFlight.get(a.agentId);
        if (c === undefined) continue;
        const status = await post(m.url, a, c);
        expect([202, 400]).toContain(status);
        if (status === 202) acked.add(`${a.agentId}:${c}`);
        inFlight.delete(a.agentId);
        next.set(a.agentId, c + 1);
      }
      const stored = await readTelemetry(data);
      const keys = stored.map((h) => `${h.agentId}:${h.counter}`);
      expect(new Set(keys).size).toBe(keys.length); // never twice
      const have = new Set(keys);
      for (const k of acked) expect(have.has(k)).toBe(true); // every 202 survived
    }
    expect(acked.size).toBeGreaterThan(100);
    await m.stop('SIGTERM');
  }, 120_000);
});
