/**
 * Checks of the system around the agent: the systemd unit that starts it and
 * the interpreters the policy's scripts need. Each only reads.
 */
import { readFile, realpath } from 'node:fs/promises';
import { join } from 'node:path';
import { resolveInterpreter } from '../scripts.js';
import type { DoctorContext } from './context.js';
import { errText, ok, type CheckResult } from './types.js';

export async function checkUnit(c: DoctorContext): Promise<CheckResult> {
  const t = 'systemd unit installed and enabled';
  const dir = join(c.o.systemRoot, 'etc', 'systemd', 'system');
  const unit = join(dir, 'ferry-agent.service');
  const wants = join(dir, 'multi-user.target.wants', 'ferry-agent.service');
  const text = await readFile(unit, 'utf8').catch(() => undefined);
  if (text === undefined)
    return {
      id: 'unit',
      title: t,
      status: 'fail',
      evidence: `${unit} is missing`,
      fix: 'install the agent with the kit (install.sh) or copy systemd/ferry-agent.service there',
    };
  if (!/^ExecStart=.*ferry-agent/m.test(text))
    return {
      id: 'unit',
      title: t,
      status: 'fail',
      evidence: `${unit} has no ExecStart running ferry-agent`,
      fix: 'reinstall the unit from systemd/ferry-agent.service',
    };
  const target = await realpath(wants).catch(() => undefined);
  const real = await realpath(unit).catch(() => unit);
  if (target !== real)
    return {
      id: 'unit',
      title: t,
      status: 'fail',
      evidence: `${unit} installed, but ${wants} ${target === undefined ? 'is missing' : `points at ${target}`}: not enabled`,
      fix: 'systemctl enable --now ferry-agent',
    };
  return ok('unit', t, `${unit}, enabled (multi-user.target)`);
}

export async function checkInterpreters(c: DoctorContext): Promise<CheckResult> {
  const t = 'interpreters the policy needs allowed and present';
  if (!c.desired) return ok('interpreters', t, 'no active policy');
  const needed = [...new Set(c.desired.scripts.map((s) => s.artifact.interpreter ?? 'sh'))];
  if (needed.length === 0) return ok('interpreters', t, 'the policy runs no scripts here');
  const notAllowed = needed.filter((n) => !c.o.allowlist.includes(n));
  if (notAllowed.length)
    return {
      id: 'interpreters',
      title: t,
      status: 'fail',
      evidence: `the policy needs ${notAllowed.join(', ')}, not on this node's allowlist (${c.o.allowlist.join(', ')})`,
      fix: `allow it (--allow-interpreter ${notAllowed[0]}, config allowInterpreters) if the node's owner agrees; otherwise the scripts stay refused`,
    };
  const found: string[] = [];
  for (const n of needed) {
    try {
      found.push(await resolveInterpreter(n));
    } catch (e) {
      return {
        id: 'interpreters',
        title: t,
        status: 'fail',
        evidence: errText(e),
        fix: `install ${n} on this node`,
      };
    }
  }
  return ok('interpreters', t, found.join(', '));
}
