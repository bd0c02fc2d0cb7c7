/**
 * The I/O side of agent self-update: feeds the pure machine (machine.ts) with
 * what happened and performs the actions it returns, persisting the machine
 * state atomically (update.json) BEFORE acting. It only sequences and records:
 * the files under the state directory are update-file.ts, the install layout
 * (versions/, current) is install.ts, and how each step is done is steps.ts.
 */
import type { Logger } from '../../platform/log.js';
import type { Artifact, Manifest } from '../../core/manifest.js';
import type { MirrorSet } from '../fetch.js';
import { crashPoint } from '../../platform/crash.js';
import { currentVersion, platformTag, removeVersion, versionDir } from './install.js';
import { step, type UpdateAction, type UpdateEvent, type UpdateLimits, type UpdateState } from './machine.js';
import { targetVersion } from './version-choice.js';
import { askRolloutGate } from './rollout-gate.js';
import { compareSemver, isSemver } from '../../core/semver.js';
import * as steps from './steps.js';
import {
  readBootRecord,
  readPendingRecord,
  removePendingFiles,
  UpdateRecord,
  writePendingRecord,
  type UpdateReport,
} from './update-file.js';
import type { ClientLimits } from '../../platform/http/limits.js';

/** The process exits with this code after a swap or a rollback, so the supervisor starts `current`. */
export const UPDATE_EXIT_CODE = 75;

export interface DriverOptions {
  stateDir: string;
  installRoot: string;
  /** The version of the binary running now. */
  version: string;
  cacheDir: string;
  log: Logger;
  now: () => number;
  timeoutMs: number;
  limits?: Partial<UpdateLimits>;
  /** HTTP deadlines, floor rate and disk reserve for downloads ($FERRY_AGENT_HTTP_LIMITS). */
  httpLimits?: Partial<ClientLimits>;
  /** e.g. linux-x64 */
  platform?: string;
  exit?: (code: number) => void;
}

export interface CycleView {
  manifest: Manifest | undefined;
  payloadDigest: string | null;
  agentId: string | null;
  groups: readonly string[];
  mirrors: MirrorSet;
  /** The sync outcome of the cycle just completed. */
  sync: string;
}

export class UpdateDriver {
  private rec!: UpdateRecord;
  private target: Artifact | undefined;
  private ticker: NodeJS.Timeout | undefined;
  private chain: Promise<void> = Promise.resolve();
  private mirrors: MirrorSet | undefined;
  private readonly o: DriverOptions;
  private readonly steps: steps.StepContext;
  private readonly exit: (code: number) => void;

  private constructor(o: DriverOptions) {
    this.o = o;
    this.steps = {
      installRoot: o.installRoot,
      stateDir: o.stateDir,
      cacheDir: o.cacheDir,
      log: o.log,
      timeoutMs: o.timeoutMs,
      ...(o.httpLimits && { httpLimits: o.httpLimits }),
    };
    this.exit = o.exit ?? ((code: number) => process.exit(code));
  }

  static async open(o: DriverOptions): Promise<UpdateDriver> {
    const d = new UpdateDriver(o);
    d.rec = await UpdateRecord.open(o.stateDir, o.limits, o.now, o.log);
    return d;
  }

  get state(): UpdateState {
    return this.rec.machine;
  }

  get badVersions(): readonly string[] {
    return this.rec.file.badVersions;
  }

  private serial(f: () => Promise<void>): Promise<void> {
    const p = this.chain.then(f);
    this.chain = p.catch(() => undefined);
    return p;
  }

  /** Call once per start, before the first cycle: counts the boot and starts health checking. */
  onStart(): Promise<void> {
    return this.serial(async () => {
      const { stateDir } = this.o;
      const pending = await readPendingRecord(stateDir);
      if (pending !== undefined) this.o.log.info('update.pending_found', { pending: JSON.parse(pending) });
      const boot = pending === undefined ? {} : await readBootRecord(stateDir);
      if (boot.rolledBack !== undefined) {
        this.o.log.warn('update.boot_rolled_back', { reason: boot.rolledBack });
        await this.feed({ type: 'boot-rolled-back', reason: boot.rolledBack });
        await removePendingFiles(stateDir); // also when the machine had nothing in flight
      }
      await this.feed({ type: 'started', version: this.o.version, attempts: boot.attempts });
      // A crash between saving a final phase and removing the record leaves pending files
      // behind; a node no longer in an update must not keep them (the prestart script counts them).
      const inUpdate = ['swapping', 'pending', 'health-checking'].includes(this.rec.machine.phase);
      if (!inUpdate && pending !== undefined) await removePendingFiles(stateDir);
    });
  }

