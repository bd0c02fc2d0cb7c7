/**
 * The courier's return trip, the mirror's half.
 *
 * `exportTelemetry` writes everything in the outbox not yet acknowledged into
 * one file (format in core/telemetry.ts): a header signed with the mirror's
 * key, naming the sequence range, the number of lines and their sha256, and
 * chained to the previous export by that one's header hash; then one line per
 * record. The file appears only complete (temp file, fsync, rename). Nothing
 * is removed from the outbox: that waits for the server's acknowledgement.
 *
 * `importAck` checks an ack against the server key the mirror pinned and
 * against the exports it made, then trims what the server has.
 */
import { createReadStream } from 'node:fs';
import { mkdir, open, readFile, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { createHash } from 'node:crypto';
import { tempPathFor, withAtomicFile, writeFileAtomic } from '../platform/fsx.js';
import { loadPublicKey } from '../platform/keyfile.js';
import { keyIdOf } from '../core/ed25519.js';
import {
  EXPORT_TYPE,
  TelemetryError,
  signExportHeader,
  verifyAck,
  type AckPayload,
} from '../core/telemetry.js';
import type { MirrorIdentity } from './identity.js';
import { serialize } from '../platform/lock.js';
import type { MirrorOutbox } from './outbox.js';

export interface ExportSummary {
  out: string;
  mirror: string;
  number: number;
  prev: string | null;
  hash: string;
  from: number;
  to: number;
  records: number;
  heartbeats: number;
  enrolments: number;
  relayedBatches: number;
  bytes: number;
}

export function exportTelemetry(
  outbox: MirrorOutbox,
  identity: MirrorIdentity,
  site: string,
  out: string,
  onProgress?: (records: number) => void,
): Promise<ExportSummary> {
  // One export at a time (each takes the next number); the outbox is not trimmed under it.
  return serialize(`export:${outbox.dataDir}`, () =>
    outbox.holdingTrim(() => writeExport(outbox, identity, site, out, onProgress)),
  );
}

async function writeExport(
  outbox: MirrorOutbox,
  identity: MirrorIdentity,
  site: string,
  out: string,
  onProgress?: (records: number) => void,
): Promise<ExportSummary> {
  const last = outbox.exports.at(-1);
  const number = (last?.number ?? 0) + 1;
  const prev = last?.hash ?? null;
  const from = outbox.acked + 1;
  const to = outbox.head;
  const bodyPath = tempPathFor(out);
  const sha = createHash('sha256');
  const counts = { records: 0, heartbeats: 0, enrolments: 0, relayedBatches: 0 };
  let bodyBytes = 0;
  try {
    const fh = await open(bodyPath, 'wx', 0o600);
    try {
      for (let next = from; next <= to;) {
        const entries = await outbox.read(next, { maxRecords: 5000, maxBytes: 8 * 1024 * 1024 });
        const chunk: string[] = [];
        for (const e of entries) {
          if (e.seq > to) break;
          chunk.push(JSON.stringify(e) + '\n');
          counts.records++;
          if (e.kind === 'heartbeat') counts.heartbeats++;
          else if (e.kind === 'enrolment') counts.enrolments++;
          else if (e.kind === 'batch') counts.relayedBatches++;
        }
        if (!chunk.length) break;
        const bytes = Buffer.from(chunk.join(''), 'utf8');
        sha.update(bytes);
        bodyBytes += bytes.length;
        await fh.write(bytes);
        onProgress?.(counts.records);
        next = entries.at(-1)!.seq + 1;
      }
    } finally {
      await fh.close();
    }
    const { line, hash } = signExportHeader(
      {
        type: EXPORT_TYPE,
        mirror: identity.id,
        site,
        number,
        prev,
        createdAt: new Date().toISOString(),
        from,
        to,
        count: counts.records,
        sha256: sha.digest('hex'),
      },
      identity.key,
    );
    await mkdir(dirname(out), { recursive: true });
    await withAtomicFile(out, { mode: 0o644 }, async (dst) => {
      await dst.write(line + '\n');
      for await (const chunk of createReadStream(bodyPath)) await dst.write(chunk as Buffer);
    });
    await outbox.recordExport({ number, hash, from, to, at: new Date().toISOString() });
    return {
      out,
      mirror: identity.id,
      number,
      prev,
      hash,
      from,
      to,
      ...counts,
      bytes: Buffer.byteLength(line) + 1 + bodyBytes,
    };
  } finally {
    await rm(bodyPath, { force: true });
  }
}

/** Where the server's public key is pinned in a mirror's data dir. */
export const serverKeyPath = (dataDir: string) => join(dataDir, 'identity', 'server.pub');

/** The keyid of the server key pinned in a data dir, or undefined when none is. */
export async function pinnedServerKeyId(dataDir: string): Promise<string | undefined> {
  return (await loadPinned(serverKeyPath(dataDir)))?.keyid;
}

const loadPinned = (path: string) =>
  loadPublicKey(path).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT' || (e as { cause?: NodeJS.ErrnoException }).cause?.code === 'ENOENT')
      return undefined;
    throw e;
  });

