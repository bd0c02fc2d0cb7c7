/**
 * Checks of the agent's footing: the config file, the state directory, the
 * key, the pinned root chain and the clock. Each only reads.
 */
import { constants } from 'node:fs';
import { access, lstat, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { agentIdOf } from '../../core/heartbeat.js';
import { trustStoredChain } from '../../core/root.js';
import { trustedTime } from '../../core/freshness.js';
import { isoUtc } from '../../core/time.js';
import { DEFAULT_LIMITS, freeBytes } from '../../platform/http/client.js';
import { loadPrivateKey, loadPublicKey } from '../../platform/keyfile.js';
import type { DoctorContext } from './context.js';
import type { MirrorProbe } from './mirrors.js';
import { errText, ok, type CheckResult } from './types.js';

const DAY = 86_400_000;
/** A root this close to expiry is a warning: a new one must reach the site before it runs out. */
export const ROOT_EXPIRY_WARN_MS = 30 * DAY;
/** Clock differences smaller than this are not worth a word. */
export const CLOCK_TOLERANCE_MS = 5 * 60_000;
const MiB = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
const mode = (m: number) => (m & 0o7777).toString(8).padStart(4, '0');

export const keyPathOf = (stateDir: string) => join(stateDir, 'keys', 'agent.key');

export function checkConfig(c: DoctorContext): CheckResult {
  const t = 'config file readable and valid';
  const cfg = c.o.config;
  if (!cfg) return ok('config', t, 'no --config file: settings come from the command line');
  if (cfg.error === undefined) return ok('config', t, `${cfg.path} reads and validates`);
  return {
    id: 'config',
    title: t,
    status: 'fail',
    evidence: cfg.error,
    fix: `correct ${cfg.path} (JSON object; keys as in \`ferry agent run --help\`)`,
  };
}

export async function checkStateDir(c: DoctorContext): Promise<CheckResult> {
  const t = 'state directory writable, with free space';
  const fail = (evidence: string, fix: string): CheckResult => ({
    id: 'state-dir',
    title: t,
    status: 'fail',
    evidence,
    fix,
  });
  const st = await stat(c.stateDir).catch(() => undefined);
  if (!st?.isDirectory())
    return fail(`${c.stateDir} is not a directory`, 'check --state; the agent creates it on first run');
  try {
    await access(c.stateDir, constants.W_OK);
  } catch (e) {
    return fail(
      `${c.stateDir} is not writable by this user: ${errText(e)}`,
      `run as the agent's user (root) or fix the owner of ${c.stateDir}`,
    );
  }
  const free = await freeBytes(c.stateDir);
  const reserve = DEFAULT_LIMITS.reserveBytes;
  const evidence = `${c.stateDir} mode ${mode(st.mode)}, ${MiB(free)} free`;
  if (free < reserve)
    return fail(
      `${evidence}, under the ${MiB(reserve)} every download must leave`,
      `free space on the filesystem holding ${c.stateDir}`,
    );
  if ((st.mode & 0o077) !== 0)
    return {
      id: 'state-dir',
      title: t,
      status: 'warn',
      evidence: `${evidence}: open to group or others (it holds the agent's key and state)`,
      fix: `chmod 700 ${c.stateDir}`,
    };
  if (free < 4 * reserve)
    return {
      id: 'state-dir',
      title: t,
      status: 'warn',
      evidence: `${evidence}, close to the ${MiB(reserve)} reserve`,
      fix: `free space on the filesystem holding ${c.stateDir}`,
    };
  return ok('state-dir', t, evidence);
}

export function checkState(c: DoctorContext): CheckResult {
  const t = 'state.json readable and current';
  if (c.stateError !== undefined)
    return {
      id: 'state',
      title: t,
      status: 'fail',
      evidence: c.stateError,
      fix: 'start the agent with --trust and --site to pin the root, or restore state.json from a backup',
    };
  if (c.olderFormat)
    return {
      id: 'state',
      title: t,
      status: 'warn',
      evidence:
        'state.json was written by an older agent (per-publisher marks); it is migrated in memory on every read',
      fix: 'ferry agent doctor --fix (writes it in the current format)',
      fixable: 'state-migrate',
    };
  return ok('state', t, `site ${c.state!.site}, agent ${c.state!.agentId ?? '(not enrolled)'}`);
}

export async function checkKey(c: DoctorContext): Promise<CheckResult> {
  const t = 'agent key present, mode 0600, the enrolled one';
  const path = keyPathOf(c.stateDir);
  const st = await lstat(path).catch(() => undefined);
  const agentId = c.state?.agentId ?? null;
  if (!st) {
    if (agentId === null)
      return {
        id: 'key',
        title: t,
        status: 'warn',
        evidence: `${path} not made yet (not enrolled)`,
        fix: 'start the agent: it makes its key on first start',
      };
    return {
      id: 'key',
      title: t,
      status: 'fail',
      evidence: `${path} is missing but the state is enrolled as ${agentId}`,
      fix: 'restore keys/agent.key from a backup, or re-enrol the node with a new state directory',
    };
  }
  if (!st.isFile())
    return {
      id: 'key',
      title: t,
      status: 'fail',
      evidence: `${path} is not a regular file`,
      fix: `restore ${path}`,
    };
  if ((st.mode & 0o077) !== 0)
    return {
      id: 'key',
      title: t,
      status: 'fail',
      evidence: `${path} has mode ${mode(st.mode)}: readable by group or others (the agent refuses to use it)`,
      fix: `chmod 600 ${path}`,
      fixable: 'key-mode',
    };
  try {
    const key = await loadPrivateKey(path);
    const id = agentIdOf(key.publicKey);
    if (agentId !== null && id !== agentId)
      return {
        id: 'key',
        title: t,
        status: 'fail',
        evidence: `${path} is agent ${id}, but the state is enrolled as ${agentId}`,
        fix: 'put back the key this node enrolled with, or re-enrol with a new state directory',
      };
    return ok('key', t, `${path} mode ${mode(st.mode)}, agent ${id}`);
  } catch (e) {
    const pub = await loadPublicKey(path).catch(() => undefined);
    return {
      id: 'key',
      title: t,
      status: 'fail',
      evidence: `${path}: ${errText(e)}${pub ? ` (public half is agent ${agentIdOf(pub.publicKey)})` : ''}`,
      fix: `restore ${path} from a backup`,
    };
  }
}

export function checkRoot(c: DoctorContext): CheckResult {
  const t = 'pinned root chain valid and not near expiry';
  if (!c.state)
    return {
      id: 'root',
      title: t,
      status: 'fail',
      evidence: 'no state: no pinned root',
      fix: 'start the agent with --trust to pin the root',
    };
  try {
    const root = trustStoredChain(c.state.roots);
    const time = trustedTime(c.state.trust, c.now);
    const expires = Date.parse(root.payload.expires);
    const ev = `root v${root.payload.version} (chain of ${c.state.roots.length}) expires ${root.payload.expires}`;
    if (expires <= time)
      return {
        id: 'root',
        title: t,
        status: 'fail',
        evidence: `${ev}: expired`,
        fix: 'bring a newer root (ferry trust rotate) to the site mirror in a bundle',
      };
    if (expires - time < ROOT_EXPIRY_WARN_MS)
      return {
        id: 'root',
        title: t,
        status: 'warn',
        evidence: `${ev}: in ${Math.ceil((expires - time) / DAY)} day(s)`,
        fix: 'rotate the root (ferry trust rotate) and ship it before it expires',
      };
    return ok('root', t, ev);
  } catch (e) {
    return {
      id: 'root',
      title: t,
      status: 'fail',
      evidence: errText(e),
      fix: 're-pin the site root: restore state.json, or start over with --trust',
    };
  }
}

export function checkClock(c: DoctorContext, probes: readonly MirrorProbe[]): CheckResult {
  const t = 'clock sane against signed time and the mirror';
  const signed = c.state?.trust.signedTime ?? 0;
  const notes: string[] = [`local clock ${isoUtc(c.now)}`];
  if (signed > 0) notes.push(`latest signed time seen ${isoUtc(signed)}`);
  if (signed - c.now > CLOCK_TOLERANCE_MS)
    return {
      id: 'clock',
      title: t,
      status: 'fail',
      evidence: `${notes.join(', ')}: the clock is ${Math.round((signed - c.now) / 60_000)} min behind what was signed`,
      fix: 'set the clock (timedatectl, or NTP from the site)',
    };
  const dated = probes.filter((p) => p.dateMs !== undefined);
  for (const p of dated) {
    const skew = c.now - p.dateMs!;
    if (Math.abs(skew) > CLOCK_TOLERANCE_MS)
      return {
        id: 'clock',
        title: t,
        status: 'warn',
        evidence: `${notes.join(', ')}; ${p.url} says ${isoUtc(p.dateMs!)} (${Math.round(skew / 60_000)} min apart)`,
        fix: 'set the clock of this node or of the mirror (timedatectl, or NTP from the site)',
      };
  }
  if (dated.length) notes.push(`within ${CLOCK_TOLERANCE_MS / 60_000} min of ${dated.length} mirror(s)`);
  else notes.push('no mirror Date to compare');
  return ok('clock', t, notes.join(', '));
}
