/**
 * The agent's composition root and loop: load state (pinning the trust root on
 * first run), then every interval (with jitter): sync with the mirrors, apply
 * the last verified state locally, queue a signed heartbeat, drain the outbox.
 * Cut off from every mirror it keeps applying what it last verified.
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import type { Server } from 'node:http';
import { join, resolve } from 'node:path';
import { FerryError } from '../core/errors.js';
import type { ClientLimits } from '../platform/http/client.js';
import type { Logger } from '../platform/log.js';
import { loadPinnedRoot } from '../core/root.js';
import { acquireLock } from '../platform/lock.js';
import { applyOnce, type ApplyReport } from './apply.js';
import { MirrorSet } from './fetch.js';
import { agentMetrics, serveMetrics, writeMetricsFile } from './metrics.js';
import { enroll, EnrolRefusedError, loadOrCreateIdentity, type AgentIdentity } from './identity.js';
import { AgentOutbox } from './outbox.js';
import { recordPolicyProblems } from './problems.js';
import { askRunNow } from './run-now.js';
import { drainOutbox, hostnameOf, platformOf, queueHeartbeat } from './report.js';
import { initialState, readAgentState, writeAgentState, type AgentState } from './agent-state.js';
import { readShortage, recordShortage, shortageDrift } from './storage.js';
import { activeManifest, syncOnce, type SyncOutcome } from './sync.js';
import { UpdateDriver } from './update/driver.js';
import { limitsFromEnv } from './update/limits.js';
import { installRootOf } from './update/install.js';
import type { UpdateLimits } from './update/machine.js';
import { queueUpdateReports } from './update/report.js';
import type { DoctorSummary } from '../core/heartbeat.js';
import { runDoctor } from './doctor/run.js';
import {
  DEFAULT_DOCTOR_INTERVAL_SEC,
  doctorDue,
  readLastSummary,
  summarize,
  writeLastSummary,
} from './doctor/summary.js';

export interface AgentOptions {
  stateDir: string;
  mirrors: string[];
  /** First run: the root to pin and this node's site and groups (later runs use the stored ones). */
  trustPath?: string;
  site?: string;
  groups?: string[];
  log: Logger;
  version: string;
  pollIntervalSec?: number;
  allowlist?: readonly string[];
  enforceFiles?: boolean;
  timeoutMs?: number;
  /** HTTP deadlines, floor rate and disk reserve (platform/http/limits.ts), over the defaults. */
  httpLimits?: Partial<ClientLimits>;
  now?: () => number;
  /** Serve Prometheus metrics on this HOST:PORT, and/or write them to this textfile each cycle. */
  metricsListen?: { host: string; port: number };
  metricsFile?: string;
  /** Self-update's install root (versions/, current); default $FERRY_AGENT_INSTALL_ROOT or the start path. */
  installRoot?: string;
  /** Self-update limits, over $FERRY_AGENT_UPDATE_LIMITS. */
  updateLimits?: Partial<UpdateLimits>;
  /** Keep `mirrors` as the agent's configuration (run), or use them for this process only (poll). */
  persistMirrors?: boolean;
  /**
   * The enrolment token (`ferry mirror token create`), needed only until a mirror has enrolled this
   * agent; sent inside the signed enrolment request and never logged.
   */
  token?: string;
  /** How often the read-only doctor checks run for the heartbeat (default daily; also after a failed update). */
  doctorIntervalSec?: number;
}

export interface CycleResult {
  /** Set when this cycle's enrolment was refused by every mirror that answered (the last refusal). */
  enrolRefused?: { code: string; message: string };
  sync: SyncOutcome;
  apply: ApplyReport;
  sent: number;
  state: AgentState;
}

export const DEFAULT_POLL_SEC = 30;

const reasonOf = (o: SyncOutcome) => ('reason' in o ? o.reason : o.kind);

export async function loadOrInitState(o: AgentOptions): Promise<AgentState> {
  const existing = await readAgentState(o.stateDir);
  if (existing) {
    if (o.site && o.site !== existing.site) {
      throw new FerryError('USAGE', `${o.stateDir} belongs to site ${existing.site}, not ${o.site}`);
    }
    return {
      ...existing,
      ...(o.groups && o.groups.length > 0 && { groups: o.groups }),
      ...(o.mirrors.length > 0 && o.persistMirrors !== false && { mirrors: o.mirrors }),
    };
  }
  if (!o.trustPath || !o.site)
    throw new FerryError('USAGE', 'first run: --trust and --site are required to pin the trust root');
  const pinned = await readFile(o.trustPath);
  await mkdir(o.stateDir, { recursive: true, mode: 0o700 });
  loadPinnedRoot(pinned); // refuses a root that does not verify against itself
  if (o.mirrors.length === 0) throw new FerryError('USAGE', 'first run: --mirror is required');
  const state = initialState({
    site: o.site,
    groups: o.groups ?? [],
    mirrors: o.mirrors,
    pinnedRoot: pinned,
  });
  await writeAgentState(o.stateDir, state);
  return state;
}

