/**
 * A per-origin rate limit over any transport: response bodies are handed on
 * no faster than `bytesPerSec` for each origin (a token bucket holding at
 * most a quarter second of credit). Reading pauses the connection, so the
 * sender is slowed by TCP flow control rather than by dropped bytes.
 */
import type { Transport, TransportResponse } from './transport.js';

interface Bucket {
  /** When the bytes handed on so far may have been handed on at the rate (ms, monotonic). */
  due: number;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export function throttledTransport(inner: Transport, bytesPerSec: number): Transport {
  if (!(bytesPerSec > 0)) throw new RangeError(`rate must be positive, not ${bytesPerSec}`);
  const buckets = new Map<string, Bucket>();
  const burstMs = 250;
  const pace = async (origin: string, bytes: number, signal: AbortSignal) => {
    const b = buckets.get(origin) ?? { due: 0 };
    buckets.set(origin, b);
    const now = performance.now();
    b.due = Math.max(b.due, now - burstMs) + (bytes * 1000) / bytesPerSec;
    const wait = b.due - now;
    if (wait > 0 && !signal.aborted) await sleep(wait);
  };
  return {
    name: `${inner.name}+rate`,
    async send(r) {
      const res = await inner.send(r);
      const origin = r.url.origin;
      const body = res.body;
      async function* paced(): AsyncGenerator<Buffer, void, undefined> {
        for await (const chunk of body) {
          await pace(origin, chunk.length, r.signal);
          yield chunk;
        }
      }
      const out: TransportResponse = { ...res, body: paced() };
      return out;
    },
    close: () => inner.close(),
  };
}
