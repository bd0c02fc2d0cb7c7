/**
 * The client's hard limits, in one place, with safe defaults. Idle timeouts
 * catch a peer that went silent; total deadlines catch one that keeps
 * trickling (a byte every few seconds never trips an idle timer). A request's
 * deadline grows with the bytes it may move, at a floor rate: a transfer
 * slower than that is treated as failed, so the caller moves on to the next
 * source instead of waiting on the slowest one forever.
 */

export interface ClientLimits {
  /** Longest silence tolerated: connect, response head, and between body chunks (ms). */
  idleTimeoutMs: number;
  /** No request gets a total deadline shorter than this (ms). */
  minDeadlineMs: number;
  /** Slowest transfer rate accepted (bytes/s): deadline = max(minDeadlineMs, bytes / floor). */
  floorBytesPerSec: number;
  /** Free space a download must leave on its destination filesystem (bytes). */
  reserveBytes: number;
}

export const DEFAULT_LIMITS: Readonly<ClientLimits> = Object.freeze({
  idleTimeoutMs: 30_000,
  minDeadlineMs: 30_000,
  floorBytesPerSec: 64 * 1024,
  reserveBytes: 32 * 1024 * 1024,
});

export function resolveLimits(l: Partial<ClientLimits> | undefined): ClientLimits {
  return l ? { ...DEFAULT_LIMITS, ...l } : DEFAULT_LIMITS;
}

/** Total deadline (ms) for a request that may move `bytes` bytes (body sent plus body received). */
export function deadlineFor(
  bytes: number,
  l: Pick<ClientLimits, 'minDeadlineMs' | 'floorBytesPerSec'>,
): number {
  return Math.max(l.minDeadlineMs, Math.ceil((Math.max(0, bytes) * 1000) / l.floorBytesPerSec));
}

const KEYS = ['idleTimeoutMs', 'minDeadlineMs', 'floorBytesPerSec', 'reserveBytes'] as const;

/**
 * Limits from a JSON object text such as `{"minDeadlineMs":2000}` (an
 * environment variable or a config value). Unknown keys and values that are
 * not positive integers (reserveBytes may be 0) are refused with a message
 * naming the key; the caller turns it into its usage error.
 */
export function parseLimits(text: string): Partial<ClientLimits> {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new Error('not JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
  const out: Partial<ClientLimits> = {};
  for (const [k, n] of Object.entries(v)) {
    const key = KEYS.find((x) => x === k);
    if (!key) throw new Error(`unknown key ${JSON.stringify(k)} (known: ${KEYS.join(', ')})`);
    const min = key === 'reserveBytes' ? 0 : 1;
    if (!Number.isSafeInteger(n) || (n as number) < min)
      throw new Error(`${key} must be an integer of at least ${min}`);
    out[key] = n as number;
  }
  return out;
}
