/**
 * Who may use the server's UI and API. Users (admin or viewer) sign in with a password, kept only as
 * a scrypt hash (memory-hard: N=2^15, r=8, 32 MiB per guess); API clients send a bearer token, kept
 * only as its sha256 (a token is 32 random bytes: nothing to guess, so no KDF is needed). Both live in
 * `access.json`, written atomically under `access.lock` by the server and the CLI alike; the server
 * re-reads it when it changes. Sessions live in the server's memory (a restart signs everyone out).
 */
import {
  createHash,
  randomBytes,
  scrypt as scryptCb,
  timingSafeEqual,
  type ScryptOptions,
} from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../platform/fsx.js';
import { acquireLock } from '../platform/lock.js';
import { ServerError } from './errors.js';

export type Role = 'admin' | 'viewer';
export const ROLES: readonly Role[] = ['admin', 'viewer'];

interface UserRecord {
  role: Role;
  salt: string;
  hash: string;
  createdAt: string;
}
interface TokenRecord {
  user: string;
  role: Role;
  hash: string;
  createdAt: string;
}
interface AccessFile {
  users: Record<string, UserRecord>;
  tokens: Record<string, TokenRecord>;
}

export interface Principal {
  user: string;
  role: Role;
  /** How the request proved it: a session cookie (forms need its CSRF token) or a bearer token. */
  via: 'session' | 'token';
}

const SCRYPT: ScryptOptions = { N: 2 ** 15, r: 8, p: 1, maxmem: 64 * 1024 * 1024 };
const USER_NAME = /^[a-z][a-z0-9._-]{0,31}$/;

function scrypt(password: string, salt: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) =>
    scryptCb(password.normalize('NFC'), salt, 32, SCRYPT, (e, key) => (e ? reject(e) : resolve(key))),
  );
}

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');
const own = <T>(o: Record<string, T>, k: string): T | undefined => (Object.hasOwn(o, k) ? o[k] : undefined);

export function assertUserName(name: string): void {
  if (!USER_NAME.test(name))
    throw new ServerError('BAD_INPUT', 'a user name is 1-32 of a-z 0-9 . _ - and starts with a letter');
}

/** A password a person can type: 20 characters from a 32-letter alphabet (100 bits). */
export function generatePassword(): string {
  const alphabet = 'abcdefghjkmnpqrstuvwxyz23456789';
  return [...randomBytes(20)].map((b) => alphabet[b % alphabet.length]).join('');
}

export class AccessStore {
  private cache: { mtimeMs: number; data: AccessFile } | undefined;

  constructor(readonly dataDir: string) {}

  private get path(): string {
    return join(this.dataDir, 'access.json');
  }

  /** The file as it is now (cached until it changes on disk). */
  async read(): Promise<AccessFile> {
    let mtimeMs: number;
    try {
      mtimeMs = (await stat(this.path)).mtimeMs;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { users: {}, tokens: {} };
      throw e;
    }
    if (this.cache?.mtimeMs === mtimeMs) return this.cache.data;
    const data = JSON.parse(await readFile(this.path, 'utf8')) as AccessFile;
    this.cache = { mtimeMs, data };
    return data;
  }

  private async update<T>(fn: (a: AccessFile) => T): Promise<T> {
    const release = await acquireLock(join(this.dataDir, 'access.lock'), { timeoutMs: 30_000 });
    try {
      this.cache = undefined;
      const a = await this.read();
      const r = fn(a);
      await writeFileAtomic(this.path, JSON.stringify(a, null, 2) + '\n', { mode: 0o600 });
      this.cache = undefined;
      return r;
    } finally {
      await release();
    }
  }

  /** Adds a user with a generated password (returned once, stored only as its hash). */
  async addUser(name: string, role: Role, now = new Date()): Promise<string> {
    assertUserName(name);
    if (!ROLES.includes(role)) throw new ServerError('BAD_INPUT', 'role must be admin or viewer');
    const password = generatePassword();
    const salt = randomBytes(16);
    const hash = (await scrypt(password, salt)).toString('hex');
    await this.update((a) => {
      if (own(a.users, name)) throw new ServerError('USER_EXISTS', `user ${name} already exists`);
      a.users[name] = { role, salt: salt.toString('hex'), hash, createdAt: now.toISOString() };
    });
    return password;
  }

