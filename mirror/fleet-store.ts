/**
 * The fleet view of a serving mirror (mirror/fleet.ts) kept current and
 * durable. Enrolment records come from the agents store as they are written;
 * heartbeats as each commit is durable. Nothing is fsynced per heartbeat:
 * `<data>/fleet.json` is written atomically every few seconds while something
 * changed, and on stop, with the outbox seq it covers. At the next start the
 * heartbeats after that seq are replayed from the outbox, which keeps them
 * (even once acknowledged upstream) until a snapshot covers them. So a
 * kill -9 loses nothing the mirror acknowledged.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { decodeBase64Strict } from '../core/encoding.js';
import { assertHeartbeat } from '../core/heartbeat.js';
import { parseJsonStrict } from '../core/json.js';
import type { Manifest } from '../core/manifest.js';
import { writeFileAtomic } from '../platform/fsx.js';
import type { Logger } from '../platform/log.js';
import type { AgentRecord, AgentsStore } from './agents.js';
import {
  agentAlerts,
  rolloutAlerts,
  Fleet,
  matches,
  summarise,
  type AgentFlags,
  type Enrolled,
  type FleetAgentView,
  type FleetAlert,
  type FleetFilter,
  type FleetSummary,
  type Observed,
  type RolloutSource,
  type RolloutSummary,
} from './fleet.js';
import type { MirrorOutbox } from './outbox.js';

export const DEFAULT_SILENT_AFTER_MS = 15 * 60_000;
export const DEFAULT_PAGE_SIZE = 50;
export const MAX_PAGE_SIZE = 500;
const SNAPSHOT_EVERY_MS = 5_000;

export interface FleetQuery {
  page?: number;
  size?: number;
  filter?: FleetFilter;
}

export interface FleetReport {
  summary: FleetSummary;
  alerts: FleetAlert[];
  rollout: RolloutSummary | null;
  silentAfterSec: number;
}

export interface FleetPage extends FleetReport {
  filter: FleetFilter;
  page: number;
  pages: number;
  size: number;
  /** Agents matching the filter. */
  total: number;
  agents: FleetAgentView[];
}

/** How stale the fleet view may be while heartbeats keep changing it. */
export const VIEW_FRESH_MS = 1_000;

interface Evaluation {
  manifestTag: string;
  at: number;
  generation: number;
  flags: AgentFlags[];
  summary: FleetSummary;
  alerts: FleetAlert[];
}

interface SnapshotFile {
  v: 1;
  journalSeq: number;
  observed: Record<string, Observed>;
}

const enrolledOf = (r: AgentRecord): Enrolled => ({
  id: r.id,
  hostname: r.hostname,
  platform: r.platform,
  groups: r.groups,
  enrolledAt: r.enrolledAt,
  ...(r.revokedAt !== undefined && { revokedAt: r.revokedAt }),
});

export interface FleetServiceOptions {
  dataDir: string;
  agents: AgentsStore;
  outbox: MirrorOutbox;
  now: () => number;
  silentAfterMs?: number;
  rollout?: RolloutSource;
  log: Logger;
}

export class FleetService {
  readonly fleet = new Fleet();
  readonly silentAfterMs: number;
  rollout: RolloutSource | undefined;
  private covered = 0;
  private dirty = false;
  private timer: NodeJS.Timeout | undefined;
  private writing: Promise<void> | undefined;
  private cache: Evaluation | undefined;
  private readonly unsubscribe: (() => void)[] = [];

  private constructor(private readonly o: FleetServiceOptions) {
    this.silentAfterMs = o.silentAfterMs ?? DEFAULT_SILENT_AFTER_MS;
    this.rollout = o.rollout;
  }

  static path(dataDir: string): string {
    return join(dataDir, 'fleet.json');
  }

  /** Loads the last snapshot, replays the heartbeats after it, and follows the agents store. */
  static async open(o: FleetServiceOptions): Promise<FleetService> {
    const s = new FleetService(o);
    for (const r of await o.agents.list()) s.fleet.setEnrolled(enrolledOf(r));
    await s.load();
    s.dirty = true;
    await s.snapshot(); // fleet.json now covers what was replayed
    s.unsubscribe.push(
      o.agents.onRecord((r) => s.fleet.setEnrolled(enrolledOf(r))),
      o.agents.onHeartbeats((items) => {
        const at = new Date(o.now()).toISOString();
        for (const { heartbeat } of items) s.fleet.heartbeat(heartbeat, at);
        s.touch();
      }),
      o.outbox.keepFrom(() => s.covered),
    );
    return s;
  }

