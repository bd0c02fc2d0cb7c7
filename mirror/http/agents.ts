/**
 * Agent routes: `POST /v1/enroll` and `POST /v1/telemetry`. Request bodies are
 * read raw with a size cap and parsed strictly here (no body parser).
 *
 * Enrolment needs a token made with `ferry mirror token create` (mirror/tokens.ts),
 * inside the agent's signed request: missing, malformed, unknown, expired,
 * exhausted, revoked and other-site tokens are refused (401/400/403 with a
 * TOKEN_* code) before anything is written. The groups recorded are the token's,
 * not the agent's claim. An agent already enrolled here gets its id back
 * without a token and without any change; a revoked one is refused
 * (AGENT_REVOKED). Only `serve --open-enrolment` admits requests without a
 * token, with the groups they claim.
 *
 * Telemetry takes one heartbeat envelope or {envelopes:[…]} from agents. Each
 * item is checked on its own (shape, enrolled agent, signature under that
 * agent's key, payload, counter); the answer is 202 {accepted, rejected:[{index, code}]}
 * once every accepted item is fsynced, or 400 when none was accepted.
 *
 * From other mirrors it takes {batches:[{envelope, via}]}: mirror-signed
 * batches this mirror carries on as they are (the server checks them end to
 * end). With pinned relay keys (`serve --relay-key`), each batch must verify
 * under the pinned key of the mirror it names, or the whole request is refused
 * with 403 RELAY_UNTRUSTED; with none pinned, every batch is. A batch whose range
 * of its mirror's sequence was taken before is a replay: acknowledged, not
 * stored again (202 {stored, duplicates}). The whole request is refused with 409 LOOP when a batch already crossed this mirror, and, when
 * the sender is a peer looking for a route (`Ferry-Relay: peer`), with 503
 * NO_ROUTE while this mirror has no working upstream itself. Otherwise 202
 * {stored} once the batches are durable in the outbox.
 */
import Router from '@koa/router';
import type { Context } from 'koa';
import { assertEnvelope, type Envelope } from '../../core/dsse.js';
import { isCodedError, isFerryError } from '../../core/errors.js';
import { agentIdOf, openHeartbeatAsync, verifyEnrollRequest, type Heartbeat } from '../../core/heartbeat.js';
import { doctorReportsFor } from '../doctor-reports.js';
import {
  assertCarriedBatch,
  claimBatch,
  verifyClaimedBatch,
  type BatchPayload,
  type CarriedBatch,
  type ClaimedBatch,
} from '../../core/telemetry.js';
import type { AcceptedHeartbeat, AgentsStore, EnrolGrant } from '../agents.js';
import type { CheckedBatch } from '../relayed.js';
import { isTokenError, type TokenCode } from '../tokens.js';
import { HttpError, type HttpErrorCode } from './errors.js';
import { readJsonBody } from '../../platform/http/server-body.js';

export interface AgentRouteLimits {
  enrollBodyBytes: number;
  telemetryBodyBytes: number;
  /** Envelopes in one telemetry request. */
  telemetryItems: number;
  /** How far an enrolment's `at` may be from the mirror's clock. */
  enrollSkewMs: number;
  /** Batches in one relay request from another mirror, and its body size. */
  relayBatches: number;
  relayBodyBytes: number;
}

export const DEFAULT_AGENT_ROUTE_LIMITS: AgentRouteLimits = {
  enrollBodyBytes: 16 * 1024,
  telemetryBodyBytes: 1024 * 1024,
  relayBodyBytes: 32 * 1024 * 1024,
  telemetryItems: 1000,
  enrollSkewMs: 15 * 60 * 1000,
  relayBatches: 64,
};

export type TelemetryItemCode = Extract<
  HttpErrorCode,
  'BAD_ENVELOPE' | 'UNKNOWN_AGENT' | 'AGENT_REVOKED' | 'BAD_SIGNATURE' | 'BAD_HEARTBEAT' | 'REPLAY'
>;

const TOKEN_STATUS: Record<TokenCode, number> = {
  TOKEN_MISSING: 401,
  TOKEN_MALFORMED: 400,
  TOKEN_UNKNOWN: 403,
  TOKEN_EXPIRED: 403,
  TOKEN_EXHAUSTED: 403,
  TOKEN_REVOKED: 403,
  TOKEN_WRONG_SITE: 403,
};

