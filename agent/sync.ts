/**
 * One conversation with the site's mirrors: walk the root chain forward,
 * fetch the manifest (ETag), verify it ourselves, decide, fetch the blobs this
 * agent needs, and only then make the new manifest active. The mirror is never
 * trusted: a mirror that serves a bad root, manifest or blob is backed off and
 * the next one is tried. Nothing is written unless it verified.
 */
import { createHash } from 'node:crypto';
import { parseEnvelope, serializeEnvelope, verifyEnvelope, type Envelope } from '../core/dsse.js';
import { decodeBase64Strict } from '../core/encoding.js';
import { CodedError, isFerryError, type FerryErrorCode } from '../core/errors.js';
import { JsonError, parseJsonStrict } from '../core/json.js';
import { isStorageFull, request, type ClientLimits } from '../platform/http/client.js';
import type { Logger } from '../platform/log.js';
import {
  decodeManifest,
  MANIFEST_PAYLOAD_TYPE,
  MAX_MANIFEST_BYTES,
  type Artifact,
  type Manifest,
} from '../core/manifest.js';
import {
  trustStoredChain,
  walkRootChain,
  MAX_ROOT_BYTES,
  MAX_ROOT_CHAIN_BYTES,
  type TrustedRoot,
} from '../core/root.js';
import { decideFreshness, rootRefusal, underRoot } from '../core/freshness.js';
import { fetchBlob, type MirrorSet } from './fetch.js';
import { neededBlobs } from './desired.js';
import type { AgentState } from './agent-state.js';

export interface SyncContext {
  cacheDir: string;
  mirrors: MirrorSet;
  log: Logger;
  now: () => number;
  timeoutMs: number;
  /** Deadlines, floor rate and disk reserve of the HTTP client (defaults when absent). */
  limits?: Partial<ClientLimits>;
  /** Download progress of blobs (metrics). */
  onBytes?: (have: number, total: number, received: number) => void;
}

export type SyncOutcome =
  | { kind: 'updated'; sequence: number; mirror: string }
  | { kind: 'unchanged'; mirror: string }
  | { kind: 'refused'; code: string; reason: string }
  | { kind: 'unreachable'; reason: string };

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** Asks each usable mirror in turn; returns the new state (never persisted here) and what happened. */
export async function syncOnce(
  ctx: SyncContext,
  state: AgentState,
): Promise<{ state: AgentState; outcome: SyncOutcome }> {
  let lastRefusal: SyncOutcome | undefined;
  let lastError = 'no mirror answered';
  for (const mirror of ctx.mirrors.candidates(ctx.now())) {
    const failuresBefore = ctx.mirrors.failures(mirror);
    try {
      const r = await syncWith(ctx, state, mirror);
      // a mirror that served a bad blob during this very sync stays backed off
      if (ctx.mirrors.failures(mirror) === failuresBefore) ctx.mirrors.markGood(mirror);
      const now = ctx.now();
      return { state: { ...r.state, lastContactAt: now, disconnectedSince: null }, outcome: r.outcome };
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      const reason = (e as Error).message;
      if (isStorageFull(e)) {
        // Our own disk, not the mirror: no other mirror will do better; keep the last verified state.
        ctx.log.error('sync.storage_full', { mirror, reason });
        return {
          state: { ...state, lastContactAt: ctx.now(), disconnectedSince: null },
          outcome: { kind: 'refused', code: e.code, reason },
        };
      }
      ctx.mirrors.markBad(mirror, reason, ctx.now());
      if (e instanceof Refusal) {
        // a mirror that serves something that does not verify is skipped for a while
        ctx.log.warn('sync.refused', { mirror, code: e.code, reason });
        lastRefusal = { kind: 'refused', code: e.code, reason };
        state = e.state ?? state;
      } else {
        ctx.log.warn('sync.mirror_failed', {
          mirror,
          code: typeof code === 'string' ? code : 'ERROR',
          reason,
        });
        lastError = reason;
      }
    }
  }
  if (lastRefusal)
    return { state: { ...state, lastContactAt: ctx.now(), disconnectedSince: null }, outcome: lastRefusal };
  return {
    state: { ...state, disconnectedSince: state.disconnectedSince ?? ctx.now() },
    outcome: { kind: 'unreachable', reason: lastError },
  };
}

/**
 * A mirror served something that does not verify or is not acceptable. Coded like every other refusal;
 * `state` is what the agent learnt before refusing (a root adopted, a sequence seen), kept even so.
 */
export class Refusal extends CodedError<FerryErrorCode> {
  constructor(
    code: FerryErrorCode,
    message: string,
    readonly state?: AgentState,
  ) {
    super(code, message);
  }
}

/** A capped GET whose body is strict JSON (core/json.ts) no deeper than `maxDepth`. */
async function getJson(url: string, ctx: SyncContext, maxBytes: number, maxDepth: number): Promise<unknown> {
  const r = await request(url, {
    timeoutMs: ctx.timeoutMs,
    maxBytes,
    ...(ctx.limits && { limits: ctx.limits }),
  });
  if (r.status !== 200) throw new Error(`${url}: HTTP ${r.status}`);
  try {
    return parseJsonStrict(r.body, { maxBytes, maxDepth });
  } catch (e) {
    if (!(e instanceof JsonError)) throw e;
    throw new Refusal('ENVELOPE_INVALID', `${url}: not strict JSON: ${e.message}`);
  }
}

