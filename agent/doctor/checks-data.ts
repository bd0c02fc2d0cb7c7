/**
 * Checks of what the agent runs and owes: the active manifest, the running
 * binary, a pending self-update and the outbox. Each only reads.
 */
import { join } from 'node:path';
import { trustedTime } from '../../core/freshness.js';
import { parseIsoUtc } from '../../core/time.js';
import { compactionPlan, DEFAULT_OUTBOX_LIMITS, listOutbox } from '../outbox.js';
import { currentVersion, platformTag, versionBinary } from '../update/install.js';
import { readPendingRecord, readUpdateFile } from '../update/update-file.js';
import type { DoctorContext } from './context.js';
import { sha256File } from './checks-disk.js';
import { runningAgent } from './holder.js';
import type { MirrorProbe } from './mirrors.js';
import { errText, ok, type CheckResult } from './types.js';

const HOUR = 3_600_000;
/** An undelivered outbox entry older than this is worth a word. */
export const OUTBOX_AGE_WARN_MS = 24 * HOUR;

const since = (ms: number | null) => (ms === null ? 'never' : new Date(ms).toISOString());

export function checkManifest(c: DoctorContext, probes: readonly MirrorProbe[]): CheckResult {
  const t = 'manifest fresh';
  const s = c.state;
  if (!s) return { id: 'manifest', title: t, status: 'fail', evidence: 'no state', fix: 'start the agent' };
  if (c.manifestError !== undefined)
    return {
      id: 'manifest',
      title: t,
      status: 'fail',
      evidence: `the active manifest does not decode: ${c.manifestError}`,
      fix: 'let the agent poll again (ferry agent poll --now)',
    };
  if (!c.manifest)
    return {
      id: 'manifest',
      title: t,
      status: 'warn',
      evidence: `no manifest applied yet; last contact ${since(s.lastContactAt)}`,
      fix: 'import a bundle on the site mirror; the agent picks it up on its next poll',
    };
  const m = c.manifest;
  const expires = parseIsoUtc(m.expires)!;
  const ev = `sequence ${m.sequence} created ${m.created}, expires ${m.expires}; last contact ${since(s.lastContactAt)}`;
  if (expires <= trustedTime(s.trust, c.now))
    return {
      id: 'manifest',
      title: t,
      status: 'fail',
      evidence: `${ev}: expired (what it set up keeps running; nothing new is applied)`,
      fix: 'bring a newer bundle for this site to the mirror',
    };
  const ahead = probes.find((p) => p.sequence !== undefined && p.sequence > m.sequence);
  if (ahead)
    return {
      id: 'manifest',
      title: t,
      status: 'warn',
      evidence: `${ev}; ${ahead.url} serves sequence ${ahead.sequence}`,
      fix: 'ferry agent poll --now (or see why the agent refuses it: ferry agent status)',
    };
  const interval = (c.desired?.pollIntervalSec ?? 30) * 1000;
  const stale = Math.max(10 * interval, HOUR);
  if (s.lastContactAt === null || c.now - s.lastContactAt > stale)
    return {
      id: 'manifest',
      title: t,
      status: 'warn',
      evidence: `${ev}: not confirmed with a mirror for longer than ${Math.round(stale / 60_000)} min`,
      fix: 'check the mirror (see the mirrors check); the agent keeps applying this manifest meanwhile',
    };
  return ok('manifest', t, ev);
}

export async function checkBinary(c: DoctorContext): Promise<CheckResult> {
  const t = 'running binary matches the manifest';
  const root = c.o.installRoot;
  if (!root)
    return {
      id: 'binary',
      title: t,
      status: 'warn',
      evidence: 'no install root (started outside <root>/current/ferry-agent): self-update is off',
      fix: 'install with the kit, or pass --install-root',
    };
  const v = await currentVersion(root);
  if (v === undefined)
    return {
      id: 'binary',
      title: t,
      status: 'fail',
      evidence: `${join(root, 'current')} is missing`,
      fix: 'reinstall the agent (the kit) or ferry agent rollback',
    };
  const bin = versionBinary(root, v);
  let digest: string;
  try {
    digest = await sha256File(bin);
  } catch (e) {
    return {
      id: 'binary',
      title: t,
      status: 'fail',
      evidence: `${bin}: ${errText(e)}`,
      fix: 'reinstall the agent (the kit) or ferry agent rollback',
    };
  }
  const named = c.manifest?.artifacts.find(
    (a) => a.kind === 'agent' && a.version === v && (a.platform ?? platformTag()) === platformTag(),
  );
  if (!named)
    return ok(
      'binary',
      t,
      `${bin} sha256 ${digest}; the active manifest names no agent ${v} for ${platformTag()}`,
    );
  if (named.sha256 !== digest)
    return {
      id: 'binary',
      title: t,
      status: 'fail',
      evidence: `${bin} sha256 ${digest}, but the manifest names ${named.sha256} for ${v}`,
      fix: `the installed binary was changed: reinstall ${v} from a verified bundle, or ferry agent rollback`,
    };
  return ok('binary', t, `${bin} sha256 ${digest} as the manifest names for ${v}`);
}

