/**
 * Graceful close of an HTTP server whose clients may read slowly. A response
 * can be finished while much of it still sits in the socket's write buffer;
 * destroying "idle" sockets (server.closeIdleConnections) would drop that tail.
 * Instead each connection is ended (socket.end(): flush, then FIN) once it has
 * no request in flight, and responses sent during shutdown say Connection: close.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

export interface Drainer {
  /** Stops accepting, lets in-flight responses finish and flush, resolves when every connection closed. */
  close(graceMs: number): Promise<void>;
}

/** Must be attached before the request handler, so that its header reaches every response. */
export function trackConnections(server: Server): Drainer {
  const inFlight = new Map<Socket, number>();
  let closing = false;
  server.on('connection', (s: Socket) => {
    inFlight.set(s, 0);
    s.once('close', () => inFlight.delete(s));
  });
  server.prependListener('request', (req: IncomingMessage, res: ServerResponse) => {
    const s = req.socket;
    inFlight.set(s, (inFlight.get(s) ?? 0) + 1);
    if (closing) res.setHeader('Connection', 'close');
    res.once('close', () => {
      const left = (inFlight.get(s) ?? 1) - 1;
      inFlight.set(s, left);
      if (closing && left === 0) s.end();
    });
  });
  return {
    close: (graceMs) =>
      new Promise<void>((resolve) => {
        closing = true;
        server.close(() => resolve());
        for (const [s, n] of inFlight) if (n === 0) s.end();
        // a client that never reads nor closes cannot hold the mirror forever
        setTimeout(() => {
          for (const s of inFlight.keys()) s.destroy();
        }, graceMs).unref();
      }),
  };
}
