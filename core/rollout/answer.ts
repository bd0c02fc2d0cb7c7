/**
 * The gate's answer to one agent (`GET /v1/rollout/:agentId`): whether it may
 * start the rollout's update now, and a stable reason code. Pure; the mirror
 * adds nothing but the agent's enrolment check. The answer is advice: the
 * agent applies every check of its own (signature, floor, pins, bad versions)
 * and only ever takes the version its signed manifest names.
 */
import type { GateState } from './gate.js';
import { pinOf } from './plan.js';
import { inWindow } from './window.js';
import { waveOf } from './wave.js';

export const ANSWER_CODES = [
  'GO', // the agent's wave is open, inside the window
  'UPDATE_NOW', // an operator let this agent go ahead of its wave
  'ALREADY_THERE', // it runs the rollout's version
  'NO_ROLLOUT', // the active manifest carries no rollout
  'PINNED', // a signed pin holds it; the rollout does not move it
  'BAD_VERSION', // it failed or rolled back this version; not offered again in this rollout
  'WAVE_NOT_OPEN', // its wave has not opened yet (soak, evidence or approval pending)
  'OUTSIDE_WINDOW', // its wave is open, but updates start only inside the maintenance window
  'HALTED', // the rollout is halted (by itself or an operator)
  'ABORTED', // the rollout was aborted; agents stay where they are
  'REVERT', // aborted with --revert: go back to the previous version
] as const;
export type AnswerCode = (typeof ANSWER_CODES)[number];

export interface RolloutAnswer {
  agentId: string;
  rolloutId: string | null;
  /** The version the rollout moves the site to. */
  version: string | null;
  wave: number | null;
  /** Whether the agent may start updating to `version` now. */
  may: boolean;
  code: AnswerCode;
  reason: string;
}

export function answerFor(
  s: GateState,
  agentId: string,
  groups: readonly string[],
  now: number,
): RolloutAnswer {
  const run = s.run;
  if (!run)
    return {
      agentId,
      rolloutId: null,
      version: null,
      wave: null,
      may: false,
      code: 'NO_ROLLOUT',
      reason: 'no rollout is under way',
    };
  const { plan } = run;
  const a = s.agents[agentId];
  const wave = a?.wave ?? waveOf(plan.id, agentId, plan.waves);
  const out = (may: boolean, code: AnswerCode, reason: string): RolloutAnswer => ({
    agentId,
    rolloutId: plan.id,
    version: plan.version,
    wave,
    may,
    code,
    reason,
  });
  const pin = pinOf(plan.pins, agentId, a?.groups ?? groups);
  if (pin !== undefined) return out(false, 'PINNED', `held at ${pin} by a signed pin`);
  if (run.phase === 'aborted') {
    if (run.revert && a?.running === plan.version)
      return out(false, 'REVERT', 'the rollout was aborted with revert: go back to the previous version');
    return out(false, 'ABORTED', 'the rollout was aborted; agents stay where they are');
  }
  if (a?.running === plan.version) return out(true, 'ALREADY_THERE', `already running ${plan.version}`);
  if (a && (a.status === 'failed' || a.status === 'rolledBack') && !a.forced)
    return out(false, 'BAD_VERSION', `${plan.version} failed on this agent in this rollout`);
  if (run.phase === 'halted') return out(false, 'HALTED', `halted: ${run.haltReason ?? ''}`);
  if (a?.forced) return out(true, 'UPDATE_NOW', 'an operator let this agent update now');
  if (wave > run.wave)
    return out(
      false,
      'WAVE_NOT_OPEN',
      run.phase === 'awaiting-approval'
        ? `wave ${wave} waits for an approval at the site`
        : `wave ${wave} is not open (open: 0-${run.wave})`,
    );
  if (!inWindow(plan.window, now)) return out(false, 'OUTSIDE_WINDOW', 'outside the maintenance window');
  return out(true, 'GO', `wave ${wave} is open`);
}
