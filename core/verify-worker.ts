import { Worker } from 'node:worker_threads';

/**
 * Ed25519 verification on a worker thread, in batches: a service's event loop hands every signature
 * check it meets in one turn to the worker as one message, and gets one message back. On a 2-core
 * machine that keeps the event loop (HTTP, JSON, the journal) on one core and the arithmetic on the
 * other, with two thread wake-ups per batch instead of two per signature (libuv's pool). The worker
 * runs sodium-native (core/ed25519.ts); if it fails, every check waiting on it and every later one is
 * made inline with `fallback`, so a broken worker costs speed, never an answer.
 */

/** Most signatures in one message: a bound on the worker's turn, and on the latency of the first. */
const MAX_BATCH = 256;

// A CommonJS script (eval workers are): sodium-native is loaded from the path the service resolved.
// Batch layout: per item, public key (32) ‖ signature (64) ‖ message length (u32 LE) ‖ message.
const SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const sodium = require(workerData.sodium);
parentPort.on('message', ({ id, count, buf }) => {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const results = new Uint8Array(count);
  for (let i = 0, at = 0; i < count; i++) {
    const pk = b.subarray(at, at + 32);
    const sig = b.subarray(at + 32, at + 96);
    const len = b.readUInt32LE(at + 96);
    const msg = b.subarray(at + 100, at + 100 + len);
    at += 100 + len;
    try {
      results[i] = sodium.crypto_sign_verify_detached(sig, msg, pk) ? 1 : 0;
    } catch {
      results[i] = 0;
    }
  }
  parentPort.postMessage({ id, results }, [results.buffer]);
});
`;

type Check = (publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array) => boolean;
interface Item {
  publicKey: Uint8Array;
  message: Uint8Array;
  signature: Uint8Array;
  resolve: (ok: boolean) => void;
}

export class VerifyWorker {
  private readonly worker: Worker;
  private queue: Item[] = [];
  private readonly inFlight = new Map<number, Item[]>();
  private scheduled = false;
  private nextId = 1;
  private failure: Error | undefined;

  /**
   * @param sodiumPath sodium-native's resolved entry point
   * @param fallback the same check, inline, for when the worker cannot be used
   * @param onFailure told once, when the worker fails and checks go inline
   */
  constructor(
    sodiumPath: string,
    private readonly fallback: Check,
    private readonly onFailure: (e: Error) => void = () => undefined,
  ) {
    this.worker = new Worker(SOURCE, { eval: true, workerData: { sodium: sodiumPath } });
    this.worker.on('message', (m: { id: number; results: Uint8Array }) => this.settle(m.id, m.results));
    this.worker.on('error', (e) => this.fail(e));
    this.worker.on('exit', (code) => this.fail(new Error(`the verification worker exited (code ${code})`)));
    this.worker.unref(); // only checks in flight keep the process alive (see post/settle)
  }

  /**
   * Whether `signature` is `publicKey`'s over `message`. The inputs are copied into the batch at the end of
   * this event-loop turn: a caller must not change them before then.
   */
  verify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): Promise<boolean> {
    if (this.failure) return Promise.resolve(this.fallback(publicKey, message, signature));
    return new Promise<boolean>((resolve) => {
      this.queue.push({ publicKey, message, signature, resolve });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush()); // after this turn's I/O: everything it parsed goes in one batch
      }
    });
  }

  /** Stops the worker; checks still waiting are made inline. */
  async close(): Promise<void> {
    this.fail(new Error('closed'), false);
    await this.worker.terminate();
  }

  private flush(): void {
    this.scheduled = false;
    while (this.queue.length > 0 && !this.failure) this.post(this.queue.splice(0, MAX_BATCH));
    for (const it of this.queue.splice(0)) it.resolve(this.fallback(it.publicKey, it.message, it.signature));
  }

  private post(items: Item[]): void {
    let size = 0;
    for (const it of items) size += 100 + it.message.length;
    const buf = new Uint8Array(size);
    const view = new DataView(buf.buffer);
    let at = 0;
    for (const it of items) {
      buf.set(it.publicKey, at);
      buf.set(it.signature, at + 32);
      view.setUint32(at + 96, it.message.length, true);
      buf.set(it.message, at + 100);
      at += 100 + it.message.length;
    }
    const id = this.nextId++;
    this.inFlight.set(id, items);
    if (this.inFlight.size === 1) this.worker.ref();
    this.worker.postMessage({ id, count: items.length, buf }, [buf.buffer]);
  }

  private settle(id: number, results: Uint8Array): void {
    const items = this.inFlight.get(id);
    if (!items) return;
    this.inFlight.delete(id);
    if (this.inFlight.size === 0) this.worker.unref();
    items.forEach((it, i) => it.resolve(results[i] === 1));
  }

  private fail(e: Error, report = true): void {
    if (this.failure) return;
    this.failure = e;
    for (const items of this.inFlight.values())
      for (const it of items) it.resolve(this.fallback(it.publicKey, it.message, it.signature));
    this.inFlight.clear();
    this.worker.unref();
    if (report) this.onFailure(e);
  }
}
