/**
 * The audit log: append-only JSON lines (`audit/log.jsonl`), one entry per action with its actor and
 * time, each entry's `hash` = sha256 over the previous entry's hash and the entry's own canonical
 * fields, so an edited, deleted, inserted or reordered entry breaks the chain where it happened.
 * `audit/head.json` records the last entry's seq and hash (written after the line is durable), so a
 * log cut short is noticed too. Any process may append (the server, the CLI): appends take
 * `audit/lock`.
 */
import { createHash } from 'node:crypto';
import { mkdir, open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDir, writeFileAtomic } from '../platform/fsx.js';
import { acquireLock } from '../platform/lock.js';

export type AuditAction =
  | 'login'
  | 'login.failed'
  | 'logout'
  | 'user.created'
  | 'token.created'
  | 'release.registered'
  | 'artifact.stored'
  | 'site.registered'
  | 'site.plan'
  | 'pin'
  | 'group.moved'
  | 'update-now'
  | 'bundle.built'
  | 'bundle.signed'
  | 'bundle.imported'
  | 'telemetry.imported'
  | 'mirror.registered'
  | 'rollback'
  | 'inventory.received'
  | 'bundle.fetched';

export interface AuditEntry {
  seq: number;
  at: string;
  actor: string;
  action: AuditAction;
  /** What the action was about, in a few fields (names, digests, counts). */
  detail: Record<string, string | number | boolean | string[] | null>;
  prev: string;
  hash: string;
}

const GENESIS = '0'.repeat(64);

/** The hash an entry must carry: over prev and every field but hash, in a fixed order. */
export function entryHash(e: Omit<AuditEntry, 'hash'>): string {
  const canonical = JSON.stringify([e.seq, e.at, e.actor, e.action, sortKeys(e.detail), e.prev]);
  return createHash('sha256').update(canonical).digest('hex');
}

function sortKeys(o: Record<string, unknown>): [string, unknown][] {
  return Object.keys(o)
    .sort()
    .map((k) => [k, o[k]]);
}

const paths = (dataDir: string) => {
  const dir = join(dataDir, 'audit');
  return { dir, log: join(dir, 'log.jsonl'), head: join(dir, 'head.json'), lock: join(dir, 'lock') };
};

async function readText(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw e;
  }
}

/** The complete lines of the log (a torn last line, from a crash mid-append, is not an entry yet). */
async function lines(dataDir: string): Promise<string[]> {
  const text = await readText(paths(dataDir).log);
  const end = text.lastIndexOf('\n');
  return end < 0 ? [] : text.slice(0, end).split('\n');
}

export class AuditLog {
  constructor(readonly dataDir: string) {}

  /** Appends one entry (durable before it returns) and returns it. */
  async append(
    actor: string,
    action: AuditAction,
    detail: AuditEntry['detail'] = {},
    now = new Date(),
  ): Promise<AuditEntry> {
    const p = paths(this.dataDir);
    await mkdir(p.dir, { recursive: true });
    const release = await acquireLock(p.lock, { timeoutMs: 30_000 });
    try {
      const text = await readText(p.log);
      const end = text.lastIndexOf('\n');
      const last =
        end < 0
          ? undefined
          : (JSON.parse(text.slice(text.lastIndexOf('\n', end - 1) + 1, end)) as AuditEntry);
      const base = {
        seq: (last?.seq ?? 0) + 1,
        at: now.toISOString(),
        actor,
        action,
        detail,
        prev: last?.hash ?? GENESIS,
      };
      const entry: AuditEntry = { ...base, hash: entryHash(base) };
      const fh = await open(p.log, 'a', 0o644);
      try {
        // a torn tail from an earlier crash is cut off by starting on a fresh line
        const torn = text.length > end + 1;
        await fh.write((torn ? '\n' : '') + JSON.stringify(entry) + '\n');
        await fh.sync();
      } finally {
        await fh.close();
      }
      if (end < 0) await fsyncDir(p.dir);
      await writeFileAtomic(p.head, JSON.stringify({ seq: entry.seq, hash: entry.hash }) + '\n');
      return entry;
    } finally {
      await release();
    }
  }

  /** Entries newest first, `offset` from the newest, at most `limit`. */
  async page(offset: number, limit: number): Promise<{ total: number; entries: AuditEntry[] }> {
    const all = (await lines(this.dataDir)).filter((l) => l !== '');
    const total = all.length;
    const slice = all.slice(Math.max(0, total - offset - limit), Math.max(0, total - offset)).reverse();
    return { total, entries: slice.map((l) => JSON.parse(l) as AuditEntry) };
  }
}

export interface AuditVerdict {
  ok: boolean;
  entries: number;
  /** The first entry that does not hold: its line number (1-based), seq if readable, and why. */
  bad?: { line: number; seq: number | null; reason: string };
}

/** Checks the whole chain: each line parses, seq counts up from 1, prev links, hash matches, head agrees. */
export async function verifyAudit(dataDir: string): Promise<AuditVerdict> {
  const all = await lines(dataDir);
  let prev = GENESIS;
  let n = 0;
  for (const [i, line] of all.entries()) {
    const at = i + 1;
    let e: AuditEntry;
    try {
      e = JSON.parse(line) as AuditEntry;
    } catch {
      // a line torn by a crash mid-append (the next append starts a fresh line); an entry made
      // unreadable on purpose is caught by the seq of the one after it, or by the head
      continue;
    }
    const seq = Number.isSafeInteger(e.seq) ? e.seq : null;
    const fail = (reason: string): AuditVerdict => ({
      ok: false,
      entries: n,
      bad: { line: at, seq, reason },
    });
    if (typeof e !== 'object' || e === null || typeof e.detail !== 'object' || e.detail === null)
      return fail('not an audit entry');
    if (e.seq !== n + 1)
      return fail(`seq ${String(e.seq)} where ${n + 1} was expected (an entry is missing or moved)`);
    if (e.prev !== prev) return fail('prev does not match the hash of the entry before it');
    const { hash, ...rest } = e;
    if (entryHash(rest) !== hash) return fail('hash does not match the entry (it was edited)');
    prev = hash;
    n++;
  }
  const headText = await readText(paths(dataDir).head);
  if (headText) {
    const head = JSON.parse(headText) as { seq: number; hash: string };
    if (head.seq > n)
      return {
        ok: false,
        entries: n,
        bad: {
          line: all.length + 1,
          seq: n + 1,
          reason: `the log ends at seq ${n}, its head says ${head.seq} (entries were removed)`,
        },
      };
  }
  return { ok: true, entries: n };
}
