/**
 * The I/O side of agent self-update: feeds the pure machine (machine.ts) with
 * what happened and performs the actions it returns, persisting the machine
 * state atomically (update.json under the state directory) BEFORE acting.
 *
 *   <install>/versions/<version>/ferry-agent   each installed agent
 *   <install>/current → versions/<version>     what the supervisor starts
 *   <state>/pending.json                       swapped, not yet committed
 *   <state>/pending.{previous,max}             for the prestart script, written before pending.json
 *   <state>/pending.attempts                   starts since the swap, counted by the prestart script
 *   <state>/pending.rolledback                 the prestart script switched `current` back (reason)
 *   <state>/update.json                        machine state, bad versions, unsent reports
 *
 * The install root is $FERRY_AGENT_INSTALL_ROOT, else derived from the path the
 * agent was started by (<root>/current/ferry-agent); an agent started any other
 * way (e.g. `ferry agent run`) does not self-update.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, copyFile, mkdir, open, readFile, readlink, rename, rm, symlink } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { fsyncDir, writeFileAtomic } from '../../platform/fsx.js';
import type { Logger } from '../../platform/log.js';
import type { Artifact, Manifest } from '../../core/manifest.js';
import { blobCachePath as blobPath, fetchBlob, type MirrorSet } from '../fetch.js';
import { readAgentState } from '../state.js';
import {
  initialUpdateState,
  step,
  type PendingRecord,
  type Report,
  type UpdateAction,
  type UpdateEvent,
  type UpdateLimits,
  type UpdateState,
} from './machine.js';
import { targetVersion } from './policy.js';

/** Written by the prestart script (systemd/ferry-agent-prestart.sh) while an update is pending. */
const PENDING_COUNTER_FILES = ['pending.attempts', 'pending.rolledback'] as const;

/** The process exits with this code after a swap or a rollback, so the supervisor starts `current`. */
export const UPDATE_EXIT_CODE = 75;

/** What goes home in a heartbeat's results as `{update: …}`. */
export interface UpdateReport {
  outcome: Report['outcome'] | 'refused';
  version: string;
  reason: string;
  phase?: string;
  code?: string;
  at: number;
}

export interface UpdateFile {
  format: 'ferry.agent-update/v1';
  machine: UpdateState;
  badVersions: string[];
  unreported: UpdateReport[];
  /** `payloadDigest:code` of the last refusal reported, so one manifest is reported once. */
  lastRefusal: string | null;
}

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

export function platformTag(): string {
  const os = process.platform === 'win32' ? 'windows' : process.platform;
  return `${os}-${process.arch}`;
}

/** Where versions/ and current live, or undefined when this process was not started from that layout. */
export function installRootOf(argv1: string | undefined, env = process.env): string | undefined {
  if (env.FERRY_AGENT_INSTALL_ROOT) return resolve(env.FERRY_AGENT_INSTALL_ROOT);
  if (!argv1 || basename(argv1) !== 'ferry-agent') return undefined;
  const dir = dirname(resolve(argv1));
  if (basename(dir) === 'current') return dirname(dir);
  if (basename(dirname(dir)) === 'versions') return dirname(dirname(dir));
  return undefined;
}

/** Limits from $FERRY_AGENT_UPDATE_LIMITS (JSON, e.g. {"soakMs":1000}); numbers only. */
export function limitsFromEnv(env = process.env): Partial<UpdateLimits> {
  const text = env.FERRY_AGENT_UPDATE_LIMITS;
  if (!text) return {};
  const v = JSON.parse(text) as Record<string, unknown>;
  const out: Partial<UpdateLimits> = {};
  for (const k of ['maxAttempts', 'selfTestMs', 'healthMs', 'soakMs'] as const) {
    const n = v[k];
    if (typeof n === 'number' && Number.isFinite(n) && n >= 0) out[k] = n;
  }
  return out;
}

/** Exists for crash tests (test/agent-update-crash.test.ts): FERRY_CRASH_AT=<phase> dies here like a power cut. */
const crashPoint = (phase: string): void => {
  if (process.env.FERRY_CRASH_AT === phase) process.kill(process.pid, 'SIGKILL');
};

const sha256File = async (p: string) =>
  createHash('sha256')
    .update(await readFile(p))
    .digest('hex');

export class UpdateDriver {
  private file!: UpdateFile;
  private target: Artifact | undefined;
  private ticker: NodeJS.Timeout | undefined;
  private chain: Promise<void> = Promise.resolve();
  private mirrors: MirrorSet | undefined;
  private readonly o: DriverOptions;
  private readonly exit: (code: number) => void;