  private async load(): Promise<void> {
    const text = await readFile(FleetService.path(this.o.dataDir), 'utf8').catch(
      (e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT') return undefined;
        throw e;
      },
    );
    if (text !== undefined) {
      const snap = JSON.parse(text) as SnapshotFile;
      if (snap.v !== 1 || !Number.isSafeInteger(snap.journalSeq))
        throw new Error(`${FleetService.path(this.o.dataDir)} is not a fleet snapshot`);
      for (const [id, obs] of Object.entries(snap.observed)) this.fleet.observed.set(id, obs);
      this.covered = snap.journalSeq;
    }
    let replayed = 0;
    for (let from = this.covered + 1; from <= this.o.outbox.head;) {
      const batch = await this.o.outbox.read(from, { maxRecords: 5000, maxBytes: 16 * 1024 * 1024 });
      if (!batch.length) break;
      for (const r of batch) {
        if (r.kind !== 'heartbeat') continue;
        try {
          const h = parseJsonStrict(decodeBase64Strict(r.envelope.payload, 'payload'));
          assertHeartbeat(h);
          if (this.fleet.heartbeat(h, r.at)) replayed++;
        } catch (e) {
          // It was verified when accepted: a record that does not read back is reported, not fatal.
          this.o.log.warn('fleet.replay_skipped', { seq: r.seq, error: (e as Error).message });
        }
      }
      from = batch.at(-1)!.seq + 1;
    }
    this.o.log.info('fleet.loaded', { agents: this.fleet.enrolled.size, replayed, covered: this.covered });
  }

  private touch(): void {
    this.dirty = true;
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.snapshot().catch((e: unknown) =>
        this.o.log.warn('fleet.snapshot_failed', { error: (e as Error).message }),
      );
    }, SNAPSHOT_EVERY_MS);
    this.timer.unref();
  }

  /** Writes fleet.json now (one write at a time). */
  async snapshot(): Promise<void> {
    while (this.writing) await this.writing;
    if (!this.dirty) return;
    this.writing = (async () => {
      this.dirty = false;
      const seq = this.o.agents.settledSeq();
      const snap: SnapshotFile = { v: 1, journalSeq: seq, observed: Object.fromEntries(this.fleet.observed) };
      await writeFileAtomic(FleetService.path(this.o.dataDir), JSON.stringify(snap) + '\n');
      this.covered = Math.max(this.covered, seq);
    })().finally(() => (this.writing = undefined));
    return this.writing;
  }

  /**
   * Every agent's flags, the summary and the agents' alerts. Worked out again only when the manifest
   * changed, or something changed and the last answer is older than VIEW_FRESH_MS, or the clock moved
   * to another second (silence): at 10,000 agents heartbeats change the fleet hundreds of times a
   * second, and every page and scrape in between shares one evaluation.
   */
  private evaluate(manifest: Manifest | null, manifestTag: string): Evaluation {
    const now = this.o.now();
    const c = this.cache;
    const generation = this.fleet.generation;
    if (
      c?.manifestTag === manifestTag &&
      Math.floor(c.at / 1000) === Math.floor(now / 1000) &&
      (c.generation === generation || now - c.at < VIEW_FRESH_MS)
    )
      return c;
    const flags = this.fleet.flags({ manifest, now, silentAfterMs: this.silentAfterMs });
    const alerts = agentAlerts(this.fleet, flags, this.silentAfterMs);
    this.cache = { manifestTag, at: now, generation, flags, summary: summarise(this.fleet, flags), alerts };
    return this.cache;
  }

  /** Summary, alerts and the rollout: what every view of the fleet starts with. */
  report(manifest: Manifest | null, manifestTag = ''): FleetReport {
    const { summary, alerts } = this.evaluate(manifest, manifestTag);
    const rollout = this.rollout?.rolloutSummary() ?? null;
    return {
      summary,
      alerts: [...rolloutAlerts(rollout), ...alerts],
      rollout,
      silentAfterSec: Math.round(this.silentAfterMs / 1000),
    };
  }

  /** One page of agents matching `q.filter`, with the report. */
  page(manifest: Manifest | null, manifestTag: string, q: FleetQuery): FleetPage {
    const { flags } = this.evaluate(manifest, manifestTag);
    const filter = q.filter ?? 'all';
    const size = Math.min(Math.max(1, q.size ?? DEFAULT_PAGE_SIZE), MAX_PAGE_SIZE);
    const chosen = filter === 'all' ? flags : flags.filter((f) => matches(f, filter));
    const pages = Math.max(1, Math.ceil(chosen.length / size));
    const page = Math.min(Math.max(1, q.page ?? 1), pages);
    return {
      ...this.report(manifest, manifestTag),
      filter,
      page,
      pages,
      size,
      total: chosen.length,
      agents: chosen.slice((page - 1) * size, page * size).map((f) => this.fleet.view(f)),
    };
  }

  async close(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    for (const u of this.unsubscribe) u();
    this.dirty = true;
    await this.snapshot();
  }
}
