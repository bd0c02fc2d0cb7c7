/**
 * Each agent's latest self-diagnosis as its signed heartbeats carried it
 * (core/heartbeat.ts `doctor`), kept at the site under
 * `<data>/doctor/<agentId>.json` (atomic writes) so that `ferry mirror doctor
 * AGENT` can show it with no link home. Fed at heartbeat intake, after the
 * heartbeat is durable in the outbox; a report is rewritten only when the agent
 * ran its checks again (a newer `at`), so a heartbeat that repeats the same
 * report costs no write.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { assertDoctorSummary, isAgentId, type DoctorSummary } from '../core/heartbeat.js';
import { writeFileAtomic } from '../platform/fsx.js';

export interface DoctorRecord {
  format: 'ferry.mirror-doctor/v1';
  agentId: string;
  /** Counter of the heartbeat that carried it. */
  counter: number;
  receivedAt: string;
  summary: DoctorSummary;
}

export class DoctorReports {
  /** agentId → `at` and counter of the stored report, so repeats are not rewritten. */
  private readonly seen = new Map<string, { at: number; counter: number }>();
  private made = false;

  constructor(readonly dataDir: string) {}

  private get dir(): string {
    return join(this.dataDir, 'doctor');
  }

  /** Keeps `summary` if it is newer than the one stored for this agent; true when it was written. */
  async record(agentId: string, counter: number, summary: DoctorSummary, now: number): Promise<boolean> {
    if (!isAgentId(agentId)) return false;
    const at = Date.parse(summary.at);
    const prev = this.seen.get(agentId) ?? (await this.stored(agentId));
    if (prev && at <= prev.at) return false;
    if (!this.made) {
      await mkdir(this.dir, { recursive: true });
      this.made = true;
    }
    const rec: DoctorRecord = {
      format: 'ferry.mirror-doctor/v1',
      agentId,
      counter,
      receivedAt: new Date(now).toISOString(),
      summary,
    };
    await writeFileAtomic(join(this.dir, `${agentId}.json`), JSON.stringify(rec) + '\n');
    this.seen.set(agentId, { at, counter });
    return true;
  }

  private async stored(agentId: string): Promise<{ at: number; counter: number } | undefined> {
    const r = await this.get(agentId);
    return r && { at: Date.parse(r.summary.at), counter: r.counter };
  }

  /** The latest report kept for `agentId`, or undefined when it never sent one. */
  async get(agentId: string): Promise<DoctorRecord | undefined> {
    if (!isAgentId(agentId)) return undefined;
    let v: unknown;
    try {
      v = JSON.parse(await readFile(join(this.dir, `${agentId}.json`), 'utf8'));
    } catch {
      return undefined;
    }
    const o = v as Partial<DoctorRecord>;
    if (o?.format !== 'ferry.mirror-doctor/v1' || o.agentId !== agentId || typeof o.counter !== 'number')
      return undefined;
    try {
      assertDoctorSummary(o.summary);
    } catch {
      return undefined;
    }
    return o as DoctorRecord;
  }
}

const byDir = new Map<string, DoctorReports>();

/** One DoctorReports per data dir in this process, so its memory of what is stored is shared. */
export function doctorReportsFor(dataDir: string): DoctorReports {
  let r = byDir.get(dataDir);
  if (!r) byDir.set(dataDir, (r = new DoctorReports(dataDir)));
  return r;
}
