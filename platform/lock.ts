/**
 * Serialises writers of one data directory: a promise queue within this
 * process, and an exclusive lock file across processes. The lock file holds
 * the owner's pid; a lock whose pid is no longer alive is stale and is taken
 * over. Same host only: pids mean nothing across machines (no NFS).
 */
import { randomBytes } from 'node:crypto';
import { link, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { hostname } from 'node:os';
import { PlatformError } from './errors.js';

const queues = new Map<string, Promise<unknown>>();

/** Runs `fn` after every earlier call for the same key in this process has settled. */
export function serialize<T>(key: string, fn: () => Promise<T>): Promise<T> {
  const prior = queues.get(key) ?? Promise.resolve();
  const run = prior.then(fn);
  const tail = run.then(
    () => undefined,
    () => undefined,
  );
  queues.set(key, tail);
  void tail.then(() => {
    if (queues.get(key) === tail) queues.delete(key);
  });
  return run;
}

export interface LockOptions {
  /** How long to wait for another holder before giving up with STORE_LOCKED. */
  timeoutMs?: number;
  pollMs?: number;
}

export const DEFAULT_LOCK_TIMEOUT_MS = 10 * 60_000;

interface LockBody {
  pid: number;
  host: string;
  token: string;
  at: string;
}

function parseLock(text: string): LockBody | undefined {
  try {
    const v: unknown = JSON.parse(text);
    if (typeof v !== 'object' || v === null) return undefined;
    const o = v as Record<string, unknown>;
    if (!Number.isSafeInteger(o.pid) || typeof o.token !== 'string') return undefined;
    return { pid: o.pid as number, host: String(o.host), token: o.token, at: String(o.at) };
  } catch {
    return undefined;
  }
}

/** True when a process with this pid exists (EPERM: it exists, owned by someone else). */
export function pidAlive(pid: number): boolean {
  if (pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Takes the lock at `path` (O_EXCL semantics via link(2), so the file appears
 * with its whole content), waiting while a live process holds it. Returns the
 * release function. Callers in one process must go through `serialize` first:
 * a lock naming this very pid is then known to be a leftover, hence stale.
 */
export async function acquireLock(path: string, opts: LockOptions = {}): Promise<() => Promise<void>> {
  const timeout = opts.timeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS;
  const poll = opts.pollMs ?? 50;
  const deadline = Date.now() + timeout;
  const body: LockBody = {
    pid: process.pid,
    host: hostname(),
    token: randomBytes(12).toString('hex'),
    at: new Date().toISOString(),
  };
  const text = JSON.stringify(body) + '\n';
  const candidate = `${path}.${body.token}.tmp`;
  try {
    await writeFile(candidate, text, { mode: 0o644 });
  } catch (e) {
    // A full disk creates the file and then fails the write: remove the empty candidate it leaves.
    await rm(candidate, { force: true });
    throw e;
  }
  try {
    for (;;) {
      try {
        await link(candidate, path);
        break;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      const held = await readFile(path, 'utf8').catch(() => undefined);
      if (held === undefined) continue; // released between our link and our read
      const holder = parseLock(held);
      const stale = holder === undefined || holder.pid === process.pid || !pidAlive(holder.pid);
      if (stale) {
        // Narrow the take-over race: remove only if it still names the dead holder.
        const again = await readFile(path, 'utf8').catch(() => undefined);
        if (again === held) await rm(path, { force: true });
        continue;
      }
      if (Date.now() >= deadline) {
        throw new PlatformError(
          'STORE_LOCKED',
          `${path} is held by pid ${holder.pid} since ${holder.at}; another process is using this data directory`,
        );
      }
      await sleep(poll);
    }
  } finally {
    await rm(candidate, { force: true });
  }
  return async () => {
    const now = await readFile(path, 'utf8').catch(() => undefined);
    if (now !== undefined && parseLock(now)?.token === body.token) await rm(path, { force: true });
  };
}

/**
 * Removes lock candidates (`lock.<token>.tmp`) left by processes killed while
 * they waited for the lock. A live waiter's candidate is kept: its link(2)
 * would fail if the file vanished under it.
 */
export async function removeStaleCandidates(lockPath: string): Promise<void> {
  const dir = dirname(lockPath);
  const prefix = `${basename(lockPath)}.`;
  for (const name of await readdir(dir)) {
    if (!name.startsWith(prefix) || !name.endsWith('.tmp')) continue;
    const path = join(dir, name);
    const holder = parseLock(await readFile(path, 'utf8').catch(() => ''));
    // Unparseable: perhaps a waiter still writing it; only an old one is garbage.
    const old = async () =>
      Date.now() - ((await stat(path).catch(() => undefined))?.mtimeMs ?? Date.now()) > 60_000;
    const dead = holder ? holder.pid !== process.pid && !pidAlive(holder.pid) : await old();
    if (dead) await rm(path, { force: true });
  }
}