  /** After sync and apply: health checks, soak, and deciding and performing a new update. */
  afterCycle(view: CycleView): Promise<void> {
    return this.serial(async () => {
      this.mirrors = view.mirrors;
      const s = this.rec.machine;
      if (s.phase === 'health-checking' && s.soakUntil === null) {
        const reason = await steps.healthProblem(this.steps, view.sync);
        await this.feed(reason === undefined ? { type: 'health-ok' } : { type: 'health-failed', reason });
      }
      await this.feed({ type: 'tick' });
      const phase = this.rec.machine.phase;
      if (phase !== 'idle' && phase !== 'committed' && phase !== 'rolled-back') return;
      if (!view.manifest || view.payloadDigest === null) return;
      if (await this.revertIfAsked(view)) return;
      const input = {
        manifest: view.manifest,
        payloadDigest: view.payloadDigest,
        platform: this.o.platform ?? platformTag(),
        agentId: view.agentId,
        groups: view.groups,
        running: this.o.version,
        highestCommitted: this.rec.machine.highestCommitted,
        badVersions: this.rec.file.badVersions,
      };
      let d = targetVersion(input);
      // The site's gate may hold back what the rollout offers; it cannot add anything (rollout-gate.ts).
      if (d.kind === 'update' && d.source === 'rollout' && view.agentId !== null) {
        const gate = await askRolloutGate({
          mirrors: view.mirrors,
          agentId: view.agentId,
          manifest: view.manifest,
          version: d.version,
          timeoutMs: this.o.timeoutMs,
          now: this.o.now,
        });
        this.o.log.debug('update.gate', { ...gate });
        if (!gate.allowed) d = targetVersion({ ...input, allowedByRollout: false });
      }
      if (d.kind === 'stay') {
        this.o.log.debug('update.stay', { reason: d.reason });
        return;
      }
      if (d.kind === 'refuse') {
        if (!this.rec.firstRefusal(`${view.payloadDigest}:${d.code}`)) return;
        this.o.log.warn('update.refused', { code: d.code, reason: d.reason });
        const version = view.manifest.rollout?.agent ?? '';
        this.rec.addReport({ outcome: 'refused', version, reason: d.reason, code: d.code });
        await this.rec.persist();
        return;
      }
      this.target = d.artifact;
      const { version, source, authorisedDowngrade } = d;
      this.o.log.info('update.begin', { version, from: this.o.version, source, authorisedDowngrade });
      await this.feed({ type: 'begin', version, from: this.o.version, payloadDigest: view.payloadDigest });
    });
  }

  /**
   * A rollout the site aborted with revert: a node on the rollout's version goes back to the version it
   * ran before, through the machine's own rollback (the version is remembered as bad under its manifest).
   * Bounded because the gate's answer is unsigned (docs/decisions.md): only from the signed rollout's
   * version, only to this node's own committed previous version, never below the signed floor.
   */
  private async revertIfAsked(view: CycleView): Promise<boolean> {
    const m = this.rec.machine;
    const manifest = view.manifest!;
    const target = manifest.rollout?.agent;
    if (m.phase !== 'committed' || target === undefined || view.agentId === null) return false;
    if (m.version !== target || this.o.version !== target || m.previous === null) return false;
    const floor = manifest.minAgentVersion;
    if (!isSemver(m.previous) || (floor !== undefined && compareSemver(m.previous, floor) < 0)) return false;
    const gate = await askRolloutGate({
      mirrors: view.mirrors,
      agentId: view.agentId,
      manifest,
      version: target,
      timeoutMs: this.o.timeoutMs,
      now: this.o.now,
    });
    if (gate.code !== 'REVERT') return false;
    this.o.log.warn('update.revert', { from: target, to: m.previous, reason: gate.reason });
    await this.feed({
      type: 'manual-rollback',
      reason: `the site aborted the rollout of ${target} with revert`,
    });
    return true;
  }