export class Agent {
  private state!: AgentState;
  private identity!: AgentIdentity;
  private outbox!: AgentOutbox;
  private mirrors!: MirrorSet;
  private readonly bootAt: number;
  private readonly now: () => number;
  private pollIntervalSec: number;
  private timer: NodeJS.Timeout | undefined;
  private wake: (() => void) | undefined;
  private stopping = false;
  readonly metrics = agentMetrics();
  private metricsServer: Server | undefined;
  /** Self-update, when this process runs from an install root (versions/, current). */
  private updater: UpdateDriver | undefined;
  private installRoot: string | undefined;
  /** Releases `agent.lock`, held from init until the agent stops (see close). */
  private releaseLock: (() => Promise<void>) | undefined;

  private readonly o: AgentOptions;

  constructor(options: AgentOptions) {
    const o = { ...options, stateDir: resolve(options.stateDir) }; // scripts run from cwd /, so paths are absolute
    this.o = o;
    this.now = o.now ?? Date.now;
    this.bootAt = this.now();
    this.pollIntervalSec = o.pollIntervalSec ?? DEFAULT_POLL_SEC;
  }

  async init(): Promise<void> {
    this.state = await loadOrInitState(this.o);
    // One agent per state directory; `ferry agent doctor --fix` waits for none to hold it.
    try {
      this.releaseLock = await acquireLock(join(this.o.stateDir, 'agent.lock'), { timeoutMs: 0 });
    } catch (e) {
      throw new FerryError(
        'AGENT_RUNNING',
        `another agent runs on ${this.o.stateDir}: ${(e as Error).message}`,
        {
          cause: e,
        },
      );
    }
    await writeAgentState(this.o.stateDir, this.state);
    const mirrors = this.o.mirrors.length > 0 ? this.o.mirrors : this.state.mirrors;
    this.mirrors = new MirrorSet(mirrors, { baseBackoffMs: 5_000, maxBackoffMs: 300_000 });
    this.identity = await loadOrCreateIdentity(this.o.stateDir);
    this.outbox = await AgentOutbox.open(this.o.stateDir);
    const installRoot = this.o.installRoot ? resolve(this.o.installRoot) : installRootOf(process.argv[1]);
    this.installRoot = installRoot;
    if (installRoot) {
      this.updater = await UpdateDriver.open({
        stateDir: this.o.stateDir,
        installRoot,
        version: this.o.version,
        cacheDir: join(this.o.stateDir, 'cache'),
        log: this.o.log,
        now: this.now,
        timeoutMs: this.o.timeoutMs ?? 30_000,
        limits: { ...limitsFromEnv(), ...this.o.updateLimits },
        ...(this.o.httpLimits && { httpLimits: this.o.httpLimits }),
      });
      await this.updater.onStart();
    }
    if (this.o.metricsListen) {
      this.metricsServer = await serveMetrics(
        this.metrics,
        this.o.metricsListen.host,
        this.o.metricsListen.port,
      );
    }
  }

  get current(): AgentState {
    return this.state;
  }