function enrollError(e: unknown): never {
  if (isFerryError(e) && e.code === 'SIGNATURE_THRESHOLD')
    throw new HttpError(400, 'BAD_SIGNATURE', 'enrolment is not signed by the key it enrols');
  if (isFerryError(e)) throw new HttpError(400, 'BAD_ENROLMENT', e.message);
  throw e;
}

function itemCode(e: unknown): TelemetryItemCode {
  if (!isFerryError(e)) throw e;
  if (e.code === 'SIGNATURE_THRESHOLD') return 'BAD_SIGNATURE';
  return 'BAD_HEARTBEAT';
}

async function checkItem(
  agents: AgentsStore,
  v: unknown,
): Promise<{ ok: true; item: AcceptedHeartbeat } | { ok: false; code: TelemetryItemCode }> {
  let env: Envelope;
  try {
    assertEnvelope(v, 'heartbeat');
    env = v;
  } catch {
    return { ok: false, code: 'BAD_ENVELOPE' };
  }
  try {
    const opened = await openHeartbeatAsync(env, (id) => agents.publicKeyOf(id));
    if ('unknownAgent' in opened) return { ok: false, code: 'UNKNOWN_AGENT' };
    const { heartbeat } = opened;
    const agentId = heartbeat.agentId;
    if (await agents.isRevoked(agentId)) return { ok: false, code: 'AGENT_REVOKED' };
    // Cheap early refusal; the commit re-checks under its own serialisation.
    if (heartbeat.counter <= (await agents.lastCounter(agentId))) return { ok: false, code: 'REPLAY' };
    // Stored as DSSE and nothing else: unknown fields a client added do not reach the log.
    const envelope: Envelope = {
      payloadType: env.payloadType,
      payload: env.payload,
      signatures: env.signatures.map((x) => ({
        ...(x.keyid !== undefined && { keyid: x.keyid }),
        sig: x.sig,
      })),
    };
    return { ok: true, item: { heartbeat, envelope } };
  } catch (e) {
    return { ok: false, code: itemCode(e) };
  }
}

/**
 * An agent's telemetry request, parsed: checks each envelope, commits the
 * good ones (durably) and says what happened. Shared by the Koa route and the
 * fast path (http/fast.ts).
 */
export async function acceptAgentTelemetry(
  agents: AgentsStore,
  body: unknown,
  l: Pick<AgentRouteLimits, 'telemetryItems'>,
): Promise<{ status: number; body: Record<string, unknown> }> {
  let list: unknown[];
  if (typeof body === 'object' && body !== null && !Array.isArray(body) && 'envelopes' in body) {
    const envs = body.envelopes;
    if (!Array.isArray(envs) || Object.keys(body).length !== 1)
      throw new HttpError(400, 'BAD_REQUEST', 'body must be one envelope or {envelopes:[…]}');
    list = envs;
  } else list = [body];
  if (list.length === 0) throw new HttpError(400, 'BAD_REQUEST', 'no envelopes');
  if (list.length > l.telemetryItems)
    throw new HttpError(413, 'BODY_TOO_LARGE', `at most ${l.telemetryItems} envelopes per request`);

  const rejected: { index: number; code: TelemetryItemCode }[] = [];
  const valid: { index: number; item: AcceptedHeartbeat }[] = [];
  const checked = await Promise.all(list.map((v) => checkItem(agents, v)));
  checked.forEach((r, index) => {
    if (r.ok) valid.push({ index, item: r.item });
    else rejected.push({ index, code: r.code });
  });
  const outcomes = valid.length ? await agents.commit(valid.map((x) => x.item)) : [];
  outcomes.forEach((o, i) => {
    if (o === 'REPLAY') rejected.push({ index: valid[i]!.index, code: 'REPLAY' });
  });
  await keepDoctorReports(
    agents.dir,
    valid.filter((_, i) => outcomes[i] !== 'REPLAY').map((x) => x.item.heartbeat),
  );
  rejected.sort((a, b) => a.index - b.index);
  const accepted = list.length - rejected.length;
  if (accepted === 0) {
    const codes = new Set(rejected.map((r) => r.code));
    const code = codes.size === 1 ? [...codes][0]! : 'TELEMETRY_REJECTED';
    return { status: 400, body: { code, message: 'no envelope in this request was accepted', rejected } };
  }
  return { status: 202, body: { accepted, rejected } };
}

