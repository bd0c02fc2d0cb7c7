/**
 * Applies the last verified state locally, with no network: scripts that are
 * due run (interpreter on the node's allowlist, timeout, capped output), and
 * managed files are checked for drift and restored where the policy enforces.
 * Works the same connected or cut off, from the verified blob cache only.
 */
import { access } from 'node:fs/promises';
import type { Logger } from '../platform/log.js';
import type { Artifact } from '../core/manifest.js';
import { trustedTime } from '../core/freshness.js';
import { parseIsoUtc } from '../core/time.js';
import { desiredState, type PolicyProblem } from './desired.js';
import { blobCachePath } from './fetch.js';
import { placementKey, reconcileFiles, type FileReport } from './files.js';
import { MAX_REMEMBERED_RUN_NOW, type RunNowRequest } from './run-now.js';
import { dueScripts, type DueReason } from './schedule.js';
import { runScript } from './scripts.js';
import { activeManifest } from './sync.js';
import type { AgentState } from './agent-state.js';

export interface ApplyContext {
  cacheDir: string;
  log: Logger;
  now: () => number;
  /** Interpreters the node's owner allows. */
  allowlist: readonly string[];
  /** Node-wide switch for restoring managed files (false: report only). */
  enforceFiles: boolean;
  /** When this agent process started (for `boot` scripts). */
  bootAt: number;
  maxOutputBytes?: number;
  /**
   * The site's `run-now` requests (agent/run-now.ts): each id not yet handled runs its script once, when
   * the signed policy assigns that script to this agent; any other name runs nothing.
   */
  runNow?: readonly RunNowRequest[];
}

export interface ScriptReport {
  script: string;
  sha256: string;
  reason: string;
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  durationMs: number;
  stdout: string;
  stderr: string;
  truncated: boolean;
  /** Set when the agent refused to run it (e.g. INTERPRETER_NOT_ALLOWED). */
  refused?: { code: string; message: string };
  /** Set when a site's `run-now` request (this id) made it run now rather than its schedule. */
  forced?: { id: string };
}

export interface ApplyReport {
  sequence: number | null;
  expired: boolean;
  scripts: ScriptReport[];
  files: FileReport[];
  problems: PolicyProblem[];
  pollIntervalSec?: number;
}

export async function applyOnce(
  ctx: ApplyContext,
  state: AgentState,
): Promise<{ state: AgentState; report: ApplyReport }> {
  const manifest = activeManifest(state);
  const empty: ApplyReport = { sequence: null, expired: false, scripts: [], files: [], problems: [] };
  if (!manifest) return { state, report: empty };
  const cached = async (a: Artifact) => {
    const p = blobCachePath(ctx.cacheDir, a.sha256);
    await access(p);
    return p;
  };
  const desired = await desiredState(manifest, state.groups, cached);
  const now = ctx.now();
  // An expired manifest is never newly applied, but what it set up keeps running (last known good).
  const expired = parseIsoUtc(manifest.expires)! <= trustedTime(state.trust, now);

  const digests = new Map(desired.scripts.map((s) => [s.entry.script, s.artifact.sha256]));
  const due = dueScripts(
    { scripts: desired.scripts.map((s) => s.entry) },
    state.groups,
    digests,
    state.scripts,
    now,
    {
      bootAt: ctx.bootAt,
    },
  );
  const scripts: ScriptReport[] = [];
  const history = { ...state.scripts };
  // A run-now request is read against the signed policy: it only makes a script this agent runs anyway
  // run sooner, once per id. A script already due this cycle runs once, as scheduled.
  const handled = new Set(state.runNow ?? []);
  const runs: { d: { script: string; reason: DueReason | 'run-now' }; forced?: { id: string } }[] = due.map(
    (d) => ({ d }),
  );
  for (const r of ctx.runNow ?? []) {
    if (handled.has(r.id)) continue;
    handled.add(r.id);
    if (!desired.scripts.some((x) => x.entry.script === r.script)) {
      ctx.log.warn('script.run_now_ignored', {
        id: r.id,
        script: r.script,
        reason: 'the signed policy does not assign this script to this agent',
      });
      continue;
    }
    if (runs.some((x) => x.d.script === r.script)) continue;
    runs.push({ d: { script: r.script, reason: 'run-now' }, forced: { id: r.id } });
  }
  for (const { d, forced } of runs) {
    const s = desired.scripts.find((x) => x.entry.script === d.script)!;
    const startedAt = ctx.now();
    const base = {
      script: d.script,
      sha256: s.artifact.sha256,
      reason: d.reason,
      ...(forced && { forced }),
    };
    try {
      const r = await runScript({
        path: await cached(s.artifact),
        interpreter: s.artifact.interpreter ?? 'sh',
        args: s.entry.args,
        timeoutSec: s.entry.timeoutSec,
        allowlist: ctx.allowlist,
        ...(ctx.maxOutputBytes !== undefined && { maxOutputBytes: ctx.maxOutputBytes }),
      });
      scripts.push({
        ...base,
        exitCode: r.exitCode,
        signal: r.signal,
        timedOut: r.timedOut,
        durationMs: r.durationMs,
        stdout: r.stdout.text,
        stderr: r.stderr.text,
        truncated: r.stdout.truncated || r.stderr.truncated,
      });
      history[d.script] = { digest: s.artifact.sha256, lastRunAt: startedAt, lastExit: r.exitCode };
      ctx.log.info('script.ran', {
        script: d.script,
        reason: d.reason,
        exitCode: r.exitCode,
        timedOut: r.timedOut,
        ms: r.durationMs,
      });
    } catch (e) {
      const c = (e as { code?: unknown }).code;
      const code = typeof c === 'string' ? c : 'SCRIPT_FAILED';
      const message = (e as Error).message;
      // recorded like a run, so a refused `once` script is not retried every cycle until its digest changes
      history[d.script] = { digest: s.artifact.sha256, lastRunAt: startedAt, lastExit: null };
      scripts.push({
        ...base,
        exitCode: null,
        signal: null,
        timedOut: false,
        durationMs: 0,
        stdout: '',
        stderr: '',
        truncated: false,
        refused: { code, message },
      });
      ctx.log.warn('script.refused', { script: d.script, code, reason: message });
    }
  }

  const blobs = new Map(
    desired.files.map((f) => [
      f.entry.artifact,
      { path: blobCachePath(ctx.cacheDir, f.artifact.sha256), sha256: f.artifact.sha256 },
    ]),
  );
  const placedBefore = new Set(state.placed ?? []);
  const files = await reconcileFiles(
    desired.files.map((f) => f.entry),
    blobs,
    { enforce: ctx.enforceFiles, placedBefore },
  );
  for (const f of files) {
    const b = blobs.get(f.artifact);
    if (b && (f.action === 'placed' || f.action === 'restored' || f.status === 'ok'))
      placedBefore.add(placementKey(f.path, b.sha256));
    if (f.status !== 'ok') ctx.log.warn('file.drift', { path: f.path, status: f.status, action: f.action });
  }
  return {
    state: {
      ...state,
      scripts: history,
      placed: [...placedBefore],
      ...(handled.size > 0 && { runNow: [...handled].slice(-MAX_REMEMBERED_RUN_NOW) }),
    },
    report: {
      sequence: manifest.sequence,
      expired,
      scripts,
      files,
      problems: desired.problems,
      ...(desired.pollIntervalSec !== undefined && { pollIntervalSec: desired.pollIntervalSec }),
    },
  };
}