async function syncWith(
  ctx: SyncContext,
  state: AgentState,
  mirror: string,
): Promise<{ state: AgentState; outcome: SyncOutcome }> {
  // 1. Roots: adopt only versions that chain from what we trust, one at a time.
  let trusted = trustStoredChain(state.roots);
  // the chain as a list of envelopes: list → envelope → signatures → signature
  const served = await getJson(`${mirror}/v1/root`, ctx, MAX_ROOT_CHAIN_BYTES, 4);
  if (!Array.isArray(served)) throw new Refusal('ROOT_INVALID', 'mirror /v1/root is not a list');
  let roots = state.roots;
  let adopted = false;
  try {
    const envs: Envelope[] = served.map((v) => parseEnvelope(JSON.stringify(v), 'root', MAX_ROOT_BYTES));
    const walked = walkRootChain(trusted, envs);
    if (walked.adopted.length > 0) {
      adopted = true;
      roots = [
        ...roots,
        ...walked.adopted.map((r) => Buffer.from(serializeEnvelope(r.envelope)).toString('base64')),
      ];
      ctx.log.info('sync.root_adopted', { mirror, versions: walked.adopted.map((r) => r.payload.version) });
    }
    trusted = walked.root;
  } catch (e) {
    if (isFerryError(e)) throw new Refusal(e.code, e.message);
    throw e;
  }
  // Expiry of the root is judged against trusted time (the clock, or later signed time seen that still holds).
  const expired = rootRefusal(state.trust, trusted.payload, ctx.now());
  if (expired) throw new Refusal(expired.code, expired.reason);
  state = { ...state, roots, trust: underRoot(state.trust, trusted.payload) };
  if (adopted) state = revokeActive(ctx, state, trusted, mirror);

  // 2. Manifest, conditional on what we already hold.
  const headers: Record<string, string> = state.active && state.etag ? { 'If-None-Match': state.etag } : {};
  const res = await request(`${mirror}/v1/manifest`, {
    timeoutMs: ctx.timeoutMs,
    maxBytes: MAX_MANIFEST_BYTES,
    headers,
    ...(ctx.limits && { limits: ctx.limits }),
  });
  if (res.status === 304) return { state, outcome: { kind: 'unchanged', mirror } };
  if (res.status === 404) return { state, outcome: { kind: 'unchanged', mirror } }; // the mirror has nothing yet
  if (res.status !== 200) throw new Error(`${mirror}/v1/manifest: HTTP ${res.status}`);
  let manifest: Manifest;
  let payloadDigest: string;
  let signers: string[];
  try {
    const env = parseEnvelope(res.body, 'manifest envelope');
    const checked = verifyEnvelope(env, MANIFEST_PAYLOAD_TYPE, trusted.roles.bundle, 'manifest');
    manifest = decodeManifest(checked.body);
    payloadDigest = sha256(checked.body);
    signers = checked.signers;
  } catch (e) {
    if (isFerryError(e)) throw new Refusal(e.code, e.message, state);
    throw e;
  }
  // What is already running keeps running once expired (reported by apply); nothing expired is newly applied.
  const decision = decideFreshness(state.trust, { manifest, payloadDigest, signers }, trusted.payload, {
    site: state.site,
    clock: ctx.now(),
    acceptedExpired: 'keep',
  });
  const etag = typeof res.headers.etag === 'string' ? res.headers.etag : null;
  if (decision.kind === 'refuse') throw new Refusal(decision.code, decision.reason, state);
  if (decision.kind === 'same')
    return { state: { ...state, trust: decision.next, etag }, outcome: { kind: 'unchanged', mirror } };

  // 3. Blobs this agent needs; the manifest becomes active only when all are verified in the cache.
  const fetchOne = (a: Artifact) =>
    fetchBlob(ctx.mirrors, a, ctx.cacheDir, {
      timeoutMs: ctx.timeoutMs,
      log: ctx.log,
      ...(ctx.limits && { limits: ctx.limits }),
      ...(ctx.onBytes && { onBytes: ctx.onBytes }),
    });
  for (const a of await neededBlobs(manifest, state.groups, fetchOne)) await fetchOne(a);
  const next: AgentState = {
    ...state,
    trust: decision.next,
    etag,
    active: {
      publisher: manifest.publisher,
      sequence: manifest.sequence,
      payloadDigest,
      envelope: res.body.toString('base64'),
    },
  };
  ctx.log.info('sync.updated', { mirror, publisher: manifest.publisher, sequence: manifest.sequence });
  return { state: next, outcome: { kind: 'updated', sequence: manifest.sequence, mirror } };
}

/**
 * After adopting a root: an active manifest whose signatures no longer meet
 * the new bundle threshold (signed only by keys the root removed) stops being
 * applied. The mark it set no longer binds either (core/freshness.ts), so the
 * next honest manifest under the new root is accepted whatever its sequence.
 */
function revokeActive(ctx: SyncContext, state: AgentState, root: TrustedRoot, mirror: string): AgentState {
  if (!state.active) return state;
  try {
    const env = parseEnvelope(decodeBase64Strict(state.active.envelope, 'active'), 'active manifest');
    verifyEnvelope(env, MANIFEST_PAYLOAD_TYPE, root.roles.bundle, 'active manifest');
    return state;
  } catch (e) {
    if (!isFerryError(e)) throw e;
    ctx.log.warn('sync.active_revoked', {
      mirror,
      sequence: state.active.sequence,
      rootVersion: root.payload.version,
      code: e.code,
      reason: e.message,
    });
    return { ...state, active: null, etag: null };
  }
}

/** The active manifest as verified when it was accepted. */
export function activeManifest(state: AgentState): Manifest | undefined {
  if (!state.active) return undefined;
  const env = parseEnvelope(decodeBase64Strict(state.active.envelope, 'active'), 'active manifest');
  return decodeManifest(decodeBase64Strict(env.payload, 'active manifest payload'));
}
