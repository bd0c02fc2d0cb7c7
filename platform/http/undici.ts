/**
 * The undici transport, for services where throughput matters (the mirror's
 * telemetry forwarding, peer downloads). The agent never imports this file:
 * see ./transport.ts.
 */
import { Agent, request } from 'undici';
import type { Transport } from './transport.js';

export interface UndiciTransportOptions {
  keepAliveTimeoutMs?: number;
  /** Connections per origin. */
  connections?: number;
}

/** One undici pool; the client's own timers bound every phase, so undici's are switched off. */
export function undiciTransport(o: UndiciTransportOptions = {}): Transport {
  const dispatcher = new Agent({
    keepAliveTimeout: o.keepAliveTimeoutMs ?? 30_000,
    ...(o.connections !== undefined && { connections: o.connections }),
  });
  return {
    name: 'undici',
    async send(r) {
      const res = await request(r.url, {
        method: r.method,
        headers: r.headers,
        body: r.body === undefined ? null : r.body,
        dispatcher,
        signal: r.signal,
        headersTimeout: 0,
        bodyTimeout: 0,
      });
      return {
        status: res.statusCode,
        headers: res.headers,
        body: res.body as AsyncIterable<Buffer>,
        release: (destroy) => {
          if (destroy) res.body.destroy();
        },
      };
    },
    close: () => dispatcher.close(),
  };
}
