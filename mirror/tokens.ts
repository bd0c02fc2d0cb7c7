/**
 * Enrolment tokens: who may enrol an agent at this mirror. A token is
 *
 *   ferry-enrol:<site>:<id>:<secret>
 *
 * `id` is 16 hex characters (it names the token in lists, logs and revocations);
 * `secret` is 32 random bytes in base64url. The mirror keeps only the SHA-256
 * of the secret, in `<data>/enrolment/tokens.json` (mode 0600, atomic writes),
 * with the site and groups the token admits to, when it expires, and how many
 * enrolments it allows. The token string is shown once, at creation, and is
 * never written to a log: only its id is.
 *
 * One process changes the file: the serving mirror while it runs (the CLI asks
 * it over the control socket, mirror/control.ts), otherwise the CLI holding the
 * outbox lock. Within that process every change runs under one queue, so two
 * agents racing for a token's last use cannot both have it.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CodedError } from '../core/errors.js';
import { fsyncDir, writeFileAtomic } from '../platform/fsx.js';

export type TokenCode =
  /** The enrolment request carries no token (and enrolment is not open). */
  | 'TOKEN_MISSING'
  /** The token is not `ferry-enrol:<site>:<id>:<secret>`. */
  | 'TOKEN_MALFORMED'
  /** No token with this id and secret was made here. */
  | 'TOKEN_UNKNOWN'
  | 'TOKEN_EXPIRED'
  /** Every enrolment the token allows has been made. */
  | 'TOKEN_EXHAUSTED'
  | 'TOKEN_REVOKED'
  /** The token was made for another site. */
  | 'TOKEN_WRONG_SITE';

export class TokenError extends CodedError<TokenCode> {}

export function isTokenError(e: unknown): e is TokenError {
  return e instanceof TokenError;
}

export interface TokenRecord {
  id: string;
  site: string;
  /** Lowercase hex SHA-256 of the secret. */
  sha256: string;
  groups: string[];
  createdAt: string;
  expiresAt: string;
  /** Enrolments allowed, and made. */
  uses: number;
  used: number;
  /** Agents enrolled with it, oldest first. */
  usedBy: string[];
  revokedAt?: string;
}

export type TokenState = 'active' | 'expired' | 'exhausted' | 'revoked';

export interface TokenView extends Omit<TokenRecord, 'sha256'> {
  state: TokenState;
}

export const TOKEN_LIMITS = { maxUses: 10_000, maxGroups: 64, maxTokens: 10_000 } as const;

const PREFIX = 'ferry-enrol';
const TOKEN = /^ferry-enrol:([A-Za-z0-9._-]{1,64}):([0-9a-f]{16}):([A-Za-z0-9_-]{43})$/;
const GROUP = /^[A-Za-z0-9._-]{1,64}$/;
const ID = /^[0-9a-f]{16}$/;

export const isTokenId = (v: unknown): v is string => typeof v === 'string' && ID.test(v);

const sha256Hex = (s: string) => createHash('sha256').update(s, 'utf8').digest('hex');

/** The parts of a token string, or TOKEN_MALFORMED. Never puts the token in a message. */
export function parseToken(token: string): { site: string; id: string; secret: string } {
  const m = TOKEN.exec(token);
  if (!m) throw new TokenError('TOKEN_MALFORMED', `enrolment token is not ${PREFIX}:<site>:<id>:<secret>`);
  return { site: m[1]!, id: m[2]!, secret: m[3]! };
}

export function tokenState(t: TokenRecord, now: number): TokenState {
  if (t.revokedAt !== undefined) return 'revoked';
  if (t.used >= t.uses) return 'exhausted';
  if (Date.parse(t.expiresAt) <= now) return 'expired';
  return 'active';
}

export function viewOf(t: TokenRecord, now: number): TokenView {
  return {
    id: t.id,
    site: t.site,
    groups: t.groups,
    createdAt: t.createdAt,
    expiresAt: t.expiresAt,
    uses: t.uses,
    used: t.used,
    usedBy: t.usedBy,
    ...(t.revokedAt !== undefined && { revokedAt: t.revokedAt }),
    state: tokenState(t, now),
  };
}

