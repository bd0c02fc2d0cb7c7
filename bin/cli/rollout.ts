/**
 * `ferry mirror rollout status|approve|halt|resume|abort` and `ferry mirror
 * update-now`: the site operator steers the rollout gate of the running mirror
 * through its control socket (mirror/rollout-control.ts). The gate lives in the
 * serving process, so these need it running; each action is recorded in the
 * outbox and goes home with the telemetry.
 */
import { userInfo } from 'node:os';
import { CodedError } from '../../core/errors.js';
import { callControl } from '../../mirror/control.js';
import type { RolloutSummary } from '../../mirror/rollout.js';
import { jsonOption, printJson, str, type Command, type Parsed } from './common.js';

async function ask(dataDir: string, method: 'GET' | 'POST', route: string, body?: Record<string, unknown>) {
  const answer = await callControl(dataDir, method, route, body);
  if (!answer)
    throw new CodedError(
      'MIRROR_NOT_RUNNING',
      `no ferry mirror serve answers on ${dataDir}'s control socket; the rollout gate runs in the serving mirror`,
    );
  if (!answer.ok) throw new CodedError(answer.code ?? 'INTERNAL', answer.message ?? 'the mirror refused');
  return answer;
}

function actorOf(p: Parsed): string {
  const given = str(p, 'actor', false);
  if (given) return given;
  try {
    return userInfo().username || 'operator';
  } catch {
    return 'operator';
  }
}

export function summaryLines(r: RolloutSummary | null): string[] {
  if (!r) return ['no rollout: the active manifest carries none'];
  const lines = [
    `rollout ${r.id.slice(0, 12)}  agent ${r.version}  ${r.strategy}  ${r.phase.toUpperCase()}  wave ${r.wave + 1}/${r.waves}  (manifest ${r.manifestSequence})`,
  ];
  if (r.haltReason) lines.push(`  halted: ${r.haltReason}`);
  if (r.phase === 'aborted') lines.push(`  aborted${r.revert ? ' with revert' : ''}`);
  for (const [i, c] of r.perWave.entries())
    lines.push(
      `  wave ${i + 1}${i <= r.wave ? ' open  ' : ' closed'}  agents ${c.agents}  pending ${c.pending}  updating ${c.updating}  committed ${c.committed}  failed ${c.failed}  rolled back ${c.rolledBack}  silent ${c.silent}`,
    );
  return lines;
}

export const mirrorRolloutStatus: Command = {
  summary:
    "Shows the running mirror's rollout: its id, target version, strategy, state (running, awaiting-approval,\n" +
    'halted, aborted, completed), the open wave, and per-wave counts of agents.',
  usage: '--data DIR [--json]',
  options: { data: { type: 'string' }, ...jsonOption },
  async run(p, io) {
    const a = await ask(str(p, 'data'), 'GET', '/rollout');
    const r = (a.rollout ?? null) as RolloutSummary | null;
    if (p.json) printJson(io, { ok: true, rollout: r });
    else for (const l of summaryLines(r)) io.out(l);
    return 0;
  },
};

function action(name: 'approve' | 'halt' | 'resume' | 'abort', summary: string): Command {
  const revert = name === 'abort';
  return {
    summary,
    usage: `--data DIR [--reason TEXT] [--actor NAME] [--rollout ID]${revert ? ' [--revert]' : ''} [--json]`,
    options: {
      data: { type: 'string' },
      reason: { type: 'string' },
      actor: { type: 'string' },
      rollout: { type: 'string' },
      ...(revert && { revert: { type: 'boolean' } }),
      ...jsonOption,
    },
    async run(p, io) {
      const reason = str(p, 'reason', false);
      const rolloutId = str(p, 'rollout', false);
      const a = await ask(str(p, 'data'), 'POST', '/rollout', {
        action: name,
        actor: actorOf(p),
        ...(reason && { reason }),
        ...(rolloutId && { rolloutId }),
        ...(revert && { revert: p.values.revert === true }),
      });
      const r = (a.rollout ?? null) as RolloutSummary | null;
      if (p.json) printJson(io, { ok: true, rollout: r, recorded: a.recorded });
      else for (const l of summaryLines(r)) io.out(l);
      return 0;
    },
  };
}

export const mirrorRolloutApprove = action(
  'approve',
  'Approves the next wave of a manual rollout that waits for it (its previous wave soaked with committed\n' +
    'evidence). Refused (NOT_AWAITING_APPROVAL) at any other time.',
);
export const mirrorRolloutHalt = action(
  'halt',
  'Halts the rollout: no agent starts the update from now on; agents already updating finish.',
);
export const mirrorRolloutResume = action(
  'resume',
  'Resumes a halted rollout. Failures so far are accepted (still counted, no longer toward the threshold);\n' +
    'a new failure past maxFailureRate halts it again.',
);
export const mirrorRolloutAbort = action(
  'abort',
  'Aborts the rollout: agents stay where they are, or with --revert those on the new version are told to go\n' +
    'back through their own rollback path.',
);

export const mirrorUpdateNow: Command = {
  summary:
    "Lets one agent take the rollout's version at its next poll, ahead of its wave and outside the window.\n" +
    'Never past a halt or an abort, and never past the agent’s own checks (signature, floor, pins, bad versions).',
  usage: '--agent ID --data DIR [--reason TEXT] [--actor NAME] [--json]',
  options: {
    data: { type: 'string' },
    agent: { type: 'string' },
    reason: { type: 'string' },
    actor: { type: 'string' },
    ...jsonOption,
  },
  async run(p, io) {
    const reason = str(p, 'reason', false);
    const a = await ask(str(p, 'data'), 'POST', '/update-now', {
      agent: str(p, 'agent'),
      actor: actorOf(p),
      ...(reason && { reason }),
    });
    if (p.json) printJson(io, { ok: true, agent: a.agent, recorded: a.recorded });
    else io.out(`agent ${String(a.agent)} may update at its next poll`);
    return 0;
  },
};

export const mirrorRunNow: Command = {
  summary:
    'Asks agents to run one of their policy scripts at their next poll instead of waiting for its schedule:\n' +
    'one agent (--agent), one group (--group) or every agent. Each agent runs it once, and only when its signed\n' +
    'policy already assigns it that script (same arguments, its own interpreter allowlist). Refused\n' +
    '(UNKNOWN_SCRIPT) when the active manifest carries no such script. Requests expire after 24 h.',
  usage: '--script NAME [--agent ID | --group G] --data DIR [--reason TEXT] [--actor NAME] [--json]',
  options: {
    data: { type: 'string' },
    script: { type: 'string' },
    agent: { type: 'string' },
    group: { type: 'string' },
    reason: { type: 'string' },
    actor: { type: 'string' },
    ...jsonOption,
  },
  async run(p, io) {
    const agent = str(p, 'agent', false);
    const group = str(p, 'group', false);
    if (agent && group) throw new CodedError('USAGE', 'give --agent or --group, not both');
    const reason = str(p, 'reason', false);
    const a = await ask(str(p, 'data'), 'POST', '/run-now', {
      script: str(p, 'script'),
      ...(agent && { agent }),
      ...(group && { group }),
      actor: actorOf(p),
      ...(reason && { reason }),
    });
    const q = a.request as { id: string; script: string };
    if (p.json) printJson(io, { ok: true, request: a.request });
    else
      io.out(
        `run-now ${q.id}: ${agent ? `agent ${agent}` : group ? `group ${group}` : 'every agent'} runs ${q.script} at its next poll`,
      );
    return 0;
  },
};
