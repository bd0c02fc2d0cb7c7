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
  /** Connections open now. */
  open(): number;
  /**
   * Ends (flush, then FIN) every keep-alive connection that has been answered and waits for its next
   * request, so that new clients get its slot; returns how many. A connection still waiting for its
   * first request is left to the server's header timeout.
   */
  endIdle(): number;
}

interface Conn {
  inFlight: number;
  answered: boolean;
}

/** Must be attached before the request handler, so that its header reaches every response. */
export function trackConnections(
  server: Server,
  onClose?: (s: Socket) => void,
  /** `secureConnection` for a TLS server: the socket its requests arrive on. */
  connectionEvent: 'connection' | 'secureConnection' = 'connection',
): Drainer {
  const conns = new Map<Socket, Conn>();
  let closing = false;
  server.on(connectionEvent, (s: Socket) => {
    conns.set(s, { inFlight: 0, answered: false });
    s.once('close', () => {
      conns.delete(s);
      onClose?.(s);
    });
  });
  server.prependListener('request', (req: IncomingMessage, res: ServerResponse) => {
    const s = req.socket;
    const c = conns.get(s);
    if (c) c.inFlight += 1;
    if (closing) res.setHeader('Connection', 'close');
    res.once('close', () => {
      if (!c) return;
      c.inFlight -= 1;
      c.answered = true;
      if (closing && c.inFlight === 0) s.end();
    });
  });
  return {
    open: () => conns.size,
    endIdle: () => {
      let n = 0;
      for (const [s, c] of conns)
        if (c.inFlight === 0 && c.answered && !s.writableEnded) {
          s.end();
          n += 1;
        }
      return n;
    },
    close: (graceMs) =>
      new Promise<void>((resolve) => {
        closing = true;
        server.close(() => resolve());
        for (const [s, c] of conns) if (c.inFlight === 0) s.end();
        // a client that never reads nor closes cannot hold the server forever
        setTimeout(() => {
          for (const s of conns.keys()) s.destroy();
        }, graceMs).unref();
      }),
  };
}
