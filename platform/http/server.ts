/**
 * The HTTP server kit the services listen with: the listening address, keep-alive and timeouts,
 * a cap on concurrent connections, and graceful drain (platform/drain.ts). The service brings only
 * its request handler (a Koa app's callback, or a fast path in front of one), so nothing here runs
 * per request except the drain's bookkeeping.
 *
 * Connection cap: at `maxConnections` the kernel still accepts, and Node closes each new socket at
 * once (the `drop` event): a flood of slow or idle sockets cannot exhaust file descriptors or memory.
 * Each refused connection is counted; one line is logged when refusing starts and one when it
 * ends. When refusing starts (and at most once a second while it lasts), keep-alive connections
 * waiting for their next request are ended gracefully, so waiting clients get their slots; sockets still sending headers are closed by
 * `headersTimeoutMs` (answered 408).
 *
 * Error mapping and bodies for Koa apps are in server-errors.ts and server-body.ts.
 */
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createSecureContext } from 'node:tls';
import type { AddressInfo } from 'node:net';
import { FerryError } from '../../core/errors.js';
import { trackConnections } from '../drain.js';
import { PlatformError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';

export interface ServerLimits {
  /** Concurrent connections; more are closed as they arrive and counted. */
  maxConnections: number;
  /** Time a client has to send its request headers (answered 408 after it). */
  headersTimeoutMs: number;
  /** Time a client has to send its whole request, body included; responses are not limited. */
  requestTimeoutMs: number;
  /** How long an answered keep-alive connection may wait for its next request. */
  keepAliveTimeoutMs: number;
}

export const DEFAULT_SERVER_LIMITS: ServerLimits = {
  maxConnections: 1024,
  headersTimeoutMs: 20_000,
  requestTimeoutMs: 10 * 60_000,
  keepAliveTimeoutMs: 65_000,
};

/**
 * TLS (node:https) with a PEM certificate chain and key read at start; a pair that cannot be read or
 * does not match is refused (TLS_INVALID) rather than served without TLS. Client certificates are
 * not implemented yet (TLS_NOT_IMPLEMENTED).
 */
export interface TlsOptions {
  certPath: string;
  keyPath: string;
  /** Client certificates must chain to this CA. */
  clientCaPath?: string;
}

export interface HttpServerOptions {
  host: string;
  port: number;
  handler: (req: IncomingMessage, res: ServerResponse) => void;
  log: Logger;
  limits?: Partial<ServerLimits>;
  /**
   * Where the connection figures go: `<prefix>_connections_refused_total` (counter) and
   * `<prefix>_connections_open` (gauge), e.g. prefix `ferry_mirror`.
   */
  metrics?: { registry: Metrics; prefix: string };
  /** The kernel's accept queue. */
  backlog?: number;
  tls?: TlsOptions;
}

export interface HttpService {
  /** `http(s)://HOST:PORT` as bound (the kernel's port when 0 was asked for). */
  url: string;
  server: Server;
  /** Connections open now. */
  connections(): number;
  /** Stops accepting, lets in-flight responses finish and flush (at most `graceMs`). */
  close(graceMs: number): Promise<void>;
}

/** `HOST:PORT` or `[V6]:PORT`, as --listen takes it. */
export function parseListen(s: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:]+)\]|([^:]+)):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535)
    throw new FerryError('USAGE', '--listen must be HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080');
  return { host: m[1] ?? m[2]!, port };
}

/** The URL clients use for a bound address. */
export function urlOf(addr: AddressInfo, scheme: 'http' | 'https' = 'http'): string {
  return `${scheme}://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`;
}

async function readTls(t: TlsOptions): Promise<{ cert: Buffer; key: Buffer }> {
  if (t.clientCaPath)
    throw new PlatformError('TLS_NOT_IMPLEMENTED', 'TLS client certificates are not implemented yet');
  const read = async (path: string, what: string) => {
    try {
      return await readFile(path);
    } catch (e) {
      throw new PlatformError(
        'TLS_INVALID',
        `the TLS ${what} ${path} cannot be read: ${(e as Error).message}`,
      );
    }
  };
  const creds = { cert: await read(t.certPath, 'certificate'), key: await read(t.keyPath, 'key') };
  try {
    createSecureContext(creds);
  } catch (e) {
    throw new PlatformError(
      'TLS_INVALID',
      `${t.certPath} and ${t.keyPath} are not a PEM certificate and its key: ${(e as Error).message}`,
    );
  }
  return creds;
}

