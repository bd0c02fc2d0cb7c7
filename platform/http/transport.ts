/**
 * The seam under the client: a transport sends one request and hands back the
 * response head and a body to iterate. Timeouts, deadlines, size caps, retry
 * and verification live above it (request.ts, download.ts), the same for
 * every transport.
 *
 * `nodeTransport` (node:http/https, already loaded by any Node process) is the
 * default and the agent's: the agent's idle memory budget has no room for
 * undici, and scripts/build-agent.mjs refuses to bundle it. Services where
 * throughput matters use `undiciTransport` from ./undici.js, which only they
 * import.
 */
import * as http from 'node:http';
import * as https from 'node:https';

export type ResponseHeaders = Record<string, string | string[] | undefined>;

export interface TransportRequest {
  url: URL;
  method: string;
  headers: Record<string, string>;
  body: string | Uint8Array | undefined;
  /** Aborted by the client's timers or its caller; its reason is the coded error to surface. */
  signal: AbortSignal;
}

export interface TransportResponse {
  status: number;
  headers: ResponseHeaders;
  /** The body as it arrives; reading it pauses the connection while the reader is busy. */
  body: AsyncIterable<Buffer>;
  /** Frees the connection: `destroy` cuts it (body not read to the end), else it goes back to the pool. */
  release(destroy: boolean): void;
}

export interface Transport {
  readonly name: string;
  send(req: TransportRequest): Promise<TransportResponse>;
  /** Closes pooled connections (a service stopping). */
  close(): Promise<void>;
}

export interface NodeTransportOptions {
  /** Sockets per origin (the agent talks to one or two mirrors at a time). */
  maxSockets?: number;
}

/** node:http(s) with keep-alive pools of a few sockets. */
export function nodeTransport(o: NodeTransportOptions = {}): Transport {
  const pool = { keepAlive: true, maxSockets: o.maxSockets ?? 4, maxFreeSockets: 2, timeout: 60_000 };
  const agents = { http: new http.Agent(pool), https: new https.Agent(pool) };
  return {
    name: 'node:http',
    send(r) {
      const tls = r.url.protocol === 'https:';
      const mod = tls ? https : http;
      return new Promise<TransportResponse>((resolve, reject) => {
        const headers = { ...r.headers };
        if (r.body !== undefined) headers['content-length'] = String(Buffer.byteLength(r.body));
        const req = mod.request(r.url, {
          method: r.method,
          headers,
          agent: tls ? agents.https : agents.http,
        });
        let res: http.IncomingMessage | undefined;
        // Once the head is in, the reader iterates the response: fail it there with the signal's reason.
        const abort = () => (res ?? req).destroy(r.signal.reason as Error);
        if (r.signal.aborted) abort();
        r.signal.addEventListener('abort', abort, { once: true });
        req.on('error', (e) => {
          r.signal.removeEventListener('abort', abort);
          reject(e);
        });
        req.on('response', (m) => {
          res = m;
          resolve({
            status: m.statusCode ?? 0,
            headers: m.headers,
            body: m,
            release: (destroy) => {
              r.signal.removeEventListener('abort', abort);
              if (destroy) m.destroy();
            },
          });
        });
        req.end(r.body);
      });
    },
    close() {
      agents.http.destroy();
      agents.https.destroy();
      return Promise.resolve();
    },
  };
}

let shared: Transport | undefined;

/** The process-wide node:http transport (one socket pool for the agent). */
export function defaultTransport(): Transport {
  return (shared ??= nodeTransport());
}
