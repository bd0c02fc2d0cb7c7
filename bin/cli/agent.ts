import { readdir, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { FerryError } from '../../core/errors.js';
import { createLogger } from '../../platform/log.js';
import { Agent } from '../../agent/run.js';
import { readPolicyProblems } from '../../agent/problems.js';
import { readAgentState } from '../../agent/agent-state.js';
import { readShortage } from '../../agent/storage.js';
import { freeBytes, parseLimits, type ClientLimits } from '../../platform/http/client.js';
import { currentVersion, installRootOf } from '../../agent/update/install.js';
import { readUpdateFile } from '../../agent/update/update-file.js';
import { manualRollback } from '../../agent/update/rollback.js';
import { VERSION } from '../version.js';
import { humanSeconds, int, jsonOption, list, printJson, str, type Command, type Parsed } from './common.js';

const mirrorsOf = (p: Parsed) =>
  list(p, 'mirror', false)
    .flatMap((m) => m.split(','))
    .map((m) => m.trim())
    .filter(Boolean);

/** $FERRY_AGENT_HTTP_LIMITS: JSON over the HTTP client's defaults (deadlines, floor rate, disk reserve). */
export function httpLimitsFromEnv(env = process.env): Partial<ClientLimits> | undefined {
  const text = env.FERRY_AGENT_HTTP_LIMITS;
  if (!text) return undefined;
  try {
    return parseLimits(text);
  } catch (e) {
    throw new FerryError('USAGE', `FERRY_AGENT_HTTP_LIMITS: ${(e as Error).message}`);
  }
}

/**
 * The enrolment token from --token or --token-file (one of them): only what the first enrolment needs.
 * A token file's surrounding whitespace is ignored; the token itself never appears in a message.
 */
export async function tokenFrom(p: Parsed): Promise<string | undefined> {
  const token = str(p, 'token', false);
  const file = str(p, 'token-file', false);
  if (token && file) throw new FerryError('USAGE', '--token and --token-file: give one of them');
  if (token) return token;
  if (!file) return undefined;
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw new FerryError(
      'USAGE',
      `--token-file ${file}: ${(e as NodeJS.ErrnoException).code ?? 'unreadable'}`,
    );
  }
  const t = text.trim();
  if (t === '' || t.length > 4096 || /\s/.test(t))
    throw new FerryError('USAGE', `--token-file ${file} must hold one token`);
  return t;
}

async function agentFrom(p: Parsed, persistMirrors = true): Promise<Agent> {
  const allow = list(p, 'allow-interpreter', false);
  const token = await tokenFrom(p);
  const httpLimits = httpLimitsFromEnv();
  return new Agent({
    stateDir: str(p, 'state'),
    mirrors: mirrorsOf(p),
    ...(str(p, 'trust', false) && { trustPath: str(p, 'trust') }),
    ...(str(p, 'site', false) && { site: str(p, 'site') }),
    groups: list(p, 'group', false),
    log: createLogger({ component: 'agent' }),
    version: VERSION,
    ...(p.values.interval !== undefined && { pollIntervalSec: int(p, 'interval') }),
    ...(allow.length > 0 && { allowlist: allow }),
    enforceFiles: !p.values['report-only'],
    persistMirrors,
    ...(str(p, 'metrics-listen', false) && { metricsListen: parseHostPort(str(p, 'metrics-listen')) }),
    ...(str(p, 'metrics-file', false) && { metricsFile: str(p, 'metrics-file') }),
    ...(str(p, 'install-root', false) && { installRoot: str(p, 'install-root') }),
    ...(p.values['update-soak'] !== undefined && { updateLimits: { soakMs: int(p, 'update-soak') * 1000 } }),
    ...(httpLimits && { httpLimits }),
    ...(token !== undefined && { token }),
    ...(p.values['doctor-interval'] !== undefined && { doctorIntervalSec: int(p, 'doctor-interval') }),
  });
}

function parseHostPort(s: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:]+)\]|([^:]+)):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535)
    throw new FerryError('USAGE', '--metrics-listen must be HOST:PORT, e.g. 127.0.0.1:9109');
  return { host: m[1] ?? m[2]!, port };
}

