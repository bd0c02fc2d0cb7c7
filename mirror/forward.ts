/**
 * Store and forward: takes what waits in the outbox home, oldest first.
 *
 * Each request carries one batch of this mirror's own records, signed with the
 * mirror's key and covering a contiguous part of its sequence (from..to), plus
 * the batches other mirrors handed it, as they were signed, with this mirror
 * added to their `via`. A 202 means the receiver has them durably (the server
 * stored or finally rejected them; another mirror took custody), so the outbox
 * trims through `to`. Anything else, or no answer, and the same records go
 * again later: receivers are idempotent, so a lost answer costs a duplicate,
 * never a record.
 *
 * Targets: the `--upstream` (the server, or a mirror closer to it) first; while
 * it fails, each `--peer` in order, asking it to relay (`Ferry-Relay: peer`) —
 * a peer takes them only while it has a working upstream itself, so batches
 * never wander between mirrors that have no way home. The peers are the `--peer`
 * URLs and those of the peers file, re-read as it changes. Each target failing is
 * retried with exponential back-off and jitter; a backlog drains request after
 * request with no pause while the target keeps answering.
 *
 * Requests go through the shared client (platform/http) over its undici
 * transport: an idle timeout and a total deadline per request, a capped answer.
 */
import { backoffMs, request } from '../platform/http/client.js';
import { undiciTransport } from '../platform/http/undici.js';
import type { Logger } from '../platform/log.js';
import type { Metrics } from '../platform/metrics.js';
import { BATCH_TYPE, signBatch, type CarriedBatch, type OwnRecord } from '../core/telemetry.js';
import type { MirrorIdentity } from './identity.js';
import type { MirrorOutbox, OutboxEntry, OutboxFigures } from './outbox.js';

export interface ForwardOptions {
  outbox: MirrorOutbox;
  identity: MirrorIdentity;
  site: string;
  upstream?: string;
  peers?: string[];
  /**
   * The peers to relay through, asked again before each request (at most once a second): the
   * `--peer` URLs and the peers file (mirror/peer-list.ts), so a peer added or removed there is
   * used or dropped without a restart. Given, it replaces `peers`.
   */
  peerList?: () => Promise<string[]>;
  log: Logger;
  metrics?: Metrics;
  /** Back-off after a failure: base doubles per consecutive failure up to max, then jitter in [50 %, 100 %]. */
  retryBaseMs?: number;
  retryMaxMs?: number;
  /** Wait this long after new records arrive, to send them together. */
  lingerMs?: number;
  /** Per request: records read from the outbox and about that many bytes. */
  maxRecords?: number;
  maxBytes?: number;
  /** Longest silence while sending or waiting for the answer (ms). */
  requestTimeoutMs?: number;
  /** Total deadline of one request (ms); default from the bytes sent at the client's floor rate. */
  requestDeadlineMs?: number;
}

/** Largest answer read from a receiver (its per-batch results). */
const MAX_ANSWER_BYTES = 1024 * 1024;

interface Target {
  url: string;
  kind: 'upstream' | 'peer';
  failures: number;
  retryAt: number;
  lastError?: string;
  lastOkAt?: string;
}

export interface ForwardStatus extends OutboxFigures {
  targets: {
    url: string;
    kind: string;
    ok: boolean;
    failures: number;
    lastError?: string;
    lastOkAt?: string;
  }[];
}

/** At most this many relayed batches in one request (the receiver takes 64, one is our own). */
const RELAYED_PER_REQUEST = 63;

export function forwardMetrics(m: Metrics): void {
  m.define(
    'ferry_mirror_outbox_records',
    'gauge',
    'Telemetry records waiting in the outbox for an upstream.',
  );
  m.define('ferry_mirror_outbox_bytes', 'gauge', 'Bytes the telemetry outbox holds on disk.');
  m.define(
    'ferry_mirror_outbox_oldest_timestamp_seconds',
    'gauge',
    'When the oldest record waiting in the outbox was accepted (0 when none waits).',
  );
  m.define(
    'ferry_mirror_forward_requests_total',
    'counter',
    'Forwarding requests, by target kind and result.',
  );
  m.define('ferry_mirror_forwarded_records_total', 'counter', 'Outbox records taken by an upstream or peer.');
}

/** Sets the outbox gauges (records, bytes, oldest waiting) from the outbox as it is now. */
export function outboxGauges(m: Metrics, outbox: MirrorOutbox): void {
  m.set('ferry_mirror_outbox_records', outbox.depth);
  m.set('ferry_mirror_outbox_bytes', outbox.bytes);
  m.set('ferry_mirror_outbox_oldest_timestamp_seconds', Math.floor((outbox.oldestWaitingAt ?? 0) / 1000));
}