  /** One full cycle; state is persisted after every step, so a kill -9 loses at most the step under way. */
  async cycle(): Promise<CycleResult> {
    const { log } = this.o;
    const m = this.metrics;
    const timeoutMs = this.o.timeoutMs ?? 30_000;
    const cacheDir = join(this.o.stateDir, 'cache');
    const enrolRefused = this.state.agentId === null ? await this.tryEnroll(timeoutMs) : undefined;

    const t0 = performance.now();
    const onBytes = (_have: number, _total: number, n: number) =>
      m.inc('ferry_agent_bytes_fetched_total', {}, n);
    const limits = this.o.httpLimits;
    const synced = await syncOnce(
      { cacheDir, mirrors: this.mirrors, log, now: this.now, timeoutMs, onBytes, ...(limits && { limits }) },
      this.state,
    );
    m.set('ferry_agent_poll_duration_seconds', (performance.now() - t0) / 1000);
    m.inc('ferry_agent_polls_total', { outcome: synced.outcome.kind });
    if (synced.outcome.kind === 'unreachable' || synced.outcome.kind === 'refused')
      m.inc('ferry_agent_polls_failed_total');
    await this.save(synced.state);
    // A disk too full for what the manifest needs is recorded and reported (cleared by the next
    // sync that gets through); the last verified state keeps being applied either way.
    const full = synced.outcome.kind === 'refused' && synced.outcome.code === 'STORAGE_FULL';
    const through = synced.outcome.kind === 'updated' || synced.outcome.kind === 'unchanged';
    const shortage =
      full || through
        ? await recordShortage(
            this.o.stateDir,
            cacheDir,
            full ? { message: reasonOf(synced.outcome) } : null,
            this.now(),
          )
        : await readShortage(this.o.stateDir);
    m.set('ferry_agent_storage_full', shortage ? 1 : 0);

    // The site's run-now requests (unsigned advice, read against the signed policy in applyOnce).
    const runNow =
      this.state.agentId !== null && synced.outcome.kind !== 'unreachable'
        ? await askRunNow({ mirrors: this.mirrors, agentId: this.state.agentId, timeoutMs, now: this.now })
        : [];
    const applied = await applyOnce(
      {
        cacheDir,
        log,
        now: this.now,
        allowlist: this.o.allowlist ?? ['sh', 'bash'],
        enforceFiles: this.o.enforceFiles ?? true,
        bootAt: this.bootAt,
        runNow,
      },
      this.state,
    );
    await this.save(applied.state);
    try {
      await recordPolicyProblems(this.o.stateDir, applied.report.problems, log, this.now());
    } catch (e) {
      log.warn('policy.problems_unrecorded', { error: e }); // still logged and reported home
    }
    if (applied.report.pollIntervalSec && this.o.pollIntervalSec === undefined) {
      this.pollIntervalSec = applied.report.pollIntervalSec;
    }
    for (const s of applied.report.scripts) {
      m.inc('ferry_agent_scripts_total', {
        result: s.refused ? 'refused' : s.exitCode === 0 ? 'ok' : 'failed',
      });
    }

    const rctx = {
      identity: this.identity,
      outbox: this.outbox,
      log,
      now: this.now,
      version: this.o.version,
      timeoutMs,
      ...(limits && { limits }),
      ...(this.o.token !== undefined && { token: this.o.token }),
    };
    const updateFailed = this.updater ? await this.selfUpdate(synced.outcome.kind, rctx) : false;
    const extraDrift = shortage ? [shortageDrift(shortage)] : [];
    const doctor = await this.diagnose(updateFailed);
    if (doctor) {
      // A heartbeat of its own, before this cycle's: no results ride with it, so a mirror that
      // predates the field and refuses it loses nothing else (docs/decisions.md).
      await this.save({ ...this.state, counter: this.state.counter + 1 });
      await queueHeartbeat(rctx, this.state, { ...applied.report, scripts: [] }, extraDrift, doctor);
    }
    await this.save({ ...this.state, counter: this.state.counter + 1 }); // reserve the counter first
    await queueHeartbeat(rctx, this.state, applied.report, extraDrift);
    const sent =
      synced.outcome.kind === 'unreachable' ? 0 : await drainOutbox(rctx, this.mirrors, this.state);

    const disconnectedSec =
      this.state.disconnectedSince === null
        ? 0
        : Math.round((this.now() - this.state.disconnectedSince) / 1000);
    m.set('ferry_agent_outbox_entries', this.outbox.size.entries);
    m.set('ferry_agent_disconnected_seconds', disconnectedSec);
    m.set('ferry_agent_active_sequence', this.state.active?.sequence ?? 0);
    if (this.o.metricsFile) await writeMetricsFile(m, this.o.metricsFile);
    log.info('agent.cycle', {
      sync: synced.outcome.kind,
      sequence: this.state.active?.sequence ?? null,
      scripts: applied.report.scripts.length,
      drift: applied.report.files.filter((f) => f.status !== 'ok').length,
      policyProblems: applied.report.problems.length,
      outbox: this.outbox.size.entries,
      sent,
      disconnectedSec,
      ...(shortage && { storage: shortage.code }),
    });
    return {
      ...(enrolRefused && this.state.agentId === null && { enrolRefused }),
      sync: synced.outcome,
      apply: applied.report,
      sent,
      state: this.state,
    };
  }