/**
 * The server key acks are checked with: the pinned one, or `given` (a ferry
 * .pub file) when none is pinned yet, with `pin` to record it — called only
 * once an ack has verified under it, so a refused ack leaves the data dir as
 * it was. A `given` key that differs from the pinned one is refused.
 */
export async function serverKeyFor(
  dataDir: string,
  given?: string,
): Promise<{ key: Uint8Array; pin?: () => Promise<void> }> {
  const pinned = serverKeyPath(dataDir);
  const have = await loadPinned(pinned);
  if (given === undefined) {
    if (!have)
      throw new TelemetryError(
        'SERVER_KEY_MISSING',
        'no server key is pinned in this data dir: pass --server-key SERVER.pub (from `ferry server identity --out`) once',
      );
    return { key: have.publicKey };
  }
  const key = await loadPublicKey(given);
  if (have) {
    if (keyIdOf(have.publicKey) !== keyIdOf(key.publicKey))
      throw new TelemetryError(
        'SERVER_KEY_MISMATCH',
        `--server-key ${given} is not the server key pinned in this data dir (keyid ${have.keyid.slice(0, 16)}…)`,
      );
    return { key: have.publicKey };
  }
  const pub = {
    type: 'ferry.pub/v1',
    keytype: 'ed25519',
    keyid: key.keyid,
    public: Buffer.from(key.publicKey).toString('hex'),
  };
  return {
    key: key.publicKey,
    pin: async () => {
      await mkdir(dirname(pinned), { recursive: true });
      await writeFileAtomic(pinned, JSON.stringify(pub, null, 2) + '\n');
    },
  };
}

export interface AckSummary {
  mirror: string;
  number: number;
  upTo: number;
  /** Records trimmed from the outbox by this ack (0 when it was applied before). */
  trimmed: number;
  alreadyApplied: boolean;
  depth: number;
}

/** Applies a server's ack (parsed JSON) to this mirror's outbox. */
export async function importAck(
  outbox: MirrorOutbox,
  identity: MirrorIdentity,
  ack: unknown,
  serverPublicKey: Uint8Array,
): Promise<AckSummary> {
  const p: AckPayload = verifyAck(ack, serverPublicKey);
  if (p.mirror !== identity.id)
    throw new TelemetryError('ACK_MISMATCH', `ack is for mirror ${p.mirror}, this mirror is ${identity.id}`);
  const mark = outbox.exports.find((m) => m.number === p.number);
  if (!mark || mark.hash !== p.hash)
    throw new TelemetryError(
      'ACK_MISMATCH',
      `ack names export ${p.number} (${p.hash.slice(0, 16)}…), which this mirror did not make (or no longer remembers)`,
    );
  if (p.upTo !== mark.to)
    throw new TelemetryError(
      'ACK_MISMATCH',
      `ack covers up to ${p.upTo}, export ${p.number} ended at ${mark.to}`,
    );
  const before = outbox.acked;
  await outbox.ack(p.upTo);
  return {
    mirror: identity.id,
    number: p.number,
    upTo: p.upTo,
    trimmed: Math.max(0, outbox.acked - before),
    alreadyApplied: before >= p.upTo,
    depth: outbox.depth,
  };
}

/** Reads an ack file as JSON (refusing anything that is not). */
export async function readAckFile(path: string): Promise<unknown> {
  const text = await readFile(path, 'utf8');
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new TelemetryError('TELEMETRY_INVALID', `${path} is not JSON`);
  }
}

/**
 * `ferry mirror import-ack`, wherever it runs (the serving mirror's control
 * socket, or the CLI on an idle data dir): the server key, the ack, then —
 * only if the ack was good — the key pinned on first use.
 */
export async function applyAck(
  outbox: MirrorOutbox,
  identity: MirrorIdentity,
  dataDir: string,
  ack: unknown,
  serverKey?: string,
): Promise<AckSummary> {
  const { key, pin } = await serverKeyFor(dataDir, serverKey);
  const summary = await importAck(outbox, identity, ack, key);
  await pin?.();
  return summary;
}