function isRecord(v: unknown): v is TokenRecord {
  if (typeof v !== 'object' || v === null) return false;
  const o = v as Record<string, unknown>;
  return (
    isTokenId(o.id) &&
    typeof o.site === 'string' &&
    typeof o.sha256 === 'string' &&
    /^[0-9a-f]{64}$/.test(o.sha256) &&
    Array.isArray(o.groups) &&
    o.groups.every((g) => typeof g === 'string') &&
    typeof o.createdAt === 'string' &&
    typeof o.expiresAt === 'string' &&
    Number.isSafeInteger(o.uses) &&
    Number.isSafeInteger(o.used) &&
    Array.isArray(o.usedBy) &&
    (o.revokedAt === undefined || typeof o.revokedAt === 'string')
  );
}

export interface CreateTokenOptions {
  site: string;
  ttlMs: number;
  uses?: number;
  groups?: string[];
}

export class TokenStore {
  readonly path: string;
  /** Keyed by id; a Map, so no id an agent sends can reach an object's prototype. */
  private tokens: Map<string, TokenRecord> | undefined;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    readonly dataDir: string,
    private readonly now: () => number = Date.now,
    private readonly limits: { maxTokens: number } = TOKEN_LIMITS,
  ) {
    this.path = join(dataDir, 'enrolment', 'tokens.json');
  }

  /** Runs `fn` after every change queued before it: one change at a time. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async load(): Promise<Map<string, TokenRecord>> {
    if (this.tokens) return this.tokens;
    const text = await readFile(this.path, 'utf8').catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return undefined;
      throw e;
    });
    const map = new Map<string, TokenRecord>();
    if (text !== undefined) {
      const v = JSON.parse(text) as { tokens?: unknown };
      if (!Array.isArray(v.tokens)) throw new Error(`${this.path} is not a token file`);
      for (const t of v.tokens) {
        if (!isRecord(t)) throw new Error(`${this.path} holds a malformed token record`);
        map.set(t.id, t);
      }
    }
    this.tokens = map;
    return map;
  }

  private async save(map: Map<string, TokenRecord>): Promise<void> {
    const dir = join(this.dataDir, 'enrolment');
    const made = await mkdir(dir, { recursive: true, mode: 0o700 });
    if (made !== undefined) await fsyncDir(this.dataDir);
    const body = JSON.stringify({ version: 1, tokens: [...map.values()] }, null, 2) + '\n';
    await writeFileAtomic(this.path, body, { mode: 0o600 });
  }

  /** Makes a token; the returned string is the only copy of its secret. */
  async create(o: CreateTokenOptions): Promise<{ token: string; record: TokenView }> {
    const uses = o.uses ?? 1;
    const groups = [...new Set(o.groups ?? [])];
    if (!Number.isSafeInteger(uses) || uses < 1 || uses > TOKEN_LIMITS.maxUses)
      throw new CodedError('USAGE', `--uses must be 1-${TOKEN_LIMITS.maxUses}`);
    if (!Number.isSafeInteger(o.ttlMs) || o.ttlMs <= 0)
      throw new CodedError('USAGE', '--ttl must be positive');
    if (groups.length > TOKEN_LIMITS.maxGroups)
      throw new CodedError('USAGE', `at most ${TOKEN_LIMITS.maxGroups} groups per token`);
    for (const g of groups)
      if (!GROUP.test(g))
        throw new CodedError('USAGE', `group ${JSON.stringify(g)} must be 1-64 of A-Z a-z 0-9 . _ -`);
    return this.serial(async () => {
      const map = new Map(await this.load());
      if (map.size >= this.limits.maxTokens) {
        // Full: the oldest token that can no longer admit anyone makes room (lists stop showing it).
        const spent = [...map.values()].find((t) => tokenState(t, this.now()) !== 'active');
        if (!spent)
          throw new CodedError(
            'TOKEN_LIMIT',
            `this mirror holds ${map.size} active tokens, the most it keeps; revoke some first`,
          );
        map.delete(spent.id);
      }
      const id = randomBytes(8).toString('hex');
      const secret = randomBytes(32).toString('base64url');
      const now = this.now();
      const record: TokenRecord = {
        id,
        site: o.site,
        sha256: sha256Hex(secret),
        groups,
        createdAt: new Date(now).toISOString(),
        expiresAt: new Date(now + o.ttlMs).toISOString(),
        uses,
        used: 0,
        usedBy: [],
      };
      const next = map.set(id, record);
      await this.save(next);
      this.tokens = next;
      return { token: `${PREFIX}:${o.site}:${id}:${secret}`, record: viewOf(record, now) };
    });
  }

  async list(): Promise<TokenView[]> {
    const now = this.now();
    return [...(await this.load()).values()].map((t) => viewOf(t, now));
  }

  /** Revokes a token by id; revoking it again changes nothing. */
  revoke(id: string): Promise<{ record: TokenView; alreadyRevoked: boolean }> {
    return this.serial(async () => {
      const map = await this.load();
      const t = isTokenId(id) ? map.get(id) : undefined;
      if (!t)
        throw new TokenError('TOKEN_UNKNOWN', `no enrolment token ${isTokenId(id) ? id : '(malformed id)'}`);
      if (t.revokedAt !== undefined) return { record: viewOf(t, this.now()), alreadyRevoked: true };
      const revoked = { ...t, revokedAt: new Date(this.now()).toISOString() };
      const next = new Map(map).set(id, revoked);
      await this.save(next);
      this.tokens = next;
      return { record: viewOf(revoked, this.now()), alreadyRevoked: false };
    });
  }

  /**
   * Checks a token presented by `agentId` for this mirror's `site` and spends one use of it (durably)
   * before it answers; refusals write nothing. `refund` gives the use back if the enrolment then fails.
   */
  async redeem(
    token: string,
    site: string,
    agentId: string,
  ): Promise<{ id: string; groups: string[]; refund: () => Promise<void> }> {
    const p = parseToken(token);
    if (p.site !== site)
      throw new TokenError('TOKEN_WRONG_SITE', `enrolment token ${p.id} is for site ${p.site}, not ${site}`);
    return this.serial(async () => {
      const map = await this.load();
      const t = map.get(p.id);
      const given = Buffer.from(sha256Hex(p.secret), 'hex');
      if (!t || !timingSafeEqual(given, Buffer.from(t.sha256, 'hex')))
        throw new TokenError('TOKEN_UNKNOWN', `no enrolment token ${p.id} with this secret`);
      if (t.site !== site)
        throw new TokenError(
          'TOKEN_WRONG_SITE',
          `enrolment token ${p.id} is for site ${t.site}, not ${site}`,
        );
      const state = tokenState(t, this.now());
      if (state === 'revoked') throw new TokenError('TOKEN_REVOKED', `enrolment token ${p.id} was revoked`);
      if (state === 'exhausted')
        throw new TokenError(
          'TOKEN_EXHAUSTED',
          `enrolment token ${p.id} has been used ${t.used} time(s) of ${t.uses}`,
        );
      if (state === 'expired')
        throw new TokenError('TOKEN_EXPIRED', `enrolment token ${p.id} expired at ${t.expiresAt}`);
      const spent = { ...t, used: t.used + 1, usedBy: [...t.usedBy, agentId] };
      const next = new Map(map).set(t.id, spent);
      await this.save(next);
      this.tokens = next;
      const refund = () =>
        this.serial(async () => {
          const cur = (await this.load()).get(t.id);
          if (!cur) return;
          const i = cur.usedBy.lastIndexOf(agentId);
          const back = {
            ...cur,
            used: Math.max(0, cur.used - 1),
            usedBy: i < 0 ? cur.usedBy : cur.usedBy.filter((_, j) => j !== i),
          };
          const m = new Map(this.tokens).set(t.id, back);
          await this.save(m);
          this.tokens = m;
        });
      return { id: t.id, groups: [...t.groups], refund };
    });
  }
}
