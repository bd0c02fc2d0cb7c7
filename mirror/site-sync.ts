/**
 * One site, many mirrors (docs/mirror.md "Site log"): what one mirror decides
 * reaches the others, so an agent that fails over gets the same answer.
 *
 * * Decisions made here — operator rollout actions and the gate's own halts
 *   (mirror/rollout.ts onDecision), enrolments and revocations (the agents
 *   store's records) — go into the site log (mirror/site-log.ts) signed by
 *   this mirror's key, before the state that follows from them is written.
 * * Each round this mirror asks every peer (`--peer` and the peers file) for
 *   the entries after the cursor it holds for that peer
 *   (`GET /v1/site-log?after=N`, signed with this mirror's key: a peer
 *   answers only the mirrors it lists), keeps those signed by a listed mirror key
 *   (`--peer-key`) for this site, and refuses the rest with a code, logged and
 *   shown per peer.
 * * What the log holds is then applied: the rollout gate is brought to the
 *   merged decision (core/rollout/merge.ts), enrolments and revocations to the
 *   agents store. Entries of a rollout this mirror does not run yet wait in
 *   the log and apply once it does.
 */
import { randomBytes } from 'node:crypto';
import { parseJsonStrict } from '../core/json.js';
import { LINK_AUTH_HEADER, signLinkRequest } from '../core/link-auth.js';
import { CodedError, isCodedError } from '../core/errors.js';
import { decide, reconcile } from '../core/rollout/merge.js';
import { SITE_LOG_LIMITS } from '../core/site-log.js';
import { request } from '../platform/http/request.js';
import type { Transport } from '../platform/http/transport.js';
import type { Logger } from '../platform/log.js';
import type { AgentRecord, AgentsStore } from './agents.js';
import type { MirrorIdentity } from './identity.js';
import type { LocalDecision, MirrorRollout } from './rollout.js';
import type { SiteLog } from './site-log.js';

export interface SitePeerStatus {
  url: string;
  link: 'unknown' | 'up' | 'down';
  /** The peer's log seq this mirror has read through. */
  cursor: number;
  /** Entries taken from it, and refused. */
  accepted: number;
  refused: number;
  lastRefusal: { code: string; message: string; at: string } | null;
  lastError: { code: string; message: string; at: string } | null;
  lastOkAt: string | null;
}

export interface SiteSyncStatus {
  entries: number;
  head: number;
  peers: SitePeerStatus[];
}

export interface SiteSyncOptions {
  log: SiteLog;
  /** This mirror's key: it signs each request, and the peers answer only the mirrors they list. */
  identity: MirrorIdentity;
  rollout: MirrorRollout;
  agents: AgentsStore;
  peers: () => Promise<string[]>;
  transport: Transport;
  logger: Logger;
  now: () => number;
  /** Between rounds (ms); default 10 s. */
  intervalMs?: number;
  /** Pages read from one peer in one round. */
  maxPages?: number;
}

/** The largest answer read: a full page of the largest entries, and the wrapping. */
const MAX_PAGE_BYTES = SITE_LOG_LIMITS.maxPerPage * (SITE_LOG_LIMITS.maxEntryBytes + 16) + 1024;

const iso = (ms: number) => new Date(ms).toISOString();

/** The `code` of an error answer, when it has one (a peer that does not list this mirror says so). */
function answerCode(body: Buffer): string | undefined {
  try {
    const v = parseJsonStrict(body, { maxBytes: 64 * 1024, maxDepth: 2 }) as { code?: unknown };
    return typeof v.code === 'string' && /^[A-Z_]{1,40}$/.test(v.code) ? v.code : undefined;
  } catch {
    return undefined;
  }
}

export class SiteSync {
  private readonly peers = new Map<string, SitePeerStatus>();
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;
  private readonly abort = new AbortController();
  /** Agent ids whose record this mirror is writing from the log (not new decisions of its own). */
  private readonly adopting = new Set<string>();

  constructor(private readonly o: SiteSyncOptions) {}