  /**
   * The doctor's read-only checks, when due (daily by default, and after a failed update): the new
   * summary, to go home, or undefined when none was due. A failure here never stops the cycle.
   */
  private async diagnose(updateFailed: boolean): Promise<DoctorSummary | undefined> {
    const last = await readLastSummary(this.o.stateDir);
    const interval = this.o.doctorIntervalSec ?? DEFAULT_DOCTOR_INTERVAL_SEC;
    if (!doctorDue(last, this.now(), interval, updateFailed)) return undefined;
    try {
      const report = await runDoctor({
        stateDir: this.o.stateDir,
        installRoot: this.installRoot,
        systemRoot: '/',
        allowlist: this.o.allowlist ?? ['sh', 'bash'],
        deep: false,
        inAgent: true,
        timeoutMs: 5_000,
        now: this.now,
      });
      const summary = summarize(report);
      await writeLastSummary(this.o.stateDir, summary);
      this.o.log.info('doctor.ran', {
        ok: summary.ok,
        warn: summary.warn,
        fail: summary.fail,
        failing: summary.problems.filter((p) => p.status === 'fail').map((p) => p.id),
        ...(updateFailed && { after: 'update-failed' }),
      });
      return summary;
    } catch (e) {
      this.o.log.warn('doctor.failed', { error: e });
      return undefined;
    }
  }

  /**
   * After apply, before the heartbeat: health checks, soak, a new update; queues its reports.
   * True when one of them says an update failed or was rolled back.
   */
  private async selfUpdate(
    sync: SyncOutcome['kind'],
    rctx: Parameters<typeof queueUpdateReports>[0],
  ): Promise<boolean> {
    const u = this.updater!;
    try {
      await u.afterCycle({
        manifest: activeManifest(this.state),
        payloadDigest: this.state.active?.payloadDigest ?? null,
        agentId: this.state.agentId,
        groups: this.state.groups,
        mirrors: this.mirrors,
        sync,
      });
    } catch (e) {
      this.o.log.error('update.failed', { error: e });
    }
    const reports = u.takeReports();
    if (reports.length === 0) return false;
    await this.save({ ...this.state, counter: this.state.counter + 1 });
    if (await queueUpdateReports(rctx, this.state, reports)) await u.markReported(reports.length);
    return reports.some((r) => r.outcome === 'failed' || r.outcome === 'rolled-back');
  }

  /** Enrols with the first mirror that admits this agent; answers the last refusal when none did. */
  private async tryEnroll(timeoutMs: number): Promise<{ code: string; message: string } | undefined> {
    let refused: { code: string; message: string } | undefined;
    for (const mirror of this.mirrors.candidates(this.now())) {
      try {
        const agentId = await enroll(mirror, this.identity, {
          hostname: hostnameOf(),
          platform: platformOf(),
          groups: this.state.groups,
          timeoutMs,
          ...(this.o.token !== undefined && { token: this.o.token }),
        });
        await this.save({ ...this.state, agentId });
        this.o.log.info('agent.enrolled', { mirror, agentId });
        return undefined;
      } catch (e) {
        const message = (e as Error).message;
        if (e instanceof EnrolRefusedError) refused = { code: e.code, message };
        this.o.log.warn('agent.enroll_failed', {
          mirror,
          ...(e instanceof EnrolRefusedError && { code: e.code }),
          reason: message,
        });
      }
    }
    return refused;
  }

  private async save(next: AgentState): Promise<void> {
    this.state = next;
    await writeAgentState(this.o.stateDir, next);
  }

  /** Runs cycles until stop(); SIGUSR1 (or pollNow) cuts the wait short. */
  async run(): Promise<void> {
    const pidFile = join(this.o.stateDir, 'agent.pid');
    await writeFile(pidFile, `${process.pid}\n`);
    try {
      while (!this.stopping) {
        try {
          await this.cycle();
        } catch (e) {
          this.o.log.error('agent.cycle_failed', { error: e });
        }
        if (this.stopping) break;
        const base = this.pollIntervalSec * 1000;
        const wait = base * (0.9 + Math.random() * 0.2); // ±10 % jitter: a site's agents do not poll in step
        await new Promise<void>((resolve) => {
          this.wake = resolve;
          this.timer = setTimeout(resolve, wait);
        });
      }
    } finally {
      this.updater?.stop();
      await rm(pidFile, { force: true });
      this.metricsServer?.close();
      await this.close();
    }
  }

  /** Lets go of the state directory (the lock init took); run() does this when it ends. */
  async close(): Promise<void> {
    const release = this.releaseLock;
    this.releaseLock = undefined;
    await release?.();
  }

  pollNow(): void {
    if (this.timer) clearTimeout(this.timer);
    this.wake?.();
  }

  stop(): void {
    this.stopping = true;
    this.pollNow();
  }
}
