/**
 * `ferry server import-telemetry`: an export file a courier carried home.
 *
 * Pass 1 (read only) checks everything before anything is stored: registered
 * mirror, header signature, site, sha256 and line count of the body, each
 * line an outbox record with strictly increasing seq inside [from,to]. Pass 2
 * ingests: own records as the mirror's, relayed batch lines as carried
 * batches. The export chain (number, prev) decides idempotency and gaps.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { basename } from 'node:path';
import { writeFileAtomic } from '../platform/fsx.js';
import {
  assertOutboxRecord,
  readExportHeader,
  signAck,
  TelemetryError,
  TELEMETRY_LIMITS,
  verifyExportHeader,
  type ExportHeader,
  type OutboxRecord,
} from '../core/telemetry.js';
import { ServerError, type RejectionCode } from './errors.js';
import { newTally, type BatchOutcome, type MirrorInfo, type Tally } from './ingest.js';
import { fmt, type Interval } from './intervals.js';
import { agentOf, counterGaps, coverageGaps, mirrorOf, type MirrorProgress } from './fleet-state.js';
import type { ServerStore } from './store.js';

/** Lines of a file with their exact bytes; `nl`: the line ended with a newline. */
async function* lines(path: string): AsyncGenerator<{ line: Buffer; nl: boolean }> {
  let pending: Buffer = Buffer.alloc(0);
  for await (const chunk of createReadStream(path, { highWaterMark: 1024 * 1024 }) as AsyncIterable<Buffer>) {
    const data: Buffer = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    let start = 0;
    for (;;) {
      const nl = data.indexOf(0x0a, start);
      if (nl < 0) break;
      yield { line: data.subarray(start, nl), nl: true };
      start = nl + 1;
    }
    pending = Buffer.from(data.subarray(start));
    if (pending.length > TELEMETRY_LIMITS.exportLineBytes)
      throw new TelemetryError(
        'TELEMETRY_INVALID',
        `export: a line is longer than ${TELEMETRY_LIMITS.exportLineBytes} bytes`,
      );
  }
  if (pending.length) yield { line: pending, nl: false };
}

function parseLine(line: Buffer, n: number): OutboxRecord {
  let v: unknown;
  try {
    v = JSON.parse(line.toString('utf8'));
  } catch {
    throw new TelemetryError('TELEMETRY_INVALID', `export line ${n}: not JSON`);
  }
  assertOutboxRecord(v, `export line ${n}`);
  return v;
}

export interface CheckedExport {
  file: string;
  header: ExportHeader;
  hash: string;
  mirror: MirrorInfo;
}

/** Pass 1: everything about the file that does not depend on what the server holds. */
export async function checkExport(
  path: string,
  registry: { get(id: string): MirrorInfo | undefined },
): Promise<CheckedExport> {
  let first: { header: ExportHeader; hash: string; mirror: MirrorInfo } | undefined;
  const h = createHash('sha256');
  let count = 0;
  let last = 0;
  let orderError: string | undefined;
  let parseError: TelemetryError | undefined;
  for await (const { line, nl } of lines(path)) {
    if (!first) {
      const { envelope, header, hash } = readExportHeader(line.toString('utf8'));
      const mirror = registry.get(header.mirror);
      if (!mirror)
        throw new TelemetryError('UNKNOWN_MIRROR', `export: mirror ${header.mirror} is not registered`);
      verifyExportHeader(envelope, header, mirror.publicKey);
      if (header.site !== mirror.site)
        throw new ServerError(
          'WRONG_SITE',
          `export: site ${header.site} but mirror ${mirror.id} is registered for ${mirror.site}`,
        );
      first = { header, hash, mirror };
      continue;
    }
    h.update(line);
    if (nl) h.update('\n');
    count++;
    if (parseError || orderError) continue;
    try {
      const r = parseLine(line, count);
      if (r.seq <= last || r.seq < first.header.from || r.seq > first.header.to)
        orderError = `export line ${count}: seq ${r.seq} is out of order or outside ${first.header.from}..${first.header.to}`;
      last = r.seq;
    } catch (e) {
      parseError =
        e instanceof TelemetryError ? e : new TelemetryError('TELEMETRY_INVALID', (e as Error).message);
    }
  }
  if (!first) throw new TelemetryError('TELEMETRY_INVALID', 'export: the file is empty');
  const { header } = first;
  if (count !== header.count)
    throw new TelemetryError(
      'EXPORT_TAMPERED',
      `export: ${count} lines after the header, the signed header says ${header.count}`,
    );
  if (h.digest('hex') !== header.sha256)
    throw new TelemetryError(
      'EXPORT_TAMPERED',
      'export: the lines do not match the sha256 in the signed header',
    );
  if (orderError) throw new TelemetryError('EXPORT_OUT_OF_ORDER', orderError);
  if (parseError) throw parseError;
  return { file: path, ...first };
}

export type ChainStatus =
  | { status: 'ok' }
  | { status: 'already imported' }
  | { status: 'gap'; missing: Interval | null; message: string };

/** Where an export stands in its mirror's chain; throws EXPORT_OUT_OF_ORDER for an older one. */
export function chainStatus(p: MirrorProgress | undefined, header: ExportHeader, hash: string): ChainStatus {
  const last = p?.lastExport ?? 0;
  const seen = p?.exports[String(header.number)];
  if (seen === hash) return { status: 'already imported' };
  if (seen !== undefined)
    throw new TelemetryError(
      'EXPORT_OUT_OF_ORDER',
      `export ${header.number} of ${header.mirror} was already imported with another header`,
    );
  if (header.number <= last)
    throw new TelemetryError(
      'EXPORT_OUT_OF_ORDER',
      `export ${header.number} is older than export ${last}, already imported`,
    );
  if (header.number > last + 1) {
    const missing: Interval = [last + 1, header.number - 1];
    return {
      status: 'gap',
      missing,
      message: `exports ${fmt(missing)} of ${header.mirror} were never imported`,
    };
  }
  if (header.prev !== (p?.lastExportHash ?? null))
    return {
      status: 'gap',
      missing: null,
      message: `export ${header.number} does not follow the export ${last} imported here (prev differs)`,
    };
  return { status: 'ok' };
}