const SETTLED = new Set(['idle', 'committed', 'rolled-back']);

export async function checkUpdate(c: DoctorContext): Promise<CheckResult> {
  const t = 'no stuck or stale pending update';
  let file;
  try {
    file = await readUpdateFile(c.stateDir);
  } catch (e) {
    return {
      id: 'update',
      title: t,
      status: 'fail',
      evidence: `update.json: ${errText(e)}`,
      fix: 'restore update.json or remove it (the update record starts over)',
    };
  }
  const pending = await readPendingRecord(c.stateDir);
  const m = file?.machine;
  if (!m)
    return pending === undefined
      ? ok('update', t, 'no update recorded')
      : stale(t, 'pending.json is there but no update is recorded');
  const ev = `phase ${m.phase}${m.version ? ` (${m.previous ?? '?'} → ${m.version})` : ''}`;
  if (SETTLED.has(m.phase))
    return pending === undefined
      ? ok('update', t, ev)
      : stale(t, `${ev}, yet pending.json is still there (the prestart script keeps counting starts)`);
  if (m.deadline !== null && c.now >= m.deadline)
    return stale(t, `${ev}: its deadline ${new Date(m.deadline).toISOString()} passed`);
  if (m.soakUntil !== null && c.now >= m.soakUntil)
    return stale(t, `${ev}: its soak ended ${new Date(m.soakUntil).toISOString()} without a commit`);
  const pid = c.o.inAgent ? process.pid : await runningAgent(c.stateDir);
  if (pid === undefined && ['downloading', 'verifying', 'staged', 'self-testing'].includes(m.phase))
    return stale(t, `${ev}, but no agent runs to finish it`);
  if (pid === undefined)
    return {
      id: 'update',
      title: t,
      status: 'warn',
      evidence: `${ev}; no agent runs: the next start health-checks ${m.version}`,
      fix: 'systemctl start ferry-agent',
    };
  return ok('update', t, `${ev}, in progress (agent pid ${pid})`);
}

function stale(title: string, evidence: string): CheckResult {
  return {
    id: 'update',
    title,
    status: 'fail',
    evidence,
    fix: "ferry agent doctor --fix (settles it by the update machine's own rules), with the agent stopped",
    fixable: 'update-stale',
  };
}

export async function checkOutbox(c: DoctorContext): Promise<CheckResult> {
  const t = 'outbox size and age';
  const { entries } = await listOutbox(c.stateDir);
  const l = DEFAULT_OUTBOX_LIMITS;
  const bytes = entries.reduce((n, e) => n + e.size, 0);
  const oldest = entries[0];
  const ev = `${entries.length} entr${entries.length === 1 ? 'y' : 'ies'}, ${bytes} bytes (cap ${l.maxEntries} entries, ${l.maxBytes} bytes)${oldest ? `, oldest ${new Date(oldest.mtimeMs).toISOString()}` : ''}`;
  const plan = compactionPlan(entries, l);
  if (plan.drop.length > 0 || !plan.fits)
    return {
      id: 'outbox',
      title: t,
      status: 'fail',
      evidence: `${ev}: over its cap`,
      fix: plan.fits
        ? `ferry agent doctor --fix (drops the ${plan.drop.length} oldest heartbeat(s), as the outbox itself does)`
        : 'only results remain: reconnect the agent to a mirror so they drain',
      ...(plan.drop.length > 0 && { fixable: 'outbox-compact' }),
    };
  if (entries.length > 0.8 * l.maxEntries || bytes > 0.8 * l.maxBytes)
    return {
      id: 'outbox',
      title: t,
      status: 'warn',
      evidence: `${ev}: near its cap`,
      fix: 'reconnect the agent to a mirror so the outbox drains',
    };
  if (oldest && c.now - oldest.mtimeMs > OUTBOX_AGE_WARN_MS)
    return {
      id: 'outbox',
      title: t,
      status: 'warn',
      evidence: `${ev}: undelivered for ${Math.round((c.now - oldest.mtimeMs) / HOUR)} h`,
      fix: 'reconnect the agent to a mirror so the outbox drains',
    };
  return ok('outbox', t, ev);
}