  private constructor(o: DriverOptions) {
    this.o = o;
    this.exit = o.exit ?? ((code: number) => process.exit(code));
  }

  static async open(o: DriverOptions): Promise<UpdateDriver> {
    const d = new UpdateDriver(o);
    let stored: UpdateFile | undefined;
    try {
      stored = JSON.parse(await readFile(d.path('update.json'), 'utf8')) as UpdateFile;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    d.file = stored ?? {
      format: 'ferry.agent-update/v1',
      machine: initialUpdateState(),
      badVersions: [],
      unreported: [],
      lastRefusal: null,
    };
    // limits are configuration, not state: this start's settings win
    d.file.machine = { ...d.file.machine, limits: { ...d.file.machine.limits, ...o.limits } };
    return d;
  }

  get state(): UpdateState {
    return this.file.machine;
  }

  get badVersions(): readonly string[] {
    return this.file.badVersions;
  }

  private path(name: string): string {
    return join(this.o.stateDir, name);
  }

  private versionDir(v: string): string {
    return join(this.o.installRoot, 'versions', v);
  }

  private async persist(): Promise<void> {
    await writeFileAtomic(this.path('update.json'), JSON.stringify(this.file) + '\n', { mode: 0o600 });
  }

  private serial(f: () => Promise<void>): Promise<void> {
    const p = this.chain.then(f);
    this.chain = p.catch(() => undefined);
    return p;
  }

  /** Call once per start, before the first cycle: counts the boot and starts health checking. */
  onStart(): Promise<void> {
    return this.serial(async () => {
      const pending = await readFile(this.path('pending.json'), 'utf8').catch(() => undefined);
      if (pending !== undefined) this.o.log.info('update.pending_found', { pending: JSON.parse(pending) });
      const boot = pending === undefined ? {} : await this.bootRecord();
      if (boot.rolledBack !== undefined) {
        this.o.log.warn('update.boot_rolled_back', { reason: boot.rolledBack });
        await this.feed({ type: 'boot-rolled-back', reason: boot.rolledBack });
        await this.removePendingFiles(); // also when the machine had nothing in flight
      }
      await this.feed({ type: 'started', version: this.o.version, attempts: boot.attempts });
      // A crash between saving a final phase and removing the record leaves pending files
      // behind; a node no longer in an update must not keep them (the prestart script counts them).
      const inUpdate = ['swapping', 'pending', 'health-checking'].includes(this.file.machine.phase);
      if (!inUpdate && pending !== undefined) await this.removePendingFiles();
    });
  }

  /** After sync and apply: health checks, soak, and deciding and performing a new update. */
  afterCycle(view: CycleView): Promise<void> {
    return this.serial(async () => {
      this.mirrors = view.mirrors;
      const s = this.file.machine;
      if (s.phase === 'health-checking' && s.soakUntil === null) {
        const reason = await this.healthProblem(view);
        await this.feed(reason === undefined ? { type: 'health-ok' } : { type: 'health-failed', reason });
      }
      await this.feed({ type: 'tick' });
      const phase = this.file.machine.phase;
      if (phase !== 'idle' && phase !== 'committed' && phase !== 'rolled-back') return;
      if (!view.manifest || view.payloadDigest === null) return;
      const d = targetVersion({
        manifest: view.manifest,
        payloadDigest: view.payloadDigest,
        platform: this.o.platform ?? platformTag(),
        agentId: view.agentId,
        groups: view.groups,
        running: this.o.version,
        highestCommitted: this.file.machine.highestCommitted,
        badVersions: this.file.badVersions,
      });
      if (d.kind === 'stay') {
        this.o.log.debug('update.stay', { reason: d.reason });
        return;
      }
      if (d.kind === 'refuse') {
        const key = `${view.payloadDigest}:${d.code}`;
        if (this.file.lastRefusal === key) return;
        this.o.log.warn('update.refused', { code: d.code, reason: d.reason });
        this.file.lastRefusal = key;
        this.addReport({
          outcome: 'refused',
          version: view.manifest.rollout?.agent ?? '',
          reason: d.reason,
          code: d.code,
        });
        await this.persist();
        return;
      }
      this.target = d.artifact;
      this.o.log.info('update.begin', {
        version: d.version,
        from: this.o.version,
        source: d.source,
        authorisedDowngrade: d.authorisedDowngrade,
      });
      await this.feed({
        type: 'begin',
        version: d.version,
        from: this.o.version,
        payloadDigest: view.payloadDigest,
      });
    });
  }

  /** Reports not yet queued for telemetry. */
  takeReports(): UpdateReport[] {
    return [...this.file.unreported];
  }

  /** The first `n` reports are in the outbox now. */
  markReported(n: number): Promise<void> {
    return this.serial(async () => {
      this.file.unreported = this.file.unreported.slice(n);
      await this.persist();
    });
  }

  stop(): void {
    if (this.ticker) clearInterval(this.ticker);
    this.ticker = undefined;
  }

  private addReport(r: Omit<UpdateReport, 'at'>): void {
    this.file.unreported.push({ ...r, at: this.o.now() });
  }

  private async healthProblem(view: CycleView): Promise<string | undefined> {
    try {
      if (!(await readAgentState(this.o.stateDir))) return 'state.json is missing';
    } catch (e) {
      return `state unreadable: ${(e as Error).message}`;
    }
    // a disconnected site is normal for ferry: an unreachable mirror does not fail the update
    if (view.sync === 'unreachable') this.o.log.warn('update.health_disconnected', {});
    return undefined; // the loop is alive: this is called at the end of a completed cycle
  }

  /** Steps the machine with `first` and every event its actions lead to. */
  private async feed(first: UpdateEvent): Promise<void> {
    const queue: UpdateEvent[] = [first];
    for (let e = queue.shift(); e !== undefined; e = queue.shift()) {
      const r = step(this.file.machine, e, this.o.now());
      if (r.state !== this.file.machine) {
        if (r.state.phase === 'committed') crashPoint('before-commit');
        this.file.machine = r.state;
        // Bookkeeping is part of the same atomic write as the phase: a crash right after it can
        // neither forget a bad version (and retry it) nor lose the report of what happened.
        for (const a of r.actions) this.book(a);
        await this.persist(); // recorded before anything is done
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

  /** Applies a bookkeeping action to the update file in memory; true when something changed. */
  private booked = new WeakSet<UpdateAction>();
  private book(a: UpdateAction): boolean {
    if (this.booked.has(a)) return false;
    if (a[0] === 'remember-bad') {
      this.booked.add(a);
      if (!this.file.badVersions.includes(a[2])) this.file.badVersions.push(a[2]);
      return true;
    }
    if (a[0] === 'report') {
      this.booked.add(a);
      this.o.log.info('update.report', { ...a[1] });
      this.addReport(a[1]);
      return true;
    }
    return false;
  }

  private async act(a: UpdateAction): Promise<UpdateEvent | undefined> {
    const { log } = this.o;
    if (a[0] !== 'ignored') log.info('update.action', { action: a[0], phase: this.file.machine.phase });
    switch (a[0]) {
      case 'download': {
        const t = this.target;
        if (!t || t.version !== a[1] || !this.mirrors)
          return { type: 'download-failed', reason: 'no artifact in hand' };
        try {
          await fetchBlob(this.mirrors, t, this.o.cacheDir, { timeoutMs: this.o.timeoutMs, log });
          crashPoint('downloaded');
          return { type: 'download-done' };
        } catch (e) {
          return { type: 'download-failed', reason: (e as Error).message };
        }
      }
      case 'verify': {
        const t = this.target!;
        const got = await sha256File(blobPath(this.o.cacheDir, t.sha256)).catch((e: Error) => e.message);
        crashPoint('verified');
        return got === t.sha256
          ? { type: 'verify-ok' }
          : { type: 'verify-failed', reason: `sha256 ${got} is not ${t.sha256}` };
      }
      case 'stage':
        try {
          await this.stage(a[1], blobPath(this.o.cacheDir, this.target!.sha256));
          return { type: 'stage-done' };
        } catch (e) {
          // a full disk or a read-only install root: abandon cleanly, keep running what we run
          await rm(this.versionDir(a[1]), { recursive: true, force: true }).catch(() => undefined);
          const code = (e as NodeJS.ErrnoException).code ?? (e as { code?: string }).code ?? 'IO_ERROR';
          return { type: 'stage-failed', reason: `${code}: ${(e as Error).message}` };
        }
      case 'self-test':
        return this.selfTest(a[1]);
      case 'discard-staged':
        if (a[1] !== this.o.version && (await this.currentVersion()) !== a[1])
          await rm(this.versionDir(a[1]), { recursive: true, force: true });
        return undefined;
      case 'write-pending-record':
        await this.writePendingCompanions(a[1]);
        await writeFileAtomic(this.path('pending.json'), JSON.stringify(a[1]) + '\n', { mode: 0o600 });
        crashPoint('pending-written');
        return undefined;
      case 'swap':
        await this.pointCurrentAt(a[1]);
        crashPoint('swapped');
        return { type: 'swapped' };
      case 'switch-current-to':
        await this.pointCurrentAt(a[1]);
        crashPoint('rollback-switched');
        return undefined;
      case 'exit':
        log.info('update.exit', { code: UPDATE_EXIT_CODE, phase: this.file.machine.phase });
        this.stop();
        this.exit(UPDATE_EXIT_CODE);
        return undefined;
      case 'run-health-checks':
        this.startTicker();
        return undefined;
      case 'remove-pending-record':
        await this.removePendingFiles();
        return undefined;
      case 'keep-previous':
        return undefined; // versions/<previous> stays: it is the next rollback target
      case 'remember-bad':
      case 'report':
        // applied by book(), in the same write as the phase change (or now, for a step without one)
        if (this.book(a)) await this.persist();
        return undefined;
      case 'ignored':
        return undefined;
    }
  }

  /** Deadlines and the soak run on the clock, whether or not cycles complete. */
  private startTicker(): void {
    if (this.ticker) return;
    const every = Math.max(50, Math.min(1000, this.file.machine.limits.soakMs / 4));
    this.ticker = setInterval(() => {
      void this.serial(() => this.feed({ type: 'tick' })).catch((e: unknown) =>
        this.o.log.error('update.tick_failed', { error: e }),
      );
    }, every);
  }

  private async stage(v: string, blob: string): Promise<void> {
    const dir = this.versionDir(v);
    await mkdir(dir, { recursive: true });
    const tmp = join(dir, 'ferry-agent.tmp');
    await rm(tmp, { force: true });
    await copyFile(blob, tmp);
    crashPoint('stage-tmp');
    await chmod(tmp, 0o755);
    const fh = await open(tmp, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, join(dir, 'ferry-agent'));
    await fsyncDir(dir);
    crashPoint('staged');
  }

  private selfTest(v: string): Promise<UpdateEvent> {
    const bin = join(this.versionDir(v), 'ferry-agent');
    const ms = this.file.machine.limits.selfTestMs;
    return new Promise((done) => {
      execFile(
        bin,
        ['self-test', '--state', this.o.stateDir],
        { timeout: ms, killSignal: 'SIGKILL', cwd: '/' },
        (err, stdout, stderr) => {
          if (!err) {
            this.o.log.info('update.self_test_ok', { version: v, out: stdout.trim() });
            crashPoint('self-tested');
            done({ type: 'self-test-ok' });
          } else if ((err as { killed?: boolean }).killed) done({ type: 'self-test-timeout' });
          else done({ type: 'self-test-failed', reason: (stderr.trim() || err.message).slice(-500) });
        },
      );
    });
  }

  private async currentVersion(): Promise<string | undefined> {
    const link = await readlink(join(this.o.installRoot, 'current')).catch(() => undefined);
    return link === undefined ? undefined : basename(link);
  }

  /** What systemd/ferry-agent-prestart.sh reads; written before pending.json, which is what it looks for. */
  private async writePendingCompanions(r: PendingRecord): Promise<void> {
    for (const n of PENDING_COUNTER_FILES) await rm(this.path(n), { force: true });
    const opts = { mode: 0o600 };
    await writeFileAtomic(this.path('pending.previous'), `${this.versionDir(r.previous)}\n`, opts);
    await writeFileAtomic(this.path('pending.max'), `${this.file.machine.limits.maxAttempts}\n`, opts);
  }

  /** pending.json first: without it the prestart script does nothing. */
  private async removePendingFiles(): Promise<void> {
    await rm(this.path('pending.json'), { force: true });
    for (const n of [...PENDING_COUNTER_FILES, 'pending.previous', 'pending.max'])
      await rm(this.path(n), { force: true });
    await fsyncDir(this.o.stateDir);
  }

  /** The prestart script's count of starts since the swap, and its rollback, if it made one. */
  private async bootRecord(): Promise<{ attempts?: number; rolledBack?: string }> {
    const read = (n: string) =>
      readFile(this.path(n), 'utf8').then(
        (t) => t.trim(),
        () => undefined,
      );
    const attempts = await read('pending.attempts');
    const rolledBack = await read('pending.rolledback');
    return {
      ...(attempts !== undefined && /^\d+$/.test(attempts) && { attempts: Number(attempts) }),
      ...(rolledBack !== undefined && { rolledBack: rolledBack || 'rolled back by the prestart script' }),
    };
  }

  /** current.tmp → versions/<v>, renamed over current: the switch is atomic. */
  private async pointCurrentAt(v: string): Promise<void> {
    const root = this.o.installRoot;
    const tmp = join(root, 'current.tmp');
    await rm(tmp, { force: true });
    await symlink(join('versions', v), tmp);
    await rename(tmp, join(root, 'current'));
    await fsyncDir(root);
    this.o.log.info('update.current', { version: v });
  }
}
