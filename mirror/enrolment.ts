/**
 * The site operator's enrolment commands — make, list and revoke enrolment
 * tokens; list and revoke agents — as one set of operations over a data dir's
 * AgentsStore. The serving mirror runs them for the CLI on its control socket
 * (mirror/control.ts); with no mirror serving, the CLI runs the same ones
 * itself while holding the outbox lock. Logs name a token by its id only.
 */
import { CodedError } from '../core/errors.js';
import type { Logger } from '../platform/log.js';
import type { AgentRecord, AgentsStore } from './agents.js';
import type { ControlHandler } from './control.js';
import type { TokenView } from './tokens.js';

export interface AgentView {
  id: string;
  hostname: string;
  platform: string;
  groups: string[];
  enrolledAt: string;
  tokenId: string | null;
  revokedAt: string | null;
  revokeReason: string | null;
}

export const agentView = (r: AgentRecord): AgentView => ({
  id: r.id,
  hostname: r.hostname,
  platform: r.platform,
  groups: r.groups,
  enrolledAt: r.enrolledAt,
  tokenId: r.tokenId ?? null,
  revokedAt: r.revokedAt ?? null,
  revokeReason: r.revokeReason ?? null,
});

const usage = (m: string) => new CodedError('USAGE', m);

function stringList(v: unknown, what: string): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string'))
    throw usage(`${what} must be a list of strings`);
  return v;
}

function idOf(v: unknown, what: string): string {
  if (typeof v !== 'string' || v === '') throw usage(`${what} must be given`);
  return v;
}

export interface EnrolmentOps {
  createToken(b: Record<string, unknown>): Promise<{ token: string; record: TokenView }>;
  listTokens(): Promise<{ tokens: TokenView[] }>;
  revokeToken(b: Record<string, unknown>): Promise<{ record: TokenView; alreadyRevoked: boolean }>;
  listAgents(): Promise<{ agents: AgentView[] }>;
  revokeAgent(b: Record<string, unknown>): Promise<{ agent: AgentView; alreadyRevoked: boolean }>;
}

/** The operations, with bodies as the control socket carries them (checked here). */
export function enrolmentOps(agents: AgentsStore, site: string, log: Logger): EnrolmentOps {
  return {
    async createToken(b) {
      if (!Number.isSafeInteger(b.ttlMs) || (b.ttlMs as number) <= 0) throw usage('ttlMs must be positive');
      if (b.uses !== undefined && !Number.isSafeInteger(b.uses)) throw usage('uses must be an integer');
      const r = await agents.tokens.create({
        site,
        ttlMs: b.ttlMs as number,
        ...(b.uses !== undefined && { uses: b.uses as number }),
        groups: stringList(b.groups, 'groups'),
      });
      log.info('token.created', {
        token: r.record.id,
        groups: r.record.groups,
        uses: r.record.uses,
        expiresAt: r.record.expiresAt,
      });
      return r;
    },
    async listTokens() {
      return { tokens: await agents.tokens.list() };
    },
    async revokeToken(b) {
      const r = await agents.tokens.revoke(idOf(b.id, 'id'));
      if (!r.alreadyRevoked) log.info('token.revoked', { token: r.record.id });
      return r;
    },
    async listAgents() {
      return { agents: (await agents.list()).map(agentView) };
    },
    async revokeAgent(b) {
      const reason = b.reason === undefined ? '' : b.reason;
      if (typeof reason !== 'string' || reason.length > 512)
        throw usage('reason must be at most 512 characters');
      const r = await agents.revoke(idOf(b.id, 'id'), reason);
      if (!r.alreadyRevoked) log.info('agent.revoked', { agentId: r.record.id, reason });
      return { agent: agentView(r.record), alreadyRevoked: r.alreadyRevoked };
    },
  };
}

/** The control socket's routes for them. */
export function enrolmentControl(
  agents: AgentsStore,
  site: string,
  log: Logger,
): Record<string, ControlHandler> {
  const ops = enrolmentOps(agents, site, log);
  return {
    'POST /tokens/create': async (b) => ({ ...(await ops.createToken(b)) }),
    'GET /tokens': async () => ({ ...(await ops.listTokens()) }),
    'POST /tokens/revoke': async (b) => ({ ...(await ops.revokeToken(b)) }),
    'GET /agents': async () => ({ ...(await ops.listAgents()) }),
    'POST /agents/revoke': async (b) => ({ ...(await ops.revokeAgent(b)) }),
  };
}
