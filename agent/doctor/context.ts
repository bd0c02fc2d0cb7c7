/**
 * What every check reads, loaded once and only read: state.json (as stored and
 * as the agent would use it), the active manifest and what it asks of this
 * node. A part that cannot be loaded is recorded with its reason; the checks
 * that need it say so and the others still run.
 */
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Manifest } from '../../core/manifest.js';
import { isOlderFormat, readAgentState, stateFile, type AgentState } from '../agent-state.js';
import { blobCachePath } from '../fetch.js';
import { desiredState, type Desired } from '../desired.js';
import { activeManifest } from '../sync.js';
import { errText, type DoctorOptions } from './types.js';

export interface DoctorContext {
  o: DoctorOptions;
  now: number;
  stateDir: string;
  cacheDir: string;
  state: AgentState | undefined;
  /** Why state.json could not be used (missing, unreadable, malformed). */
  stateError?: string;
  /** state.json was written by an older agent. */
  olderFormat: boolean;
  manifest: Manifest | undefined;
  manifestError?: string;
  desired: Desired | undefined;
}

export async function loadContext(o: DoctorOptions): Promise<DoctorContext> {
  const stateDir = resolve(o.stateDir);
  const cacheDir = join(stateDir, 'cache');
  const ctx: DoctorContext = {
    o,
    now: (o.now ?? Date.now)(),
    stateDir,
    cacheDir,
    state: undefined,
    olderFormat: false,
    manifest: undefined,
    desired: undefined,
  };
  try {
    ctx.olderFormat = isOlderFormat(JSON.parse(await readFile(stateFile(stateDir), 'utf8')));
  } catch {
    // readAgentState below names the problem
  }
  try {
    ctx.state = await readAgentState(stateDir);
    if (!ctx.state) ctx.stateError = `${stateFile(stateDir)} does not exist (the agent never ran here)`;
  } catch (e) {
    ctx.stateError = errText(e);
  }
  if (ctx.state?.active) {
    try {
      ctx.manifest = activeManifest(ctx.state);
    } catch (e) {
      ctx.manifestError = errText(e);
    }
  }
  if (ctx.manifest && ctx.state) {
    const path = (a: { sha256: string }) => Promise.resolve(blobCachePath(cacheDir, a.sha256));
    ctx.desired = await desiredState(ctx.manifest, ctx.state.groups, path);
  }
  return ctx;
}
