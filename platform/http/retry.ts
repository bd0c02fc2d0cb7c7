/**
 * Retry with exponential back-off and jitter, for every caller of the client:
 * immediate retries of one request (withRetry) and the longer back-off of a
 * source or target that keeps failing (backoffMs).
 */
import { isRetryable } from './errors.js';

export interface BackoffOptions {
  /** Back-off cap before the first retry (ms); doubles per retry. */
  baseMs: number;
  /** Largest back-off (ms). */
  maxMs: number;
  /**
   * true or 'full': a uniform random time in [0, cap]; 'equal': in [cap/2, cap]
   * (never hammers at once, still spreads); false: exactly the cap.
   */
  jitter: boolean | 'full' | 'equal';
  random?: () => number;
}

export interface RetryOptions extends BackoffOptions {
  /** Total tries, including the first. */
  attempts: number;
  /** Which errors to retry; defaults to isRetryable. */
  retryIf?: (e: unknown) => boolean;
  sleep?: (ms: number) => Promise<void>;
  onRetry?: (e: unknown, attempt: number, delayMs: number) => void;
}

/** The back-off before retry number `retry` (0 = after the first failure). */
export function backoffMs(retry: number, o: BackoffOptions): number {
  const cap = Math.min(o.maxMs, o.baseMs * 2 ** retry);
  if (o.jitter === false) return cap;
  const r = (o.random ?? Math.random)();
  return Math.floor(o.jitter === 'equal' ? cap / 2 + r * (cap / 2) : r * cap);
}

const defaultSleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Runs `fn` until it succeeds, it throws a non-retryable error, or `attempts` are used up. */
export async function withRetry<T>(fn: (attempt: number) => Promise<T>, o: RetryOptions): Promise<T> {
  const retryIf = o.retryIf ?? isRetryable;
  const sleep = o.sleep ?? defaultSleep;
  const attempts = Math.max(1, o.attempts);
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (e) {
      if (attempt + 1 >= attempts || !retryIf(e)) throw e;
      const delay = backoffMs(attempt, o);
      o.onRetry?.(e, attempt, delay);
      await sleep(delay);
    }
  }
}
