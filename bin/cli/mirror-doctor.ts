import { FerryError } from '../../core/errors.js';
import { isAgentId } from '../../core/heartbeat.js';
import { doctorReportsFor } from '../../mirror/doctor-reports.js';
import { jsonOption, printJson, str, type Command } from './common.js';

export const mirrorDoctor: Command = {
  summary:
    "Shows an agent's latest self-diagnosis as its signed heartbeats brought it to this mirror: when its\n" +
    'checks ran, how many passed, and each failing or warning check with its evidence. Reads the data\n' +
    'directory only (works with or without the mirror serving). Exit 0 when the report has no failed\n' +
    'check, 1 when it has, or when the agent has sent none (NO_DOCTOR_REPORT).',
  usage: 'AGENT_ID --data DIR [--json]',
  options: { data: { type: 'string' }, ...jsonOption },
  positionals: { min: 1, max: 1 },
  async run(p, io) {
    const agentId = p.positionals[0]!;
    if (!isAgentId(agentId)) throw new FerryError('USAGE', 'AGENT_ID must be 32 lowercase hex characters');
    const rec = await doctorReportsFor(str(p, 'data')).get(agentId);
    if (!rec) {
      const message = `agent ${agentId} has sent this mirror no doctor report`;
      if (p.json) printJson(io, { ok: false, code: 'NO_DOCTOR_REPORT', message });
      else io.err(`ferry: NO_DOCTOR_REPORT: ${message}`);
      return 1;
    }
    const s = rec.summary;
    const ok = s.fail === 0;
    if (p.json)
      printJson(io, {
        ok,
        agentId,
        counter: rec.counter,
        receivedAt: rec.receivedAt,
        at: s.at,
        counts: { ok: s.ok, warn: s.warn, fail: s.fail },
        problems: s.problems,
      });
    else {
      io.out(`agent ${agentId}: checks ran ${s.at} (heartbeat ${rec.counter}, received ${rec.receivedAt})`);
      for (const x of s.problems) io.out(`${x.status === 'fail' ? '[✗]' : '[!]'} ${x.id}: ${x.evidence}`);
      io.out(
        s.fail === 0 && s.warn === 0
          ? `• No issues found! (${s.ok} checks passed)`
          : `! ${s.fail} failed, ${s.warn} warning(s), ${s.ok} ok`,
      );
    }
    return ok ? 0 : 1;
  },
};
