/**
 * The site's rollout gate at the mirror (docs/rollout.md): the pure gate
 * (core/rollout/gate.ts) fed with the active manifest's plan, the heartbeats
 * this mirror verified, the answers it gave agents, operator actions and the
 * clock; its state kept in `<data>/rollout/gate.json` (atomic writes), every
 * decision put in the outbox as a `rollout` record before the state that
 * follows from it is written. A crash between the two repeats a decision on
 * the next start rather than losing it.
 *
 * Heartbeats that only say "still here, same version" are folded: the gate
 * hears from an agent again once a quarter of its shortest deadline passed.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Heartbeat } from '../core/heartbeat.js';
import type { Manifest } from '../core/manifest.js';
import { answerFor, type RolloutAnswer } from '../core/rollout/answer.js';
import {
  DEFAULT_GATE_LIMITS,
  initialGate,
  step,
  tally,
  type GateEvent,
  type GateLimits,
  type GateState,
  type OperatorEvent,
  type OperatorRefusal,
  type Phase,
  type StepResult,
} from '../core/rollout/gate.js';
import { planOf, type Strategy } from '../core/rollout/plan.js';
import type { RolloutCounts } from '../core/telemetry.js';
import { CodedError } from '../core/errors.js';
import { writeFileAtomic } from '../platform/fsx.js';
import type { Logger } from '../platform/log.js';
import type { MirrorOutbox } from './outbox.js';
import { MirrorRunNow } from './run-now.js';

export interface RolloutSummary {
  id: string;
  manifestSequence: number;
  version: string;
  strategy: Strategy;
  phase: Phase;
  /** Highest wave open (0-based) and how many the plan has. */
  wave: number;
  waves: number;
  /** Each wave's share of the fleet, as the plan says. */
  percents: number[];
  perWave: RolloutCounts[];
  haltReason: string | null;
  revert: boolean;
}

/** An operator action the gate refused (core/rollout/gate.ts OPERATOR_REFUSALS). */
export class RolloutRefusedError extends CodedError<OperatorRefusal> {}

export interface MirrorRolloutOptions {
  dataDir: string;
  outbox: MirrorOutbox;
  log: Logger;
  now?: () => number;
  limits?: Partial<GateLimits>;
  /** The agents enrolled (and not revoked) here, given to the gate with each new plan. */
  roster?: () => Promise<{ agentId: string; groups: string[] }[]>;
  /**
   * Told of each decision this mirror makes — an operator's action the gate accepts, or a halt the
   * gate decides itself — before the state that follows is written, so it can go into the site log
   * (mirror/site-sync.ts). Decisions replayed from the site log are not told again.
   */
  onDecision?: (d: LocalDecision) => Promise<void>;
}

/** A decision made at this mirror, for the site log. */
export type LocalDecision =
  | { type: 'operator'; event: OperatorEvent; state: GateState }
  | { type: 'auto-halt'; rolloutId: string; reason: string };

/** A heartbeat's update outcomes (`results[].update`, agent/update/report.ts), read defensively. */
function updatesOf(hb: Heartbeat): { outcome: string; version: string }[] {
  const out: { outcome: string; version: string }[] = [];
  for (const r of hb.results) {
    const u = (r as { update?: unknown }).update;
    if (typeof u !== 'object' || u === null) continue;
    const { outcome, version } = u as Record<string, unknown>;
    if (typeof outcome === 'string' && typeof version === 'string') out.push({ outcome, version });
  }
  return out;
}

export class MirrorRollout {
  readonly path: string;
  readonly limits: GateLimits;
  private s: GateState = initialGate();
  private chain: Promise<unknown> = Promise.resolve();
  private readonly now: () => number;
  private lastWrite = 0;
  /** Operators' requests that agents run a policy script at their next poll (mirror/run-now.ts). */
  runNow!: MirrorRunNow;

  private constructor(private readonly o: MirrorRolloutOptions) {
    this.path = join(o.dataDir, 'rollout', 'gate.json');
    this.limits = { ...DEFAULT_GATE_LIMITS, ...o.limits };
    this.now = o.now ?? Date.now;
  }