/** The limits a server runs with: the defaults, overridden; refused (USAGE) when they cannot work. */
export function resolveLimits(partial: Partial<ServerLimits> = {}): ServerLimits {
  const l = { ...DEFAULT_SERVER_LIMITS, ...partial };
  const positive = (n: number) => Number.isSafeInteger(n) && n > 0;
  if (!positive(l.maxConnections))
    throw new FerryError('USAGE', 'max connections must be a positive integer');
  if (!positive(l.headersTimeoutMs) || !positive(l.requestTimeoutMs) || !positive(l.keepAliveTimeoutMs))
    throw new FerryError('USAGE', 'HTTP timeouts must be positive');
  if (l.headersTimeoutMs > l.requestTimeoutMs)
    throw new FerryError('USAGE', 'the header timeout cannot be longer than the request timeout');
  return l;
}

/** Creates the server, listens, and resolves once it is bound. */
export async function startHttp(o: HttpServerOptions): Promise<HttpService> {
  const limits = resolveLimits(o.limits);
  const tls = o.tls ? await readTls(o.tls) : undefined;
  const common = {
    headersTimeout: limits.headersTimeoutMs,
    requestTimeout: limits.requestTimeoutMs,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    // how often expired header/request timeouts are looked for (Node's default is every 30 s)
    connectionsCheckingInterval: Math.max(250, Math.min(5_000, Math.floor(limits.headersTimeoutMs / 4))),
  };
  // An https server serves requests exactly as an http one does (it is one, over TLS sockets).
  const server = tls
    ? (createHttpsServer({
        ...common,
        ...tls,
        handshakeTimeout: limits.headersTimeoutMs,
      }) as unknown as Server)
    : createServer(common);
  server.maxConnections = limits.maxConnections;

  const reg = o.metrics?.registry;
  const prefix = o.metrics?.prefix ?? 'ferry_http';
  const refusedName = `${prefix}_connections_refused_total`;
  const openName = `${prefix}_connections_open`;
  reg?.define(
    refusedName,
    'counter',
    'Connections closed on arrival because the connection cap was reached.',
  );
  reg?.define(openName, 'gauge', 'HTTP connections open now.');

  // One episode of refusing: from the first refused connection until the open count has fallen to
  // three quarters of the cap (so a server hovering at the cap logs one episode, not one per socket).
  let episode: { since: number; refused: number; shed: number } | undefined;
  const low = Math.floor(limits.maxConnections * 0.75);
  const connectionEvent = tls ? 'secureConnection' : 'connection';
  const drainer = trackConnections(
    server,
    () => {
      reg?.set(openName, drainer.open());
      if (episode && drainer.open() <= low) {
        o.log.info('http.connections_recovered', {
          maxConnections: limits.maxConnections,
          open: drainer.open(),
          refused: episode.refused,
          idleEnded: episode.shed,
          seconds: Math.round((Date.now() - episode.since) / 1000),
        });
        episode = undefined;
      }
    },
    connectionEvent,
  );
  server.on(connectionEvent, () => reg?.set(openName, drainer.open()));
  // Idle keep-alive connections give up their slots when refusing starts, and again at most once a
  // second while it lasts (each pass walks every connection, so not once per refused socket).
  let lastShed = 0;
  const shedIdle = () => {
    const now = Date.now();
    if (now - lastShed < 1_000) return 0;
    lastShed = now;
    return drainer.endIdle();
  };
  server.on('drop', () => {
    reg?.inc(refusedName);
    if (episode) {
      episode.refused += 1;
      episode.shed += shedIdle();
      return;
    }
    const shed = shedIdle();
    episode = { since: Date.now(), refused: 1, shed };
    o.log.warn('http.connections_capped', {
      maxConnections: limits.maxConnections,
      open: drainer.open(),
      idleEnded: shed,
      message: 'connection cap reached: refusing new connections until some close',
    });
  });
  server.on('request', o.handler);
  server.listen({ port: o.port, host: o.host, ...(o.backlog !== undefined && { backlog: o.backlog }) });
  await once(server, 'listening');
  return {
    url: urlOf(server.address() as AddressInfo, tls ? 'https' : 'http'),
    server,
    connections: () => drainer.open(),
    close: (graceMs) => drainer.close(graceMs),
  };
}
