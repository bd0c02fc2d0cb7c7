/**
 * The shapes the peer puller (peer-pull.ts) and its ranged path (peer-ranges.ts) share: what they know
 * of a peer, the options of one pull, and one range of a blob.
 */
import type { SourceOutcome } from '../platform/http/blob.js';
import type { ClientLimits } from '../platform/http/limits.js';
import type { Transport } from '../platform/http/transport.js';
import type { Logger } from '../platform/log.js';

/** What the puller needs to know of a peer, and what it keeps current while it works. */
export interface PullPeer {
  url: string;
  /** Transfers under way from this peer. */
  busy: number;
  failures: number;
  /** Digests the peer said it holds (its /v1/inventory). */
  holds: ReadonlySet<string>;
  /** Progress of the transfer from it that moved last. */
  transfer: { digest: string; have: number; total: number } | null;
  /** Blob bytes received from it. */
  received: number;
}

export interface PullOptions {
  blobs: { digest: string; size: number }[];
  peers: PullPeer[];
  /** Where verified blobs and partial downloads go (the store's peer-pulls/, same filesystem as blobs/). */
  dir: string;
  parallel: number;
  transport: Transport;
  limits?: Partial<ClientLimits>;
  signal: AbortSignal;
  log: Logger;
  /** Whether a peer may still be asked (not backed off). */
  usable: (p: PullPeer) => boolean;
  /** A peer failed or served bad bytes: the caller backs it off. */
  onFault: (p: PullPeer, outcome: Exclude<SourceOutcome, { kind: 'ok' | 'not_served' }>) => void;
  onReceived?: (p: PullPeer, bytes: number) => void;
  /** Blobs of at least this size are pulled in ranges from several peers when two or more hold them. */
  rangeMinBytes?: number;
  /** Size of one range (peer-ranges.ts). */
  rangeBytes?: number;
  /** Ranges received in earlier rounds, by digest (kept by the caller between rounds). */
  carried?: Map<string, Range[]>;
}

export interface Range {
  start: number;
  end: number;
  /** The peer whose bytes the partial holds for this range, once received. */
  by: PullPeer | undefined;
  /** sha256 of those bytes. */
  sha256: string;
}