  static async open(o: MirrorRolloutOptions): Promise<MirrorRollout> {
    const r = new MirrorRollout(o);
    await mkdir(join(o.dataDir, 'rollout'), { recursive: true });
    r.runNow = await MirrorRunNow.open({ dataDir: o.dataDir, log: o.log, now: r.now });
    const text = await readFile(r.path, 'utf8').catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return undefined;
      throw e;
    });
    if (text !== undefined) {
      const v = JSON.parse(text) as GateState;
      if (v.format !== 'ferry.rollout-gate/v1') throw new Error(`${r.path} is not a rollout gate state`);
      r.s = v;
    }
    return r;
  }

  get state(): GateState {
    return this.s;
  }

  private serial<T>(f: () => Promise<T>): Promise<T> {
    const p = this.chain.then(f);
    this.chain = p.catch(() => undefined);
    return p;
  }

  /** Steps the gate, records its decisions, then persists (always when `force` or something was decided). */
  private async feed(e: GateEvent, force = true, inPlace = false): Promise<StepResult> {
    // In place only for what agents report (the hot path, no copy of the fleet per batch); a decision
    // it leads to is recorded below before anything is persisted, and a failure to record it is
    // thrown to the heartbeat's sender, which sends again.
    const r = step(this.s, e, this.now(), this.limits, { inPlace });
    for (const a of r.actions) {
      // The gate's own halt (not an operator's or the site's halt event stepped in) is a decision too.
      if (a.info.event === 'halted' && a.info.actor === 'mirror' && e.type !== 'halt')
        await this.o.onDecision?.({
          type: 'auto-halt',
          rolloutId: a.info.rolloutId,
          reason: a.info.reason ?? '',
        });
      await this.o.outbox.appendRolloutEvent(a.info);
      this.o.log.info('rollout.decided', { ...a.info });
    }
    this.s = r.state;
    // The gate's clock is worth keeping only while a rollout moves (soak, silence deadlines): an idle
    // mirror writes nothing on a tick.
    const moving = r.state.run?.phase === 'running' || r.state.run?.phase === 'awaiting-approval';
    const due = moving && this.now() - this.lastWrite > this.limits.maxGapMs / 2;
    if (force || r.actions.length > 0 || due) await this.persist();
    return r;
  }

  private async persist(): Promise<void> {
    await writeFileAtomic(this.path, JSON.stringify(this.s));
    this.lastWrite = this.now();
  }

  /** Follows the active manifest: a new plan starts (or supersedes), the same plan re-signed continues. */
  adopt(manifest: Manifest | null): Promise<void> {
    return this.serial(async () => {
      const plan = manifest ? planOf(manifest) : null;
      const run = this.s.run;
      if (plan === null && run === null) return;
      if (plan && run && plan.id === run.plan.id && plan.manifestSequence === run.plan.manifestSequence)
        return;
      const roster = plan && plan.id !== run?.plan.id ? ((await this.o.roster?.()) ?? []) : [];
      await this.feed({ type: 'plan', plan, roster });
    });
  }

  /** The clock: soak, silence and vanishing happen between heartbeats too. */
  tick(): Promise<void> {
    return this.serial(async () => {
      await this.feed({ type: 'tick' }, false);
    });
  }

  /** Verified heartbeats, with the groups the mirror recorded for each agent at enrolment. */
  heartbeats(items: readonly { heartbeat: Heartbeat; groups: readonly string[] }[]): Promise<void> {
    const refresh = Math.min(this.limits.silentMs, this.limits.evidenceMs, this.limits.vanishMs) / 4;
    const events: Extract<GateEvent, { type: 'agent' }>[] = [];
    for (const { heartbeat: hb, groups } of items) {
      const updates = updatesOf(hb);
      const a = this.s.agents[hb.agentId];
      if (updates.length === 0 && a && a.running === hb.version && this.s.clock - a.seen < refresh) continue;
      events.push({ type: 'agent', agentId: hb.agentId, groups: [...groups], running: hb.version, updates });
    }
    if (events.length === 0) return Promise.resolve();
    return this.serial(async () => {
      // What an agent says decides nothing by itself: all but the batch's last event are folded in
      // place (no copy of the whole fleet per heartbeat), and the last one judges the waves once.
      const last = events.length - 1;
      let updates = false;
      for (const [i, e] of events.entries()) {
        updates ||= e.updates.length > 0;
        if (i < last)
          this.s = step(this.s, e, this.now(), this.limits, { inPlace: true, evaluate: false }).state;
      }
      // An update outcome is written before the heartbeat that carries it is acknowledged.
      await this.feed(events[last]!, updates, true);
    });
  }

  /**
   * The answer for one enrolled agent. A yes is remembered as the agent's start (for the silence
   * deadline); only the agent's own signed heartbeats say how it went.
   */
  answer(agentId: string, groups: readonly string[]): Promise<RolloutAnswer> {
    const a = answerFor(this.s, agentId, groups, this.now());
    const st = this.s.agents[agentId]?.status;
    if (!a.may || a.code === 'ALREADY_THERE' || st === 'updating') return Promise.resolve(a);
    return this.serial(async () => {
      await this.feed({ type: 'go', agentId, groups: [...groups] });
      return a;
    });
  }

  /**
   * The same answer without remembering a yes as the agent's start: for an agent that asks only for its
   * run-now requests (`?peek=1`), not because it chose the rollout's version.
   */
  peek(agentId: string, groups: readonly string[]): RolloutAnswer {
    return answerFor(this.s, agentId, groups, this.now());
  }

  /** An operator's action (serialisable, so a peer can replay it); a refusal is thrown, changing nothing. */
  operator(e: OperatorEvent): Promise<StepResult> {
    return this.serial(async () => {
      const r = step(this.s, e, this.now(), this.limits);
      if (r.refused) throw new RolloutRefusedError(r.refused.code, r.refused.message);
      await this.o.onDecision?.({ type: 'operator', event: e, state: this.s });
      return this.feed(e);
    });
  }

  /**
   * Steps in what the site decided elsewhere (`events` from core/rollout/merge.ts reconcile, asked of
   * the state as it is once this runs); an event the gate refuses changes nothing and is skipped.
   */
  converge(events: (s: GateState) => OperatorEvent[]): Promise<string[]> {
    return this.serial(async () => {
      const done: string[] = [];
      for (const e of events(this.s)) {
        const r = step(this.s, e, this.now(), this.limits);
        if (r.refused) continue;
        await this.feed(e);
        done.push(e.type);
      }
      return done;
    });
  }

  /** The current rollout, for the fleet view and `ferry mirror rollout status`; null when none. */
  rolloutSummary(): RolloutSummary | null {
    const run = this.s.run;
    if (!run) return null;
    return {
      id: run.plan.id,
      manifestSequence: run.plan.manifestSequence,
      version: run.plan.version,
      strategy: run.plan.strategy,
      phase: run.phase,
      wave: run.wave,
      waves: run.plan.waves.length,
      percents: run.plan.waves.map((w) => w.percent),
      perWave: tally(this.s, this.limits).map((t) => t.counts),
      haltReason: run.haltReason,
      revert: run.revert,
    };
  }
}