/**
 * Each agent's latest self-diagnosis, from heartbeats now durable (mirror/doctor-reports.ts). Best
 * effort: the heartbeat is acknowledged either way, and carries the report home regardless.
 */
async function keepDoctorReports(dataDir: string, heartbeats: Heartbeat[]): Promise<void> {
  const reports = doctorReportsFor(dataDir);
  for (const h of heartbeats) {
    if (!h.doctor) continue;
    await reports.record(h.agentId, h.counter, h.doctor, Date.now()).catch(() => false);
  }
}

/**
 * A batch made by a pinned mirror (the first in its `via`) and signed by it; anything else is refused
 * (before anything is stored). The same checks as the server's (server/ingest.ts), with pinned keys.
 */
function checkOrigin(b: CarriedBatch, trusted: ReadonlyMap<string, Uint8Array>, what: string): BatchPayload {
  let claimed: ClaimedBatch;
  try {
    claimed = claimBatch(b.envelope);
  } catch (e) {
    throw new HttpError(400, 'BAD_BATCH', `${what}: ${isCodedError(e) ? e.message : 'malformed payload'}`);
  }
  const origin = claimed.mirror;
  if (b.via[0] !== origin)
    throw new HttpError(400, 'BAD_BATCH', `${what}: via[0] must be its origin mirror ${origin}`);
  const key = trusted.get(origin);
  if (!key)
    throw new HttpError(
      403,
      'RELAY_UNTRUSTED',
      `${what} comes from mirror ${origin}, whose key this mirror has not pinned (serve --relay-key)`,
    );
  try {
    return verifyClaimedBatch(b.envelope, claimed, key);
  } catch (e) {
    throw new HttpError(
      403,
      'RELAY_UNTRUSTED',
      `${what} does not verify as mirror ${origin}'s: ${isCodedError(e) ? e.message : 'invalid'}`,
    );
  }
}

/** What the telemetry route needs to carry other mirrors' batches. */
export interface RelayOptions {
  /** This mirror's id: a batch whose `via` names it has been here before. */
  selfId: string;
  /** Whether this mirror can get batches home now (a peer's batches are taken only then). */
  hasRoute: () => boolean;
  /**
   * Mirror id → public key of the mirrors whose batches this one carries (`serve --relay-key`): a
   * batch is taken only if it verifies under the key of the mirror it names. Empty: none is.
   */
  trusted: ReadonlyMap<string, Uint8Array>;
}