  /** What the rollout gate tells of a decision made here, into the log. */
  readonly onDecision = async (d: LocalDecision): Promise<void> => {
    const at = this.o.now();
    if (d.type === 'auto-halt') {
      await this.o.log.record(
        { kind: 'rollout', rolloutId: d.rolloutId, action: 'halt', actor: 'mirror', reason: d.reason },
        at,
      );
      return;
    }
    const e = d.event;
    const rolloutId = e.rolloutId ?? d.state.run?.plan.id;
    if (rolloutId === undefined) return;
    const common = { kind: 'rollout' as const, rolloutId, actor: e.actor, reason: e.reason ?? '' };
    switch (e.type) {
      case 'halt':
        await this.o.log.record({ ...common, action: 'halt' }, at);
        return;
      case 'resume': {
        // It lifts the halts this mirror knows of, and only those.
        const lifts = decide(this.o.log.rolloutEntries(), rolloutId).halts.map((h) => h.id);
        await this.o.log.record({ ...common, action: 'resume', lifts }, at);
        return;
      }
      case 'approve':
        await this.o.log.record({ ...common, action: 'approve', wave: (d.state.run?.wave ?? 0) + 1 }, at);
        return;
      case 'abort':
        await this.o.log.record({ ...common, action: 'abort', revert: e.revert }, at);
        return;
      case 'update-now':
        await this.o.log.record(
          { ...common, action: 'update-now', agentId: e.agentId, groups: e.groups },
          at,
        );
        return;
    }
  };

  /** An agent record written here: a new enrolment or a revocation made here goes into the log. */
  private async recordAgent(r: AgentRecord): Promise<void> {
    if (this.adopting.has(r.id)) return;
    const have = (kind: 'enrol' | 'revoke') => this.o.log.agent(r.id)[kind] !== undefined;
    const at = this.o.now();
    if (!have('enrol'))
      await this.o.log.record(
        {
          kind: 'enrol',
          agentId: r.id,
          publicKey: r.publicKey,
          hostname: r.hostname,
          platform: r.platform,
          groups: r.groups,
          enrolledAt: r.enrolledAt,
        },
        at,
      );
    if (r.revokedAt !== undefined && !have('revoke'))
      await this.o.log.record(
        { kind: 'revoke', agentId: r.id, revokedAt: r.revokedAt, reason: r.revokeReason ?? '' },
        at,
      );
    // An agent enrolled here that the site revoked elsewhere is revoked here too.
    if (r.revokedAt === undefined) await this.applyAgent(r.id);
  }