export interface ImportReport {
  ok: true;
  file: string;
  mirror: string;
  site: string;
  number: number;
  hash: string;
  from: number;
  to: number;
  chain: ChainStatus;
  stored: number;
  enrolments: number;
  duplicates: number;
  parked: number;
  rejected: number;
  rejectedByCode: Partial<Record<RejectionCode, number>>;
  rejections: Tally['rejected'];
  batches: { total: number; stored: number; duplicate: number; rejected: number };
  coverageGaps: Record<string, string[]>;
  counterGaps: { agents: number; missing: number; first: { agentId: string; gaps: string[] }[] };
  ack: string | null;
}

/** Pass 1, then pass 2 inside one ingest (one journal group), then the ack. */
export async function importExport(
  store: ServerStore,
  path: string,
  o: { ackOut?: string } = {},
): Promise<ImportReport> {
  await store.mirrors.reload();
  const checked = await checkExport(path, store.mirrors);
  const { header, hash, mirror } = checked;
  const own = newTally();
  const outcomes: BatchOutcome[] = [];
  const touched = new Set<string>();
  const chain = await store.ingest(`export:${basename(path)}`, async (ing) => {
    const chain = chainStatus(mirrorOf(store.state, mirror.id), header, hash);
    if (chain.status === 'already imported') return chain;
    let n = 0;
    const again = createHash('sha256');
    for await (const { line, nl } of lines(path)) {
      if (n++ === 0) continue;
      again.update(line);
      if (nl) again.update('\n');
      const r = parseLine(line, n - 1);
      if (r.kind === 'batch')
        outcomes.push(await ing.carried({ envelope: r.envelope, via: r.via }, mirror.id));
      else await ing.own(mirror, r, own);
    }
    // The file must not have changed since pass 1 checked it (nothing is stored if it did).
    if (n - 1 !== header.count || again.digest('hex') !== header.sha256)
      throw new TelemetryError('EXPORT_TAMPERED', 'export: the file changed while it was being imported');
    ing.cover(mirror, header.from, header.to);
    ing.note({
      kind: 'export',
      at: ing.now,
      mirror: mirror.id,
      number: header.number,
      hash,
      from: header.from,
      to: header.to,
    });
    for (const r of ing.records)
      if (r.kind === 'heartbeat' || r.kind === 'enrolment')
        touched.add(r.kind === 'heartbeat' ? r.agentId : r.agent.agentId);
    return chain;
  });
  let ack: string | null = null;
  if (o.ackOut) {
    const env = signAck(
      {
        type: 'ferry.telemetry-ack/v1',
        mirror: mirror.id,
        number: header.number,
        hash,
        upTo: header.to,
        createdAt: store.now().toISOString(),
      },
      store.key,
    );
    await writeFileAtomic(o.ackOut, JSON.stringify(env) + '\n');
    ack = o.ackOut;
  }
  return report(store, checked, chain, own, outcomes, touched, ack);
}

function report(
  store: ServerStore,
  { file, header, hash, mirror }: CheckedExport,
  chain: ChainStatus,
  own: Tally,
  outcomes: BatchOutcome[],
  touched: Set<string>,
  ack: string | null,
): ImportReport {
  const tallies = [own, ...outcomes.map((o) => o.tally)];
  const sum = (f: (t: Tally) => number) => tallies.reduce((n, t) => n + f(t), 0);
  const rejections = tallies.flatMap((t) => t.rejected);
  const rejectedByCode: Partial<Record<RejectionCode, number>> = {};
  for (const r of rejections) rejectedByCode[r.code] = (rejectedByCode[r.code] ?? 0) + 1;
  const mirrors = new Set([mirror.id, ...outcomes.flatMap((o) => (o.mirror ? [o.mirror] : []))]);
  const coverage: Record<string, string[]> = {};
  for (const m of mirrors) {
    const gaps = coverageGaps(store.state, m);
    if (gaps.length) coverage[m] = gaps.map(fmt);
  }
  let missing = 0;
  const first: { agentId: string; gaps: string[] }[] = [];
  let agents = 0;
  for (const id of touched) {
    const a = agentOf(store.state, id);
    if (!a) continue;
    const g = counterGaps(a.counters, 3);
    if (g.missing === 0) continue;
    agents++;
    missing += g.missing;
    if (first.length < 10) first.push({ agentId: id, gaps: g.first });
  }
  return {
    ok: true,
    file,
    mirror: mirror.id,
    site: mirror.site,
    number: header.number,
    hash,
    from: header.from,
    to: header.to,
    chain,
    stored: sum((t) => t.stored),
    enrolments: sum((t) => t.enrolments),
    duplicates: sum((t) => t.duplicates),
    parked: sum((t) => t.parked),
    rejected: rejections.length,
    rejectedByCode,
    rejections: rejections.slice(0, 20),
    batches: {
      total: outcomes.length,
      stored: outcomes.filter((o) => o.ok && !o.duplicate).length,
      duplicate: outcomes.filter((o) => o.ok && o.duplicate).length,
      rejected: outcomes.filter((o) => !o.ok).length,
    },
    coverageGaps: coverage,
    counterGaps: { agents, missing, first },
    ack,
  };
}
