/**
 * Checks of what the agent keeps and runs: the active manifest, the running
 * binary, a pending self-update, the outbox, managed files, the blob cache and
 * temp files a crash left. Each only reads.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { trustedTime } from '../../core/freshness.js';
import { parseIsoUtc } from '../../core/time.js';
import { checkFile } from '../files.js';
import { blobCachePath } from '../fetch.js';
import { compactionPlan, DEFAULT_OUTBOX_LIMITS, listOutbox } from '../outbox.js';
import { currentVersion, platformTag, versionBinary } from '../update/install.js';
import { readPendingRecord, readUpdateFile } from '../update/update-file.js';
import type { DoctorContext } from './context.js';
import { runningAgent } from './holder.js';
import type { MirrorProbe } from './mirrors.js';
import { errText, ok, type CheckResult } from './types.js';

const HOUR = 3_600_000;
/** Blobs re-hashed without --deep: those the active manifest needs first, then others. */
export const CACHE_SAMPLE = 8;
/** A temp file older than this was left by a crash, not by a write under way. */
export const TEMP_STALE_MS = 10 * 60_000;
/** An undelivered outbox entry older than this is worth a word. */
export const OUTBOX_AGE_WARN_MS = 24 * HOUR;

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

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

export async function checkFiles(c: DoctorContext): Promise<CheckResult> {
  const t = 'managed files without drift';
  if (!c.desired) return ok('files', t, 'no active policy');
  if (c.desired.files.length === 0) return ok('files', t, 'the policy manages no files');
  const bad: string[] = [];
  let restorable = false;
  for (const f of c.desired.files) {
    let status: string;
    try {
      status = await checkFile(f.entry, f.artifact.sha256);
    } catch (e) {
      status = errText(e);
    }
    if (status === 'ok') continue;
    bad.push(`${f.entry.path}: ${status}`);
    if (await stat(blobCachePath(c.cacheDir, f.artifact.sha256)).catch(() => undefined)) restorable = true;
  }
  if (bad.length === 0) return ok('files', t, `${c.desired.files.length} file(s) as the policy says`);
  return {
    id: 'files',
    title: t,
    status: 'fail',
    evidence: bad.join('; '),
    fix: 'ferry agent doctor --fix (restores the signed bytes and mode from the verified cache)',
    ...(restorable && { fixable: 'file-drift' }),
  };
}

/** Cached blobs to re-hash: all with `deep`, else those the active manifest needs first, up to CACHE_SAMPLE. */
export async function cacheSample(c: DoctorContext): Promise<{ all: number; sample: string[] }> {
  const dir = join(c.cacheDir, 'blobs', 'sha256');
  const names = (await readdir(dir).catch(() => [])).filter((n) => /^[0-9a-f]{64}$/.test(n)).sort();
  if (c.o.deep) return { all: names.length, sample: names };
  const needed = new Set(c.manifest?.artifacts.map((a) => a.sha256) ?? []);
  const first = names.filter((n) => needed.has(n));
  const rest = names.filter((n) => !needed.has(n));
  return { all: names.length, sample: [...first, ...rest].slice(0, CACHE_SAMPLE) };
}

/** Cached blobs whose bytes do not hash to their name. */
export async function corruptBlobs(
  c: DoctorContext,
): Promise<{ all: number; checked: number; corrupt: string[] }> {
  const { all, sample } = await cacheSample(c);
  const corrupt: string[] = [];
  for (const n of sample) {
    const got = await sha256File(blobCachePath(c.cacheDir, n)).catch(() => 'unreadable');
    if (got !== n) corrupt.push(n);
  }
  return { all, checked: sample.length, corrupt };
}

export async function checkCache(c: DoctorContext): Promise<CheckResult> {
  const t = 'cached blobs intact';
  const r = await corruptBlobs(c);
  const ev = `${r.checked} of ${r.all} blob(s) re-hashed${c.o.deep ? ' (--deep)' : ''}`;
  if (r.corrupt.length === 0) return ok('cache', t, ev);
  return {
    id: 'cache',
    title: t,
    status: 'fail',
    evidence: `${ev}; corrupt: ${r.corrupt.map((n) => blobCachePath(c.cacheDir, n)).join(', ')}`,
    fix: 'ferry agent doctor --fix (deletes them; the next poll fetches them again)',
    fixable: 'cache-corrupt',
  };
}

/** Temp files a crash left under the state and install directories, older than TEMP_STALE_MS. */
export async function staleTemps(c: DoctorContext): Promise<string[]> {
  const out: string[] = [];
  const scan = async (dir: string, match: (n: string) => boolean) => {
    for (const n of await readdir(dir).catch(() => [])) {
      if (!match(n)) continue;
      const p = join(dir, n);
      const st = await lstat(p).catch(() => undefined);
      if ((st?.isFile() || st?.isSymbolicLink()) && c.now - st.mtimeMs > TEMP_STALE_MS) out.push(p);
    }
  };
  const atomicTemp = (n: string) => /^\..+\.tmp$/.test(n);
  await scan(c.stateDir, (n) => atomicTemp(n) || /^agent\.lock\..+\.tmp$/.test(n));
  await scan(join(c.stateDir, 'outbox'), atomicTemp);
  await scan(join(c.stateDir, 'keys'), atomicTemp);
  await scan(join(c.cacheDir, 'tmp'), (n) => n.endsWith('.part'));
  const root = c.o.installRoot;
  if (root) {
    await scan(root, (n) => n === 'current.tmp');
    for (const v of await readdir(join(root, 'versions')).catch(() => []))
      await scan(join(root, 'versions', v), (n) => n === 'ferry-agent.tmp');
  }
  return out;
}

export async function checkTemps(c: DoctorContext): Promise<CheckResult> {
  const t = 'no stale temp files';
  const found = await staleTemps(c);
  if (found.length === 0) return ok('temp', t, 'none older than 10 min');
  return {
    id: 'temp',
    title: t,
    status: 'warn',
    evidence: `${found.length} left by an interrupted write: ${found.slice(0, 5).join(', ')}${found.length > 5 ? ', …' : ''}`,
    fix: 'ferry agent doctor --fix (removes them)',
    fixable: 'temp-files',
  };
}