  /** Reports not yet queued for telemetry. */
  takeReports(): UpdateReport[] {
    return [...this.rec.file.unreported];
  }

  /** The first `n` reports are in the outbox now. */
  markReported(n: number): Promise<void> {
    return this.serial(async () => {
      this.rec.dropReported(n);
      await this.rec.persist();
    });
  }

  stop(): void {
    if (this.ticker) clearInterval(this.ticker);
    this.ticker = undefined;
  }

  /** Steps the machine with `first` and every event its actions lead to. */
  private async feed(first: UpdateEvent): Promise<void> {
    const queue: UpdateEvent[] = [first];
    for (let e = queue.shift(); e !== undefined; e = queue.shift()) {
      const r = step(this.rec.machine, e, this.o.now());
      if (r.state !== this.rec.machine) {
        if (r.state.phase === 'committed') crashPoint('before-commit');
        this.rec.machine = r.state;
        // Bookkeeping is part of the same atomic write as the phase: a crash right after it can
        // neither forget a bad version (and retry it) nor lose the report of what happened.
        for (const a of r.actions) this.rec.book(a);
        await this.rec.persist(); // recorded before anything is done
        if (e.type === 'started') crashPoint('boot-counted');
        if (r.state.phase === 'committed') crashPoint('committed');
        if (r.state.phase === 'rolled-back') crashPoint('rolling-back');
        if (r.state.phase !== 'health-checking') this.stop();
      }
      for (const a of r.actions) {
        const next = await this.act(a);
        if (next) queue.push(next);
      }
    }
  }

  private async act(a: UpdateAction): Promise<UpdateEvent | undefined> {
    const { log, installRoot } = this.o;
    if (a[0] !== 'ignored') log.info('update.action', { action: a[0], phase: this.rec.machine.phase });
    switch (a[0]) {
      case 'download':
        return steps.download(this.steps, this.target, a[1], this.mirrors);
      case 'verify':
        return steps.verify(this.steps, this.target!);
      case 'stage':
        return steps.stage(this.steps, this.target!, a[1]);
      case 'self-test':
        return steps.selfTest(this.steps, a[1], this.rec.machine.limits.selfTestMs);
      case 'discard-staged':
        if (a[1] !== this.o.version && (await currentVersion(installRoot)) !== a[1])
          await removeVersion(installRoot, a[1]);
        return undefined;
      case 'write-pending-record': {
        const previous = versionDir(installRoot, a[1].previous);
        await writePendingRecord(this.o.stateDir, a[1], previous, this.rec.machine.limits.maxAttempts);
        crashPoint('pending-written');
        return undefined;
      }
      case 'swap':
        await steps.switchCurrent(this.steps, a[1]);
        crashPoint('swapped');
        return { type: 'swapped' };
      case 'switch-current-to':
        await steps.switchCurrent(this.steps, a[1]);
        crashPoint('rollback-switched');
        return undefined;
      case 'exit':
        log.info('update.exit', { code: UPDATE_EXIT_CODE, phase: this.rec.machine.phase });
        this.stop();
        this.exit(UPDATE_EXIT_CODE);
        return undefined;
      case 'run-health-checks':
        this.startTicker();
        return undefined;
      case 'remove-pending-record':
        await removePendingFiles(this.o.stateDir);
        return undefined;
      case 'keep-previous':
        return undefined; // versions/<previous> stays: it is the next rollback target
      case 'remember-bad':
      case 'report':
        // booked in the same write as the phase change (or now, for a step without one)
        if (this.rec.book(a)) await this.rec.persist();
        return undefined;
      case 'ignored':
        return undefined;
    }
  }

  /** Deadlines and the soak run on the clock, whether or not cycles complete. */
  private startTicker(): void {
    if (this.ticker) return;
    const every = Math.max(50, Math.min(1000, this.rec.machine.limits.soakMs / 4));
    this.ticker = setInterval(() => {
      void this.serial(() => this.feed({ type: 'tick' })).catch((e: unknown) =>
        this.o.log.error('update.tick_failed', { error: e }),
      );
    }, every);
  }
}