/** Config-file keys and the flags they stand for; flags given on the command line win. */
const CONFIG_KEYS: Record<string, { flag: string; kind: 'string' | 'list' | 'number' | 'boolean' }> = {
  state: { flag: 'state', kind: 'string' },
  mirrors: { flag: 'mirror', kind: 'list' },
  trust: { flag: 'trust', kind: 'string' },
  site: { flag: 'site', kind: 'string' },
  groups: { flag: 'group', kind: 'list' },
  interval: { flag: 'interval', kind: 'number' },
  allowInterpreters: { flag: 'allow-interpreter', kind: 'list' },
  reportOnly: { flag: 'report-only', kind: 'boolean' },
  metricsListen: { flag: 'metrics-listen', kind: 'string' },
  metricsFile: { flag: 'metrics-file', kind: 'string' },
  installRoot: { flag: 'install-root', kind: 'string' },
  updateSoak: { flag: 'update-soak', kind: 'number' },
  token: { flag: 'token', kind: 'string' },
  tokenFile: { flag: 'token-file', kind: 'string' },
  doctorInterval: { flag: 'doctor-interval', kind: 'number' },
};

/** Fills options from `--config FILE` (JSON) where the command line did not give them. */
export async function withConfig(p: Parsed): Promise<Parsed> {
  const path = str(p, 'config', false);
  if (!path) return p;
  let v: unknown;
  try {
    const text = await readFile(path, 'utf8');
    if (text.length > 64 * 1024) throw new Error('larger than 64 KiB');
    v = JSON.parse(text);
  } catch (e) {
    throw new FerryError('USAGE', `--config ${path}: ${(e as Error).message}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new FerryError('USAGE', `--config ${path}: not a JSON object`);
  const values = { ...p.values };
  for (const [key, raw] of Object.entries(v)) {
    const spec = Object.hasOwn(CONFIG_KEYS, key) ? CONFIG_KEYS[key] : undefined;
    if (!spec) throw new FerryError('USAGE', `--config ${path}: unknown key ${JSON.stringify(key)}`);
    const ok =
      spec.kind === 'list'
        ? Array.isArray(raw) && raw.every((x) => typeof x === 'string')
        : spec.kind === 'number'
          ? Number.isSafeInteger(raw) && (raw as number) > 0
          : typeof raw === spec.kind;
    if (!ok)
      throw new FerryError(
        'USAGE',
        `--config ${path}: ${key} must be a ${spec.kind === 'list' ? 'list of strings' : spec.kind}`,
      );
    if (values[spec.flag] !== undefined) continue; // the command line wins
    values[spec.flag] = spec.kind === 'number' ? String(raw) : (raw as string | boolean | string[]);
  }
  return { ...p, values };
}

const RUN_OPTIONS = {
  config: { type: 'string' },
  state: { type: 'string' },
  mirror: { type: 'string', multiple: true },
  trust: { type: 'string' },
  site: { type: 'string' },
  group: { type: 'string', multiple: true },
  interval: { type: 'string' },
  'allow-interpreter': { type: 'string', multiple: true },
  'report-only': { type: 'boolean' },
  'metrics-listen': { type: 'string' },
  'metrics-file': { type: 'string' },
  'install-root': { type: 'string' },
  'update-soak': { type: 'string' },
  token: { type: 'string' },
  'token-file': { type: 'string' },
  'doctor-interval': { type: 'string' },
} as const;

export const agentRun: Command = {
  summary:
    'Runs the node agent: polls the mirrors (failover in order), verifies everything against its pinned root,\n' +
    'fetches what its groups need, runs scripts and keeps managed files, and reports signed heartbeats. The\n' +
    'first run pins --trust and records --site; SIGUSR1 polls at once; SIGTERM stops after the current step.\n' +
    '--config FILE reads the same settings from JSON (state, mirrors, trust, site, groups, interval,\n' +
    'allowInterpreters, reportOnly, metricsListen, metricsFile); flags given on the command line win.\n' +
    '--allow-interpreter replaces the default allowlist (sh, bash); --report-only never changes managed files.\n' +
    'Self-update: --install-root DIR holds versions/<v>/ferry-agent and the current symlink (default\n' +
    '$FERRY_AGENT_INSTALL_ROOT, else the root this binary was started from as <root>/current/ferry-agent);\n' +
    '--update-soak SEC is how long a new version must keep running after its health check before it is\n' +
    'committed (default 600). Config keys installRoot, updateSoak.\n' +
    'Downloads: every request has a total deadline of max(30 s, size / 64 KiB/s), after which the next\n' +
    'mirror resumes it; a blob is fetched only when its size plus a 32 MiB reserve fits on the disk\n' +
    '(else STORAGE_FULL, reported by status and heartbeats). $FERRY_AGENT_HTTP_LIMITS (JSON: idleTimeoutMs,\n' +
    'minDeadlineMs, floorBytesPerSec, reserveBytes) changes these.\n' +
    'Enrolment: --token T (or --token-file F holding it; config keys token, tokenFile) is the token the site\n' +
    'operator made with `ferry mirror token create`; it is needed only until a mirror has enrolled this agent\n' +
    'and is never logged.\n' +
    'Diagnosis: the read-only checks of `ferry agent doctor` run every --doctor-interval SEC (default\n' +
    '86400; config key doctorInterval) and after a failed update; every heartbeat carries the latest summary.',
  usage:
    '[--config FILE] --state DIR --mirror URL[,URL...] [--trust root.json --site S] [--group G]... [--interval SEC] [--allow-interpreter NAME]... [--report-only] [--metrics-listen HOST:PORT] [--metrics-file PATH] [--install-root DIR] [--update-soak SEC] [--token T | --token-file F] [--doctor-interval SEC]',
  options: RUN_OPTIONS,
  async run(parsed) {
    const p = await withConfig(parsed);
    const agent = await agentFrom(p);
    await agent.init();
    process.on('SIGUSR1', () => agent.pollNow());
    process.once('SIGTERM', () => agent.stop());
    process.once('SIGINT', () => agent.stop());
    await agent.run();
    return 0;
  },
};

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export const agentPoll: Command = {
  summary:
    'Polls now: signals the running agent of this state directory (SIGUSR1), or, when none runs, performs\n' +
    'one full cycle itself with the stored mirrors and settings.',
  usage: '--now --state DIR [--json]',
  options: { now: { type: 'boolean' }, ...RUN_OPTIONS, ...jsonOption },
  async run(parsed, io) {
    const p = await withConfig(parsed);
    if (!p.values.now) throw new FerryError('USAGE', 'poll needs --now');
    const dir = str(p, 'state');
    const pid = Number((await readFile(join(dir, 'agent.pid'), 'utf8').catch(() => '')).trim());
    if (pid > 0 && pidAlive(pid)) {
      process.kill(pid, 'SIGUSR1');
      if (p.json) printJson(io, { ok: true, signalled: pid });
      else io.out(`asked the running agent (pid ${pid}) to poll now`);
      return 0;
    }
    const agent = await agentFrom(p, false); // --mirror here is for this poll only
    await agent.init();
    const r = await agent.cycle().finally(() => agent.close());
    const summary = {
      sync: r.sync,
      sequence: r.state.active?.sequence ?? null,
      scripts: r.apply.scripts.map((s) => ({
        script: s.script,
        exitCode: s.exitCode,
        refused: s.refused?.code ?? null,
      })),
      drift: r.apply.files.filter((f) => f.status !== 'ok'),
      policyProblems: r.apply.problems,
      sent: r.sent,
    };
    const refusal =
      r.sync.kind === 'refused'
        ? { code: r.sync.code, message: r.sync.reason }
        : r.enrolRefused
          ? { code: r.enrolRefused.code, message: r.enrolRefused.message }
          : {};
    const failed = r.sync.kind === 'refused' || r.enrolRefused !== undefined;
    if (p.json) printJson(io, { ok: !failed, ...refusal, ...summary });
    else
      io.out(
        `sync ${r.sync.kind}; active sequence ${summary.sequence ?? 'none'}; ${summary.scripts.length} script(s) ran; ${r.sent} report(s) sent` +
          (r.enrolRefused ? '; not enrolled' : ''),
      );
    if (!p.json) for (const pr of r.apply.problems) io.err(`ferry: ${pr.code}: ${pr.message}`);
    if (failed && !p.json && 'code' in refusal) io.err(`ferry: ${refusal.code}: ${refusal.message}`);
    // a refused update or enrolment is a failure the operator must act on (exit 1); the running state is unchanged
    return failed ? 1 : 0;
  },
};

export const agentStatus: Command = {
  summary:
    'Shows the agent state: id, site, active manifest, last contact, disconnection, outbox depth, script runs,\n' +
    'free space in the state directory and a standing storage shortage (STORAGE_FULL) if any,\n' +
    'and problems in the signed policies it runs under (each with its code; they are also logged and reported home).\n' +
    'With --install-root (or run as <root>/current/ferry-agent) it also names the version `current` points at;\n' +
    'the self-update state (phase, version, previous, highest committed) comes from the state directory.',
  usage: '--state DIR [--install-root DIR] [--json]',
  options: { state: { type: 'string' }, 'install-root': { type: 'string' }, ...jsonOption },
  async run(p, io) {
    const dir = str(p, 'state');
    const s = await readAgentState(dir);
    if (!s) throw new FerryError('USAGE', `${dir} holds no agent state; start it with ferry agent run`);
    const outbox = (await readdir(join(dir, 'outbox')).catch(() => [])).filter((n) =>
      /^\d{16}\./.test(n),
    ).length;
    const now = Date.now();
    const shortage = await readShortage(dir);
    const problems = (await readPolicyProblems(dir))?.problems ?? [];
    const installRoot = str(p, 'install-root', false)
      ? resolve(str(p, 'install-root'))
      : installRootOf(process.argv[1]);
    const m = (await readUpdateFile(dir))?.machine;
    const view = {
      agentId: s.agentId,
      version: installRoot ? ((await currentVersion(installRoot)) ?? null) : null,
      update: m
        ? { phase: m.phase, version: m.version, previous: m.previous, highestCommitted: m.highestCommitted }
        : null,
      site: s.site,
      groups: s.groups,
      mirrors: s.mirrors,
      active: s.active ? { publisher: s.active.publisher, sequence: s.active.sequence } : null,
      lastContactAt: s.lastContactAt === null ? null : new Date(s.lastContactAt).toISOString(),
      disconnectedSec: s.disconnectedSince === null ? 0 : Math.round((now - s.disconnectedSince) / 1000),
      outbox,
      scripts: s.scripts,
      storage: {
        freeBytes: await freeBytes(dir).catch(() => null),
        shortage: shortage && {
          ...shortage,
          since: new Date(shortage.since).toISOString(),
          at: new Date(shortage.at).toISOString(),
        },
      },
      policyProblems: problems,
    };
    if (p.json) printJson(io, { ok: true, ...view });
    else {
      io.out(
        `agent ${s.agentId ?? '(not enrolled)'} at site ${s.site}, groups ${s.groups.join(', ') || '(none)'}`,
      );
      if (view.version) io.out(`running: ferry-agent ${view.version}`);
      if (view.update && view.update.version)
        io.out(
          `self-update: ${view.update.phase} ${view.update.version}` +
            (view.update.previous ? ` (previous ${view.update.previous})` : '') +
            (view.update.highestCommitted ? `, highest committed ${view.update.highestCommitted}` : ''),
        );
      io.out(`active: ${view.active ? `${view.active.publisher} sequence ${view.active.sequence}` : 'none'}`);
      io.out(
        `last contact: ${view.lastContactAt ?? 'never'}${view.disconnectedSec ? `, cut off for ${humanSeconds(view.disconnectedSec)}` : ''}`,
      );
      io.out(`outbox: ${outbox} entr${outbox === 1 ? 'y' : 'ies'} waiting`);
      const free =
        view.storage.freeBytes === null ? 'unknown' : `${(view.storage.freeBytes / 1048576).toFixed(1)} MiB`;
      io.out(
        shortage
          ? `storage: ${shortage.code} since ${view.storage.shortage!.since}: ${shortage.message}`
          : `storage: ok, ${free} free`,
      );
      for (const [name, r] of Object.entries(s.scripts)) {
        io.out(
          `script ${name}: last run ${new Date(r.lastRunAt).toISOString()}, exit ${r.lastExit ?? 'none'}`,
        );
      }
      for (const pr of problems) io.out(`policy problem: ${pr.code}: ${pr.message}`);
    }
    return 0;
  },
};

export const agentRollback: Command = {
  summary:
    'Switches the agent back to the previous committed version: points <install>/current at it atomically\n' +
    'and records the rollback, which the agent reports home on its next cycle. Stop the agent first and\n' +
    'start it again after. --mark-bad also remembers the current version as bad under the manifest that\n' +
    'offered it, so it is not installed again; without it the next poll may update to it again.\n' +
    'Refuses (exit 1) with NO_PREVIOUS_VERSION, UPDATE_IN_PROGRESS, CURRENT_MISMATCH or AGENT_RUNNING and\n' +
    'then changes nothing. --install-root as for run.',
  usage: '--state DIR [--install-root DIR] [--mark-bad] [--json]',
  options: {
    state: { type: 'string' },
    'install-root': { type: 'string' },
    'mark-bad': { type: 'boolean' },
    ...jsonOption,
  },
  async run(p, io) {
    const installRoot = str(p, 'install-root', false)
      ? resolve(str(p, 'install-root'))
      : installRootOf(process.argv[1]);
    if (!installRoot)
      throw new FerryError(
        'USAGE',
        '--install-root is required (or $FERRY_AGENT_INSTALL_ROOT, or run <root>/current/ferry-agent)',
      );
    const r = await manualRollback({
      stateDir: resolve(str(p, 'state')),
      installRoot,
      markBad: p.values['mark-bad'] === true,
      now: Date.now(),
    });
    if (p.json) printJson(io, { ok: true, ...r, current: join(installRoot, 'versions', r.to) });
    else
      io.out(
        `rolled back ${r.from} → ${r.to}${r.markedBad ? ` (${r.from} marked bad)` : ''}; start the agent`,
      );
    return 0;
  },
};

export const agentVersion: Command = {
  summary: 'Prints the agent version.',
  usage: '',
  options: {},
  run(_p, io) {
    io.out(VERSION);
    return Promise.resolve(0);
  },
};
