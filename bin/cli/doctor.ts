import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { FerryError } from '../../core/errors.js';
import { runFixes, type FixOutcome } from '../../agent/doctor/fixes.js';
import { reportLines, runDoctor, summaryLine } from '../../agent/doctor/run.js';
import type { ConfigReading, DoctorOptions, DoctorReport } from '../../agent/doctor/types.js';
import { DEFAULT_ALLOWLIST } from '../../agent/scripts.js';
import { installRootOf } from '../../agent/update/install.js';
import { withConfig } from './agent.js';
import { jsonOption, list, printJson, str, type Command, type Io, type Parsed } from './common.js';

/** Where the unit installs the agent and its config, under the node's filesystem root. */
const DEFAULT_STATE = '/var/lib/ferry/agent';
const DEFAULT_CONFIG = 'etc/ferry/agent.json';
const DEFAULT_INSTALL = 'opt/ferry';

/** The doctor's options from the command line and the agent's own config file, which it also checks. */
async function doctorOptions(p0: Parsed): Promise<DoctorOptions> {
  const systemRoot = resolve(str(p0, 'root', false) || '/');
  const given = str(p0, 'config', false);
  const implied = join(systemRoot, DEFAULT_CONFIG);
  const configPath = given || (existsSync(implied) ? implied : undefined);
  let p = p0;
  let config: ConfigReading | undefined;
  if (configPath) {
    try {
      p = await withConfig({ ...p0, values: { ...p0.values, config: configPath } });
      config = { path: configPath };
    } catch (e) {
      config = { path: configPath, error: (e as Error).message };
    }
  }
  const stateDir = str(p, 'state', false) || join(systemRoot, DEFAULT_STATE);
  const install = str(p, 'install-root', false);
  const implicitInstall = join(systemRoot, DEFAULT_INSTALL);
  const installRoot = install
    ? resolve(install)
    : (installRootOf(process.argv[1]) ?? (existsSync(implicitInstall) ? implicitInstall : undefined));
  const allow = list(p, 'allow-interpreter', false);
  return {
    stateDir: resolve(stateDir),
    installRoot,
    systemRoot,
    ...(config && { config }),
    allowlist: allow.length ? allow : DEFAULT_ALLOWLIST,
    deep: p.values.deep === true,
  };
}

function printReport(io: Io, r: DoctorReport): void {
  for (const l of reportLines(r)) io.out(l);
  io.out('');
  io.out(summaryLine(r));
}

function printFix(io: Io, f: FixOutcome): void {
  // what is wrong first (the full list follows after a real run)
  for (const l of reportLines({ ...f.before, checks: f.before.checks.filter((c) => c.status !== 'ok') }))
    io.out(l);
  io.out(summaryLine(f.before));
  io.out('');
  if (f.planned.length === 0) io.out('No fix applies to what was found.');
  else io.out(f.dryRun ? 'Would change (dry run, nothing changed):' : 'Changes:');
  f.planned.forEach((c, i) => {
    const a = f.applied?.[i];
    const mark = a ? (a.ok ? '  done ' : '  FAILED ') : '  - ';
    io.out(`${mark}[${c.pattern}] ${c.what}${a?.error ? ` (${a.error})` : ''}`);
  });
  if (!f.after) return;
  io.out('');
  io.out('After the fixes:');
  printReport(io, f.after);
  for (const r of f.didNotTake ?? []) io.out(`did not take: ${r.id}: ${r.evidence}`);
  for (const r of (f.stillWrong ?? []).filter((x) => !f.didNotTake?.includes(x)))
    io.out(`still wrong (no automatic fix): ${r.id}: ${r.evidence}`);
}

export const agentDoctor: Command = {
  summary:
    'Checks this node and says what is wrong and the exact fix, one line per check (flutter doctor style):\n' +
    'config, state directory and free space, key (present, 0600, the enrolled one), pinned root chain,\n' +
    'clock, each mirror (reachable, serving a manifest that verifies), manifest freshness, the running\n' +
    'binary against the manifest, a stuck self-update, outbox, managed files, cached blobs (a sample;\n' +
    'all with --deep), stale temp files, the systemd unit, and the interpreters the policy needs.\n' +
    'Only reads; works with every mirror unreachable. Exit 0 when nothing fails, 1 otherwise.\n' +
    '--fix applies the named remediation patterns (key-mode, state-migrate, update-stale, temp-files,\n' +
    'file-drift, cache-corrupt, outbox-compact) with the agent stopped (AGENT_RUNNING otherwise), then\n' +
    'checks again and says what is still wrong; --fix --dry-run lists exactly what it would change.\n' +
    '--root DIR is the node filesystem root its unit and config sit under (default /); the config file\n' +
    'is --config or <root>/etc/ferry/agent.json; the state directory --state, the config, or\n' +
    '<root>/var/lib/ferry/agent; the install root --install-root, the config, or <root>/opt/ferry.',
  usage:
    '[--state DIR] [--config FILE] [--install-root DIR] [--root DIR] [--allow-interpreter NAME]... [--deep] [--fix [--dry-run]] [--json]',
  options: {
    state: { type: 'string' },
    config: { type: 'string' },
    'install-root': { type: 'string' },
    root: { type: 'string' },
    'allow-interpreter': { type: 'string', multiple: true },
    deep: { type: 'boolean' },
    fix: { type: 'boolean' },
    'dry-run': { type: 'boolean' },
    ...jsonOption,
  },
  async run(p, io) {
    if (p.values['dry-run'] && !p.values.fix) throw new FerryError('USAGE', '--dry-run goes with --fix');
    const o = await doctorOptions(p);
    if (!p.values.fix) {
      const r = await runDoctor(o);
      const ok = r.counts.fail === 0;
      if (p.json) printJson(io, { ok, stateDir: o.stateDir, ...r, at: new Date(r.at).toISOString() });
      else printReport(io, r);
      return ok ? 0 : 1;
    }
    const f = await runFixes(o, p.values['dry-run'] === true);
    const final = f.after ?? f.before;
    const ok = final.counts.fail === 0;
    if (p.json) printJson(io, { ok, stateDir: o.stateDir, ...f });
    else printFix(io, f);
    return ok ? 0 : 1;
  },
};