  /** First run: an admin named `admin` with a one-time password, when there is no admin at all. */
  async ensureAdmin(): Promise<string | undefined> {
    const { users } = await this.read();
    if (Object.values(users).some((u) => u.role === 'admin')) return undefined;
    if (Object.hasOwn(users, 'admin'))
      throw new ServerError('STORE_INVALID', 'user admin exists without the admin role and no admin is left');
    return this.addUser('admin', 'admin');
  }

  /** The user's role when the password is right; undefined otherwise (same work either way). */
  async checkPassword(name: string, password: string): Promise<Role | undefined> {
    const u = own((await this.read()).users, name);
    const salt = u ? Buffer.from(u.salt, 'hex') : randomBytes(16);
    const got = await scrypt(password, salt);
    const want = u ? Buffer.from(u.hash, 'hex') : randomBytes(32);
    return u && timingSafeEqual(got, want) ? u.role : undefined;
  }

  /** A bearer token for a user (`ferry_<id>_<secret>`), returned once; the user's role at creation. */
  async createToken(user: string, now = new Date()): Promise<{ token: string; id: string; role: Role }> {
    const id = randomBytes(6).toString('hex');
    const secret = randomBytes(32).toString('base64url');
    const role = await this.update((a) => {
      const u = own(a.users, user);
      if (!u) throw new ServerError('UNKNOWN_USER', `no user ${user}`);
      a.tokens[id] = { user, role: u.role, hash: sha256(secret), createdAt: now.toISOString() };
      return u.role;
    });
    return { token: `ferry_${id}_${secret}`, id, role };
  }

  async checkToken(token: string): Promise<Principal | undefined> {
    const m = /^ferry_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$/.exec(token);
    if (!m) return undefined;
    const t = own((await this.read()).tokens, m[1]!);
    if (!t) return undefined;
    const ok = timingSafeEqual(Buffer.from(sha256(m[2]!), 'hex'), Buffer.from(t.hash, 'hex'));
    return ok ? { user: t.user, role: t.role, via: 'token' } : undefined;
  }
}

export interface Session {
  user: string;
  role: Role;
  csrf: string;
  expires: number;
}

/** Signed-in browsers: an unguessable id in an HttpOnly, SameSite=Strict cookie, and a CSRF token each. */
export class Sessions {
  private readonly map = new Map<string, Session>();

  constructor(private readonly ttlMs = 8 * 3600_000) {}

  create(user: string, role: Role, now = Date.now()): { id: string; session: Session } {
    const id = randomBytes(32).toString('base64url');
    const session = { user, role, csrf: randomBytes(32).toString('base64url'), expires: now + this.ttlMs };
    this.map.set(id, session);
    return { id, session };
  }

  get(id: string | undefined, now = Date.now()): Session | undefined {
    if (!id) return undefined;
    const s = this.map.get(id);
    if (s && s.expires <= now) this.map.delete(id);
    return s && s.expires > now ? s : undefined;
  }

  end(id: string | undefined): void {
    if (id) this.map.delete(id);
  }
}

/** Constant-time comparison of two tokens given as text. */
export function sameToken(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/**
 * Failed logins per key (the client address, the user name): more than `max` within `windowMs` and the
 * key is refused until the oldest failure leaves the window. Successes do not reset it.
 */
export class LoginLimiter {
  private readonly failures = new Map<string, number[]>();

  constructor(
    private readonly max = 5,
    private readonly windowMs = 5 * 60_000,
  ) {}

  private recent(key: string, now: number): number[] {
    const list = (this.failures.get(key) ?? []).filter((t) => t > now - this.windowMs);
    if (list.length) this.failures.set(key, list);
    else this.failures.delete(key);
    return list;
  }

  /** Seconds until `keys` may try again (0: now). */
  retryAfter(keys: string[], now = Date.now()): number {
    let wait = 0;
    for (const k of keys) {
      const list = this.recent(k, now);
      if (list.length >= this.max) wait = Math.max(wait, Math.ceil((list[0]! + this.windowMs - now) / 1000));
    }
    return wait;
  }

  fail(keys: string[], now = Date.now()): void {
    for (const k of keys) this.failures.set(k, [...this.recent(k, now), now]);
    if (this.failures.size > 100_000) this.failures.clear(); // a flood of names must not grow memory
  }
}