export class Forwarder {
  private targets: Target[];
  private peersReadAt = 0;
  private readonly transport = undiciTransport({ keepAliveTimeoutMs: 30_000 });
  private stopped = false;
  private loop: Promise<void> | undefined;
  private wakeUp: (() => void) | undefined;
  private readonly abort = new AbortController();
  private unsubscribe: (() => void) | undefined;
  private readonly o: Required<
    Pick<
      ForwardOptions,
      'retryBaseMs' | 'retryMaxMs' | 'lingerMs' | 'maxRecords' | 'maxBytes' | 'requestTimeoutMs'
    >
  >;

  constructor(private readonly opts: ForwardOptions) {
    this.targets = [
      ...(opts.upstream ? [{ url: opts.upstream, kind: 'upstream' as const, failures: 0, retryAt: 0 }] : []),
      ...(opts.peers ?? []).map((url) => ({ url, kind: 'peer' as const, failures: 0, retryAt: 0 })),
    ];
    this.o = {
      retryBaseMs: opts.retryBaseMs ?? 1000,
      retryMaxMs: opts.retryMaxMs ?? 60_000,
      lingerMs: opts.lingerMs ?? 100,
      maxRecords: opts.maxRecords ?? 1000,
      maxBytes: opts.maxBytes ?? 3 * 1024 * 1024,
      requestTimeoutMs: opts.requestTimeoutMs ?? 120_000,
    };
    if (opts.metrics) forwardMetrics(opts.metrics);
  }

  /** Whether batches can get home through this mirror now: an upstream that is not failing. */
  hasRoute(): boolean {
    return this.targets.some((t) => t.kind === 'upstream' && t.failures === 0);
  }

  status(): ForwardStatus {
    const { outbox } = this.opts;
    return {
      targets: this.targets.map((t) => ({
        url: t.url,
        kind: t.kind,
        ok: t.failures === 0,
        failures: t.failures,
        ...(t.lastError !== undefined && { lastError: t.lastError }),
        ...(t.lastOkAt !== undefined && { lastOkAt: t.lastOkAt }),
      })),
      ...outbox.figures(),
    };
  }

  /** Follows the peer list: a target kept keeps its back-off; new ones join after the upstream. */
  private async refreshPeers(): Promise<void> {
    const list = this.opts.peerList;
    if (!list || Date.now() - this.peersReadAt < 1000) return;
    this.peersReadAt = Date.now();
    let urls: string[];
    try {
      urls = await list();
    } catch (e) {
      this.opts.log.warn('forward.peers_unreadable', { error: e instanceof Error ? e.message : String(e) });
      return;
    }
    const old = new Map(this.targets.filter((t) => t.kind === 'peer').map((t) => [t.url, t]));
    this.targets = [
      ...this.targets.filter((t) => t.kind === 'upstream'),
      ...urls.map((url) => old.get(url) ?? { url, kind: 'peer' as const, failures: 0, retryAt: 0 }),
    ];
  }

  start(): void {
    if (this.loop || (!this.targets.length && !this.opts.peerList)) return;
    this.unsubscribe = this.opts.outbox.onAppend(() => this.wake());
    this.loop = this.run().catch((e: unknown) => {
      this.opts.log.error('forward.crashed', { error: e instanceof Error ? e.message : String(e) });
    });
  }

