/**
 * The running mirror's control socket, `<data>/control.sock` (mode 0600: the
 * file system says who may use it). Commands that change the outbox while
 * `serve` runs — export for the courier, apply a server's ack — are carried
 * out by the serving process itself, which owns the outbox; the CLI asks it
 * here, and does the work itself only when no mirror is serving.
 *
 * HTTP/1.1 over the Unix socket, JSON both ways: POST /export {out},
 * POST /import-ack {ack, serverKey?}, GET /status. Answers {ok:true, …} or
 * {ok:false, code, message}.
 *
 * A Unix socket's address holds at most 107 bytes. When `<data>/control.sock`
 * is longer, both sides name the same file through a descriptor of the data
 * directory they hold open: `/proc/self/fd/N/control.sock` (Linux).
 */
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { chmod, open, rm } from 'node:fs/promises';
import { createServer, request, type Server } from 'node:http';
import { join } from 'node:path';
import { isCodedError } from '../core/errors.js';
import { parseJsonStrict } from '../core/json.js';
import type { Logger } from '../platform/log.js';

export const controlSocketPath = (dataDir: string) => join(dataDir, 'control.sock');

/** The longest socket path used as it is (sockaddr_un holds 108 bytes with the terminating NUL). */
const MAX_SOCKET_PATH = 100;

/**
 * A name for the control socket that fits in a socket address: its path, or the same file reached
 * through an open descriptor of the data dir (`release` closes it). Undefined when neither is possible.
 */
async function socketName(
  dataDir: string,
): Promise<{ name: string; release: () => Promise<void> } | undefined> {
  const path = controlSocketPath(dataDir);
  if (Buffer.byteLength(path) <= MAX_SOCKET_PATH) return { name: path, release: () => Promise.resolve() };
  if (!existsSync('/proc/self/fd')) return undefined;
  const dir = await open(dataDir, 'r');
  return { name: `/proc/self/fd/${dir.fd}/control.sock`, release: () => dir.close() };
}

export type ControlHandler = (body: Record<string, unknown>) => Promise<Record<string, unknown>>;

export interface ControlServer {
  path: string;
  close(): Promise<void>;
}

const MAX_BODY = 1024 * 1024;

/** Listens on the control socket. The caller holds the outbox lock, so a socket file left there is stale. */
export async function startControl(
  dataDir: string,
  handlers: Record<string, ControlHandler>,
  log: Logger,
): Promise<ControlServer | undefined> {
  const path = controlSocketPath(dataDir);
  const socket = await socketName(dataDir);
  if (!socket) {
    log.warn('control.unavailable', {
      path,
      reason: 'path too long for a Unix socket, and no /proc/self/fd',
    });
    return undefined;
  }
  await rm(path, { force: true });
  const server: Server = createServer((req, res) => {
    const reply = (status: number, body: Record<string, unknown>) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size <= MAX_BODY) chunks.push(c);
    });
    req.on('end', () => {
      const route = `${req.method} ${req.url}`;
      const handler = Object.hasOwn(handlers, route) ? handlers[route] : undefined;
      if (!handler)
        return reply(404, { ok: false, code: 'NOT_FOUND', message: `no ${req.method} ${req.url}` });
      if (size > MAX_BODY)
        return reply(413, { ok: false, code: 'BODY_TOO_LARGE', message: 'body too large' });
      let body: Record<string, unknown> = {};
      try {
        if (chunks.length) {
          const v = parseJsonStrict(Buffer.concat(chunks));
          if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
          body = v as Record<string, unknown>;
        }
      } catch {
        return reply(400, { ok: false, code: 'BAD_REQUEST', message: 'body is not a JSON object' });
      }
      handler(body).then(
        (r) => reply(200, { ok: true, ...r }),
        (e: unknown) => {
          if (isCodedError(e)) return reply(422, { ok: false, code: e.code, message: e.message });
          log.error('control.failed', { route: req.url, error: e instanceof Error ? e.message : String(e) });
          reply(500, { ok: false, code: 'INTERNAL', message: e instanceof Error ? e.message : String(e) });
        },
      );
    });
  });
  try {
    server.listen(socket.name);
    await once(server, 'listening');
    await chmod(path, 0o600);
  } catch (e) {
    server.close();
    await socket.release();
    throw e;
  }
  return {
    path,
    close: async () => {
      server.close();
      server.closeAllConnections();
      await rm(path, { force: true });
      await socket.release();
    },
  };
}

export interface ControlAnswer {
  ok: boolean;
  code?: string;
  message?: string;
  [k: string]: unknown;
}

/**
 * Asks the serving mirror; undefined when none answers on the socket (no
 * socket, or a stale one), in which case the caller may do the work itself.
 */
export async function callControl(
  dataDir: string,
  method: 'GET' | 'POST',
  route: string,
  body?: Record<string, unknown>,
): Promise<ControlAnswer | undefined> {
  const socket = await socketName(dataDir).catch(() => undefined);
  if (!socket) return undefined;
  try {
    return await ask(socket.name, method, route, body);
  } finally {
    await socket.release();
  }
}

function ask(
  socketPath: string,
  method: 'GET' | 'POST',
  route: string,
  body?: Record<string, unknown>,
): Promise<ControlAnswer | undefined> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const req = request(
      {
        socketPath,
        path: route,
        method,
        headers: data ? { 'content-type': 'application/json', 'content-length': data.length } : {},
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          try {
            resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')) as ControlAnswer);
          } catch {
            reject(
              new Error(
                `the mirror's control socket answered ${res.statusCode} with a body that is not JSON`,
              ),
            );
          }
        });
        res.on('error', reject);
      },
    );
    req.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED') resolve(undefined);
      else reject(e);
    });
    req.end(data);
  });
}
