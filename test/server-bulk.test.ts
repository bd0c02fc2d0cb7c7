/**
 * A courier's backlog: one export with 100,000 heartbeats from 1,000 agents,
 * imported by the built CLI. Signing them here is the slow part; the import's
 * own time is printed (not gated), with a loose ceiling.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { OutboxRecord } from '../core/telemetry.js';
import { ferry, tempDir } from './helpers/fixtures.js';
import { enrolment, fastHeartbeat, makeAgent, makeMirror, writeExport } from './helpers/server-fixtures.js';

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('ferry-server-bulk-'));
});
afterAll(() => cleanup());

const AGENTS = 1000;
const PER_AGENT = 100;

describe('import-telemetry at scale', () => {
  it(
    `imports ${AGENTS * PER_AGENT} heartbeats from ${AGENTS} agents in one export`,
    { timeout: 120_000 },
    async () => {
      const m = await makeMirror(dir, 'm', 'plant-7');
      const data = join(dir, 'data');
      expect(
        (await ferry(['server', 'register-mirror', '--data', data, '--site', 'plant-7', '--pub', m.pubPath]))
          .code,
      ).toBe(0);
      const t0 = performance.now();
      const agents = Array.from({ length: AGENTS }, makeAgent);
      const records: OutboxRecord[] = [];
      let seq = 0;
      for (const a of agents) records.push(enrolment(a, ++seq));
      for (let c = 1; c <= PER_AGENT; c++) for (const a of agents) records.push(fastHeartbeat(a, ++seq, c));
      const file = join(dir, 'backlog.jsonl');
      await writeExport(file, m, { number: 1, prev: null, from: 1, to: seq, records });
      const signed = performance.now() - t0;

      const t1 = performance.now();
      const r = await ferry(['server', 'import-telemetry', file, '--data', data, '--json']);
      const imported = performance.now() - t1;
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({
        stored: AGENTS * PER_AGENT,
        enrolments: AGENTS,
        rejected: 0,
        counterGaps: { missing: 0 },
      });
      console.log(
        `server bulk: signed ${records.length} records in ${(signed / 1000).toFixed(1)} s; ` +
          `import-telemetry took ${(imported / 1000).toFixed(1)} s (${Math.round((AGENTS * PER_AGENT) / (imported / 1000))} heartbeats/s)`,
      );
      const t2 = performance.now();
      const again = await ferry(['server', 'import-telemetry', file, '--data', data]);
      expect(again.stdout).toMatch(/already imported/);
      console.log(
        `server bulk: idempotent re-import (two reads, no ingest) took ${((performance.now() - t2) / 1000).toFixed(1)} s`,
      );
      expect(imported).toBeLessThan(90_000);
    },
  );
});