  private wake(): void {
    const w = this.wakeUp;
    this.wakeUp = undefined;
    w?.();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        if (this.wakeUp === done) this.wakeUp = undefined;
        resolve();
      };
      const t = setTimeout(done, ms);
      this.wakeUp = done;
    });
  }

  private async run(): Promise<void> {
    const { outbox, metrics } = this.opts;
    while (!this.stopped) {
      if (metrics) outboxGauges(metrics, outbox);
      await this.refreshPeers();
      if (outbox.depth === 0) {
        // Woken by the next append; a peers file is looked at meanwhile, so the status stays current.
        await this.sleep(this.opts.peerList ? 5000 : 60_000);
        if (!this.stopped && outbox.depth > 0) await this.sleep(this.o.lingerMs);
        continue;
      }
      const now = Date.now();
      const target = this.targets.find((t) => t.retryAt <= now);
      if (!target) {
        // None yet (a peers file still empty): look again in a second.
        const next = Math.min(now + 1000, ...this.targets.map((t) => t.retryAt));
        await this.sleep(Math.max(10, next - now));
        continue;
      }
      await this.sendOnce(target);
    }
  }

  /** One request to `target` with what waits first in the outbox. */
  private async sendOnce(target: Target): Promise<void> {
    const { outbox, identity, log, metrics } = this.opts;
    let entries = await outbox.read(outbox.acked + 1, {
      maxRecords: this.o.maxRecords,
      maxBytes: this.o.maxBytes,
    });
    if (!entries.length) return;
    entries = capRelayed(entries);
    const from = outbox.acked + 1;
    const to = entries.at(-1)!.seq;
    const own = entries.filter((e): e is OutboxEntry & OwnRecord => e.kind !== 'batch');
    const envelope = signBatch(
      {
        type: BATCH_TYPE,
        mirror: identity.id,
        site: this.opts.site,
        createdAt: new Date().toISOString(),
        from,
        to,
        records: own,
      },
      identity.key,
    );
    const batches: CarriedBatch[] = [{ envelope, via: [identity.id] }];
    for (const e of entries)
      if (e.kind === 'batch') batches.push({ envelope: e.envelope, via: [...e.via, identity.id] });
    const started = Date.now();
    try {
      const res = await request(new URL('/v1/telemetry', target.url).href, {
        method: 'POST',
        transport: this.transport,
        headers: { 'content-type': 'application/json', 'ferry-relay': target.kind },
        body: JSON.stringify({ batches }),
        maxBytes: MAX_ANSWER_BYTES,
        timeoutMs: this.o.requestTimeoutMs,
        ...(this.opts.requestDeadlineMs !== undefined && { deadlineMs: this.opts.requestDeadlineMs }),
        signal: this.abort.signal,
      });
      const text = res.body.toString('utf8');
      if (res.status !== 202) {
        let code = `HTTP_${res.status}`;
        try {
          code = (JSON.parse(text) as { code?: string }).code ?? code;
        } catch {
          /* not JSON: keep the status */
        }
        throw new Error(`${target.kind} answered ${res.status} ${code}`);
      }
      const rejected = finalRejections(text);
      if (rejected.length)
        log.warn('forward.rejected', { target: target.url, from, to, rejected: rejected.slice(0, 20) });
      await outbox.ack(to);
      if (target.failures > 0) log.info('forward.restored', { target: target.url, kind: target.kind });
      target.failures = 0;
      target.retryAt = 0;
      target.lastOkAt = new Date().toISOString();
      delete target.lastError;
      metrics?.inc('ferry_mirror_forward_requests_total', { target: target.kind, result: 'ok' });
      metrics?.inc('ferry_mirror_forwarded_records_total', {}, entries.length);
      log.debug('forward.sent', {
        target: target.url,
        from,
        to,
        records: entries.length,
        ms: Date.now() - started,
      });
    } catch (e) {
      if (this.stopped) return;
      target.failures++;
      const delay = backoffMs(target.failures - 1, {
        baseMs: this.o.retryBaseMs,
        maxMs: this.o.retryMaxMs,
        jitter: 'equal',
      });
      target.retryAt = Date.now() + delay;
      target.lastError = e instanceof Error ? e.message : String(e);
      metrics?.inc('ferry_mirror_forward_requests_total', { target: target.kind, result: 'error' });
      log[target.failures === 1 ? 'warn' : 'debug']('forward.failed', {
        target: target.url,
        kind: target.kind,
        failures: target.failures,
        retryInMs: Math.round(target.retryAt - Date.now()),
        error: target.lastError,
      });
    }
  }

  /** Stops after the request in flight (cut off after `graceMs`). */
  async stop(graceMs = 5_000): Promise<void> {
    this.stopped = true;
    this.unsubscribe?.();
    this.wake();
    const cut = setTimeout(() => this.abort.abort(), graceMs);
    await this.loop;
    clearTimeout(cut);
    await this.transport.close().catch(() => undefined);
  }
}

/** Entries up to (not including) the relayed batch that would exceed what one request may carry. */
function capRelayed(entries: OutboxEntry[]): OutboxEntry[] {
  let relayed = 0;
  for (let i = 0; i < entries.length; i++) {
    if (entries[i]!.kind === 'batch' && ++relayed > RELAYED_PER_REQUEST) return entries.slice(0, i);
  }
  return entries;
}

/** The final per-batch or per-record rejections a server reported in its 202 (for the log). */
function finalRejections(text: string): { index?: number; seq?: number; code: string }[] {
  try {
    const v = JSON.parse(text) as {
      results?: { index: number; code?: string; rejected?: { seq: number; code: string }[] }[];
    };
    const out: { index?: number; seq?: number; code: string }[] = [];
    for (const r of v.results ?? []) {
      if (r.code) out.push({ index: r.index, code: r.code });
      for (const x of r.rejected ?? []) out.push({ seq: x.seq, code: x.code });
    }
    return out;
  } catch {
    return [];
  }
}
