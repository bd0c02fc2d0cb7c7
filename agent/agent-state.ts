/**
 * The agent's durable state (state.json under its state directory), read and
 * validated field by field, written atomically (temp + fsync + rename + dir
 * fsync). A kill -9 at any moment leaves the previous state or the next one.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseEnvelope } from '../core/dsse.js';
import { decodeBase64Strict } from '../core/encoding.js';
import { FerryError } from '../core/errors.js';
import { initialFreshness, type Freshness } from '../core/freshness.js';
import { parseIsoUtc } from '../core/time.js';
import { writeFileAtomic } from '../platform/fsx.js';

export interface ActiveManifest {
  publisher: string;
  sequence: number;
  payloadDigest: string;
  /** The verified envelope, exact bytes in base64, so the agent can re-derive its desired state offline. */
  envelope: string;
}

export interface ScriptRun {
  digest: string;
  lastRunAt: number;
  lastExit: number | null;
}

export interface AgentState {
  format: 'ferry.agent-state/v1';
  site: string;
  groups: string[];
  /** Mirror base URLs in failover order, as last configured. */
  mirrors: string[];
  agentId: string | null;
  /** Trusted root envelopes, exact bytes in base64: the pinned one first, each the next version. */
  roots: string[];
  /**
   * The one sequence mark (with the keys that signed it) and the latest signed
   * time seen (core/freshness.ts). Never a reading of the local clock.
   */
  trust: Freshness;
  active: ActiveManifest | null;
  /** ETag of the manifest last fetched, for If-None-Match. */
  etag: string | null;
  scripts: Record<string, ScriptRun>;
  lastContactAt: number | null;
  disconnectedSince: number | null;
  /** Last heartbeat counter used; strictly increasing across restarts. */
  counter: number;
  /** Managed files this agent has placed, as `placementKey(path, sha256)`. */
  placed?: string[];
  /** Ids of the site's run-now requests already handled, oldest first (at most 256; agent/run-now.ts). */
  runNow?: string[];
}

export const stateFile = (dir: string) => join(dir, 'state.json');

export function initialState(o: {
  site: string;
  groups: string[];
  mirrors: string[];
  pinnedRoot: Buffer;
}): AgentState {
  return {
    format: 'ferry.agent-state/v1',
    site: o.site,
    groups: o.groups,
    mirrors: o.mirrors,
    agentId: null,
    roots: [o.pinnedRoot.toString('base64')],
    trust: initialFreshness(),
    active: null,
    etag: null,
    scripts: {},
    lastContactAt: null,
    disconnectedSince: null,
    counter: 0,
  };
}

const bad = (field: string) => new FerryError('IO_ERROR', `agent state: ${field} is missing or malformed`);
const isObj = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);
const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const isStrArr = (v: unknown): v is string[] => Array.isArray(v) && v.every((x) => typeof x === 'string');

export function assertAgentState(v: unknown): asserts v is AgentState {
  if (!isObj(v) || v.format !== 'ferry.agent-state/v1') throw bad('format');
  if (typeof v.site !== 'string') throw bad('site');
  if (!isStrArr(v.groups)) throw bad('groups');
  if (!isStrArr(v.mirrors)) throw bad('mirrors');
  if (v.agentId !== null && typeof v.agentId !== 'string') throw bad('agentId');
  if (!isStrArr(v.roots) || v.roots.length === 0) throw bad('roots');
  const t = v.trust;
  if (!isObj(t) || !isNum(t.signedTime)) throw bad('trust');
  const m = t.mark;
  if (
    m !== null &&
    (!isObj(m) ||
      !isNum(m.sequence) ||
      typeof m.payloadDigest !== 'string' ||
      (m.signers !== null && !isStrArr(m.signers)))
  )
    throw bad('trust.mark');
  const a = v.active;
  if (
    a !== null &&
    (!isObj(a) || typeof a.publisher !== 'string' || !isNum(a.sequence) || typeof a.envelope !== 'string')
  ) {
    throw bad('active');
  }
  if (v.etag !== null && typeof v.etag !== 'string') throw bad('etag');
  if (!isObj(v.scripts)) throw bad('scripts');
  for (const s of Object.values(v.scripts))
    if (!isObj(s) || typeof s.digest !== 'string' || !isNum(s.lastRunAt)) throw bad('scripts');
  if (v.lastContactAt !== null && !isNum(v.lastContactAt)) throw bad('lastContactAt');
  if (v.disconnectedSince !== null && !isNum(v.disconnectedSince)) throw bad('disconnectedSince');
  if (!isNum(v.counter)) throw bad('counter');
  if (v.placed !== undefined && !isStrArr(v.placed)) throw bad('placed');
  if (v.runNow !== undefined && !isStrArr(v.runNow)) throw bad('runNow');
}

/** Reads state.json, or undefined when the agent has never run with this directory. */
export async function readAgentState(dir: string): Promise<AgentState | undefined> {
  let text: string;
  try {
    text = await readFile(stateFile(dir), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new FerryError('IO_ERROR', `cannot read agent state: ${(e as Error).message}`, { cause: e });
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new FerryError('IO_ERROR', 'agent state: state.json is not valid JSON', { cause: e });
  }
  v = migrate(v);
  assertAgentState(v);
  return v;
}

/** True for a state.json written by an older agent (read fine, migrated in memory until the next write). */
export function isOlderFormat(v: unknown): boolean {
  return isObj(v) && isObj(v.trust) && 'publishers' in v.trust;
}

/**
 * A state.json written before the one sequence space kept a mark per
 * publisher and `highestTime`, which mixed the agent's own clock readings into
 * time evidence (one poll with the clock in the future made every fresh
 * manifest expired). The single mark becomes the highest of the per-publisher
 * marks (signers unknown: it binds until the next accepted manifest); the
 * signed time is recovered from the active manifest's `created`, the only
 * signed time the old file still holds, and `highestTime` is dropped.
 */
function migrate(v: unknown): unknown {
  if (!isObj(v) || !isObj(v.trust) || !('publishers' in v.trust)) return v;
  const { publishers } = v.trust;
  if (!isObj(publishers)) throw bad('trust.publishers');
  let mark: Freshness['mark'] = null;
  for (const p of Object.values(publishers)) {
    if (!isObj(p) || !isNum(p.sequence) || typeof p.payloadDigest !== 'string') throw bad('trust.publishers');
    if (mark === null || p.sequence > mark.sequence)
      mark = { sequence: p.sequence, payloadDigest: p.payloadDigest, signers: null };
  }
  return { ...v, trust: { mark, signedTime: activeCreated(v.active) } };
}

function activeCreated(active: unknown): number {
  if (!isObj(active) || typeof active.envelope !== 'string') return 0;
  try {
    const env = parseEnvelope(decodeBase64Strict(active.envelope, 'active'), 'active manifest');
    const payload = JSON.parse(decodeBase64Strict(env.payload, 'active payload').toString('utf8')) as unknown;
    return (isObj(payload) && parseIsoUtc(payload.created)) || 0;
  } catch {
    return 0;
  }
}

export async function writeAgentState(dir: string, state: AgentState): Promise<void> {
  await writeFileAtomic(stateFile(dir), JSON.stringify(state) + '\n', { mode: 0o600 });
}