  /** Records what is missing from the log (a crash between a record and its entry), then starts the rounds. */
  async start(intervalMs = this.o.intervalMs ?? 10_000): Promise<void> {
    this.o.agents.onRecord((r) => {
      this.recordAgent(r).catch((e: unknown) =>
        this.o.logger.warn('site.record_failed', { agentId: r.id, error: (e as Error).message }),
      );
    });
    for (const r of await this.o.agents.list()) await this.recordAgent(r);
    await this.apply();
    const loop = () => {
      if (this.stopped) return;
      this.running = this.round()
        .catch((e: unknown) => this.o.logger.warn('site.round_failed', { error: (e as Error).message }))
        .finally(() => {
          if (!this.stopped) this.timer = setTimeout(loop, intervalMs);
        });
    };
    this.timer = setTimeout(loop, 0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.abort.abort();
    clearTimeout(this.timer);
    await this.running;
  }

  status(): SiteSyncStatus {
    return {
      entries: this.o.log.size,
      head: this.o.log.head,
      peers: [...this.peers.values()].map((p) => ({ ...p })),
    };
  }

  /** One round: pull from every peer, then apply what the log holds. */
  async round(): Promise<void> {
    const urls = new Set((await this.o.peers()).map((u) => u.replace(/\/+$/, '')));
    for (const url of this.peers.keys()) if (!urls.has(url)) this.peers.delete(url);
    let fresh = 0;
    for (const url of urls) {
      if (this.stopped) return;
      let p = this.peers.get(url);
      if (!p) {
        p = {
          url,
          link: 'unknown',
          cursor: 0,
          accepted: 0,
          refused: 0,
          lastRefusal: null,
          lastError: null,
          lastOkAt: null,
        };
        this.peers.set(url, p);
      }
      fresh += await this.pull(p).catch((e: unknown) => {
        p.link = 'down';
        const code = isCodedError(e) ? e.code : 'PEER_FAILED';
        p.lastError = { code, message: (e as Error).message, at: iso(this.o.now()) };
        return 0;
      });
    }
    if (fresh > 0) await this.apply();
    else await this.applyRollout(); // a rollout adopted since may have entries waiting
  }

  private async pull(p: SitePeerStatus): Promise<number> {
    let fresh = 0;
    for (let page = 0; page < (this.o.maxPages ?? 16); page++) {
      const path = `/v1/site-log?after=${p.cursor}`;
      const auth = signLinkRequest(
        {
          mirror: this.o.identity.id,
          site: this.o.log.site,
          method: 'GET',
          path,
          nonce: randomBytes(16).toString('hex'),
          now: this.o.now(),
        },
        this.o.identity.key,
      );
      const res = await request(`${p.url}${path}`, {
        headers: { [LINK_AUTH_HEADER]: auth },
        maxBytes: MAX_PAGE_BYTES,
        transport: this.o.transport,
        signal: this.abort.signal,
      });
      if (res.status !== 200) {
        const code = answerCode(res.body);
        throw new CodedError(
          code ?? 'HTTP_STATUS',
          `${p.url}/v1/site-log: HTTP ${res.status}${code ? ` ${code}` : ''}`,
        );
      }
      const v = parseJsonStrict(res.body, { maxBytes: MAX_PAGE_BYTES, maxDepth: 6 }) as Record<
        string,
        unknown
      >;
      const entries = v.entries;
      const next = v.next;
      if (
        !Array.isArray(entries) ||
        entries.length > SITE_LOG_LIMITS.maxPerPage ||
        !Number.isSafeInteger(next)
      )
        throw new CodedError('SITE_LOG_INVALID', `${p.url}/v1/site-log: not a site log page`);
      p.link = 'up';
      p.lastOkAt = iso(this.o.now());
      p.lastError = null;
      for (const env of entries) {
        try {
          if (await this.o.log.accept(env)) fresh++;
          p.accepted++;
        } catch (e) {
          if (!isCodedError(e)) throw e;
          p.refused++;
          p.lastRefusal = { code: e.code, message: e.message, at: iso(this.o.now()) };
          this.o.logger.warn('site.entry_refused', { peer: p.url, code: e.code, reason: e.message });
        }
      }
      // A peer whose log went backwards (a new data dir) is read again from its start.
      const n = next as number;
      if (n < p.cursor) {
        p.cursor = 0;
        continue;
      }
      const moved = n > p.cursor;
      p.cursor = n;
      if (!moved || entries.length < SITE_LOG_LIMITS.maxPerPage) break;
    }
    return fresh;
  }

  /** Brings the gate and the agents store to what the log holds. */
  async apply(): Promise<void> {
    await this.applyAgents();
    await this.applyRollout();
  }

  private async applyRollout(): Promise<void> {
    const entries = this.o.log.rolloutEntries();
    const done = await this.o.rollout.converge((s) =>
      s.run ? reconcile(s, decide(entries, s.run.plan.id)) : [],
    );
    if (done.length > 0) this.o.logger.info('site.rollout_applied', { events: done });
  }

  private async applyAgents(): Promise<void> {
    for (const id of this.o.log.agentIds()) await this.applyAgent(id);
  }

  /** The oldest entry per agent wins, so a mirror keeps the first record it heard of; a revocation is final. */
  private async applyAgent(id: string): Promise<void> {
    const { enrol, revoke } = this.o.log.agent(id);
    let known = await this.o.agents.get(id);
    if (!known && enrol?.payload.kind === 'enrol') {
      const p = enrol.payload;
      await this.adopt(id, {
        id,
        publicKey: p.publicKey,
        hostname: p.hostname,
        platform: p.platform,
        groups: p.groups,
        enrolledAt: p.enrolledAt,
      });
      known = await this.o.agents.get(id);
    }
    if (known && known.revokedAt === undefined && revoke?.payload.kind === 'revoke')
      await this.adopt(id, { id, revokedAt: revoke.payload.revokedAt, revokeReason: revoke.payload.reason });
  }

  private async adopt(id: string, r: Parameters<AgentsStore['adoptFromSite']>[0]): Promise<void> {
    this.adopting.add(id);
    try {
      if (await this.o.agents.adoptFromSite(r))
        this.o.logger.info('site.agent_adopted', { agentId: id, revoked: 'revokedAt' in r });
    } finally {
      this.adopting.delete(id);
    }
  }
}