export function agentsRouter(
  agents: AgentsStore,
  now: () => number,
  limits: Partial<AgentRouteLimits> = {},
  relay?: RelayOptions,
): Router {
  const l = { ...DEFAULT_AGENT_ROUTE_LIMITS, ...limits };
  const router = new Router({ prefix: '/v1' });

  router.post('/enroll', async (ctx) => {
    const body = await readJsonBody(ctx, l.enrollBodyBytes);
    let payload;
    try {
      assertEnvelope(body, 'enrolment');
      payload = verifyEnrollRequest(body);
    } catch (e) {
      enrollError(e);
    }
    if (Math.abs(Date.parse(payload.at) - now()) > l.enrollSkewMs)
      throw new HttpError(400, 'BAD_ENROLMENT', 'enrolment "at" is too far from the mirror clock');
    const agentId = agentIdOf(Buffer.from(payload.publicKey, 'hex'));
    ctx.set('Cache-Control', 'no-store');
    const existing = await agents.get(agentId);
    if (existing?.revokedAt !== undefined)
      throw new HttpError(403, 'AGENT_REVOKED', `agent ${agentId} was revoked at this mirror`);
    if (existing) {
      // The key is the identity: an agent enrolled here needs no token to be told its id again.
      ctx.body = { agentId, groups: existing.groups };
      return;
    }
    let grant: EnrolGrant | undefined;
    let refund: (() => Promise<void>) | undefined;
    if (payload.token !== undefined) {
      try {
        const r = await agents.tokens.redeem(payload.token, await agents.site(), agentId);
        grant = { groups: r.groups, tokenId: r.id };
        refund = r.refund;
      } catch (e) {
        if (isTokenError(e)) throw new HttpError(TOKEN_STATUS[e.code], e.code, e.message);
        throw e;
      }
    } else if (!agents.openEnrolment)
      throw new HttpError(
        401,
        'TOKEN_MISSING',
        'enrolment needs a token (ferry mirror token create; the agent takes it with --token)',
      );
    const request: Envelope = {
      payloadType: body.payloadType,
      payload: body.payload,
      signatures: body.signatures.map((x) => ({
        ...(x.keyid !== undefined && { keyid: x.keyid }),
        sig: x.sig,
      })),
    };
    let record;
    try {
      record = await agents.enroll(payload, request, grant);
    } catch (e) {
      await refund?.().catch(() => undefined); // the token's use was spent on nothing
      throw e;
    }
    ctx.body = { agentId: record.id, groups: record.groups };
  });

  async function relayBatches(ctx: Context, body: Record<string, unknown>): Promise<void> {
    if (!relay) throw new HttpError(400, 'BAD_REQUEST', 'this mirror does not relay batches');
    const list = body.batches;
    if (!Array.isArray(list) || Object.keys(body).length !== 1 || list.length === 0)
      throw new HttpError(400, 'BAD_REQUEST', 'body must be {batches:[{envelope, via}…]}');
    if (list.length > l.relayBatches)
      throw new HttpError(413, 'BODY_TOO_LARGE', `at most ${l.relayBatches} batches per request`);
    if (relay.trusted.size === 0)
      throw new HttpError(
        403,
        'RELAY_UNTRUSTED',
        'this mirror relays for no other mirror (pin the ones it may carry with serve --relay-key)',
      );
    const batches: CheckedBatch[] = [];
    for (const [i, v] of list.entries()) {
      try {
        assertCarriedBatch(v, `batches[${i}]`);
      } catch (e) {
        if (isCodedError(e) && e.code === 'LOOP') throw new HttpError(409, 'LOOP', e.message);
        throw new HttpError(400, 'BAD_BATCH', isCodedError(e) ? e.message : `batches[${i}] is malformed`);
      }
      if (v.via.includes(relay.selfId))
        throw new HttpError(409, 'LOOP', `batches[${i}] has already crossed this mirror (${relay.selfId})`);
      const p = checkOrigin(v, relay.trusted, `batches[${i}]`);
      batches.push({
        origin: p.mirror,
        from: p.from,
        to: p.to,
        batch: {
          via: [...v.via],
          envelope: {
            payloadType: v.envelope.payloadType,
            payload: v.envelope.payload,
            signatures: v.envelope.signatures.map((x) => ({
              ...(x.keyid !== undefined && { keyid: x.keyid }),
              sig: x.sig,
            })),
          },
        },
      });
    }
    if (ctx.get('Ferry-Relay') === 'peer' && !relay.hasRoute())
      throw new HttpError(503, 'NO_ROUTE', 'this mirror has no working upstream to relay through');
    const outbox = await agents.outbox();
    const r = await agents.relayed.take(batches, (fresh) => outbox.appendRelayed(fresh));
    ctx.set('Cache-Control', 'no-store');
    ctx.status = 202;
    ctx.body = r;
  }

  router.post('/telemetry', async (ctx) => {
    // Other mirrors say so (Ferry-Relay: upstream|peer) and may send more than an agent.
    const fromMirror = ctx.get('Ferry-Relay');
    if (fromMirror) {
      if (fromMirror !== 'upstream' && fromMirror !== 'peer')
        throw new HttpError(400, 'BAD_REQUEST', 'Ferry-Relay must be upstream or peer');
      const body = await readJsonBody(ctx, l.relayBodyBytes);
      if (typeof body !== 'object' || body === null || Array.isArray(body))
        throw new HttpError(400, 'BAD_REQUEST', 'body must be {batches:[{envelope, via}…]}');
      await relayBatches(ctx, body as Record<string, unknown>);
      return;
    }
    const body = await readJsonBody(ctx, l.telemetryBodyBytes);
    const r = await acceptAgentTelemetry(agents, body, l);
    ctx.set('Cache-Control', 'no-store');
    ctx.status = r.status;
    ctx.body = r.body;
  });
  return router;
}
