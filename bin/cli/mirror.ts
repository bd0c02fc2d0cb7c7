import type { UpstreamBundlesStatus } from '../../mirror/upstream-bundles.js';
import { mkdir, readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { CodedError, FerryError } from '../../core/errors.js';
import { writeFileAtomic } from '../../platform/fsx.js';
import { loadPublicKey } from '../../platform/keyfile.js';
import { mirrorIdOf } from '../../core/telemetry.js';
import { callControl } from '../../mirror/control.js';
import { applyAck, exportTelemetry, pinnedServerKeyId, readAckFile } from '../../mirror/courier.js';
import { MirrorError } from '../../mirror/errors.js';
import { mirrorIdentity, type MirrorIdentity } from '../../mirror/identity.js';
import { acquireLock } from '../../platform/lock.js';
import { checkBundleFile } from '../../platform/bundle-file.js';
import { isLockedError } from '../../platform/errors.js';
import { MirrorOutbox, type OutboxFigures } from '../../mirror/outbox.js';
import { createLogger, silentLogger } from '../../platform/log.js';
import { parseDuration } from '../../core/time.js';
import { AgentsStore } from '../../mirror/agents.js';
import { enrolmentOps, type AgentView, type EnrolmentOps } from '../../mirror/enrolment.js';
import type { TokenView } from '../../mirror/tokens.js';
import { importBundle } from '../../mirror/import.js';
import { fleetStatus, fleetStatusOptions, fleetStatusUsage, printFleet } from './fleet.js';
import { startMirror, type PeerSyncSettings } from '../../mirror/serve.js';
import type { PeerStatus } from '../../mirror/peers.js';
import type { SiteSyncStatus } from '../../mirror/site-sync.js';
import { parseLimits } from '../../platform/http/limits.js';
import { writeInventory } from '../../mirror/inventory.js';
import { Store } from '../../mirror/store.js';
import {
  humanBytes,
  humanSeconds,
  int,
  jsonOption,
  list,
  parseListen,
  parseSize,
  printJson,
  progressBar,
  str,
  untilSignal,
  withProgress,
  type Command,
  type Io,
} from './common.js';
import { httpHelp, httpLimits, httpOptions, httpUsage } from './http-options.js';

/** Opens the data directory; `--trust` and `--site` set it up on first use and must agree later. */
async function openStore(dataDir: string, trust: string, site: string): Promise<Store> {
  if (Boolean(trust) !== Boolean(site)) throw new FerryError('USAGE', '--trust and --site go together');
  if (!trust) return Store.open(dataDir);
  let rootBytes: Buffer;
  try {
    rootBytes = await readFile(trust);
  } catch (e) {
    throw new FerryError('IO_ERROR', `cannot read trust root ${trust}: ${(e as Error).message}`, {
      cause: e,
    });
  }
  return Store.open(dataDir, { init: { rootBytes, site } });
}

export const mirrorImport: Command = {
  summary:
    'Imports bundle files (or volumes) into a mirror data directory: verified in one pass against the\n' +
    "mirror's pinned root and site, blobs stored by digest, the manifest activated once every blob it names\n" +
    'is held. Refusals change nothing but the quarantine record. Safe to run while the mirror serves.\n' +
    '--trust and --site set up a new data directory (otherwise the ones it recorded are used).\n' +
    'A path that is missing, a directory or not a bundle is refused (NOT_FOUND, NOT_A_FILE, NOT_A_BUNDLE)\n' +
    'before anything is imported. On a terminal a large bundle shows a progress line.',
  usage: 'FILE.ferry... --data DIR [--trust root.json --site S] [--json]',
  options: { data: { type: 'string' }, trust: { type: 'string' }, site: { type: 'string' }, ...jsonOption },
  positionals: { min: 1, max: 1000 },
  async run(p, io) {
    const sizes: number[] = [];
    for (const file of p.positionals) sizes.push(await checkBundleFile(file));
    const store = await openStore(str(p, 'data'), str(p, 'trust', false), str(p, 'site', false));
    const results = [];
    for (const [i, file] of p.positionals.entries()) {
      const bar = progressBar(io, 'importing', { quiet: p.json });
      const onProgress = (bytes: number) => bar.update(bytes, sizes[i]!);
      results.push(await withProgress(bar, () => importBundle(store, file, { onProgress })));
    }
    const refused = results.filter((r) => !r.ok).length;
    if (p.json) printJson(io, { ok: refused === 0, results });
    else {
      for (const r of results) {
        if (r.ok) {
          const what =
            r.status === 'pending' ? `pending, ${r.missing.length} blob(s) still to come` : r.status;
          io.out(
            `${r.file}: ${r.publisher} sequence ${r.sequence} ${what}${r.changed ? '' : ' (already imported)'}`,
          );
          for (const x of r.revoked)
            io.out(
              `  retired ${x.publisher} sequence ${x.sequence}: the adopted root no longer authorises its signers`,
            );
        } else io.err(`ferry: ${r.code}: ${r.file}: ${r.message}`);
      }
    }
    return refused === 0 ? 0 : 1;
  },
};

export const mirrorStatus: Command = {
  summary:
    'Shows what a mirror data directory serves: site, trust root, active and pending manifests, quarantine;\n' +
    'and, from the serving mirror, the fleet: agents, how many are behind, alerts, the rollout by wave.\n' +
    '--agents lists one page of agents (--page, --size, --filter behind|failing|silent|doctor).',
  usage: `--data DIR ${fleetStatusUsage} [--json]`,
  options: { data: { type: 'string' }, ...fleetStatusOptions, ...jsonOption },
  async run(p, io) {
    const dataDir = str(p, 'data');
    const fleet = await fleetStatus(dataDir, p);
    const store = await Store.open(dataDir);
    const state = await store.readState();
    const root = store.trustedRoot(state);
    const telemetry = await telemetryStatus(dataDir);
    if (p.json) {
      const { site, active, pending, mark, signedTime, quarantine, imports } = state;
      printJson(io, {
        ok: true,
        site,
        rootVersion: root.payload.version,
        active,
        pending,
        mark,
        signedTime: signedTime > 0 ? new Date(signedTime).toISOString() : null,
        quarantine,
        imports,
        telemetry,
        fleet,
      });
      return 0;
    }
    printStatus(io, state.site, root.payload.version, state);
    if (telemetry) {
      io.out(
        `telemetry: ${telemetry.depth ? waitingLine(telemetry) : 'nothing waiting'}, ` +
          `${telemetry.exports} export(s) made${telemetry.serving ? '' : ', mirror not serving'}`,
      );
      io.out(
        telemetry.serverKey
          ? `  acks checked with server key ${telemetry.serverKey}`
          : '  no server key pinned yet (serve --server-key, or the first import-ack --server-key, pins it)',
      );
      for (const t of telemetry.targets)
        io.out(`  ${t.kind} ${t.url}: ${t.ok ? 'ok' : `failing (${t.failures}×: ${t.lastError ?? ''})`}`);
      for (const line of peerLines(telemetry.bundlePeers ?? [])) io.out(line);
      for (const line of siteLogLines(telemetry.siteLog)) io.out(line);
      const link = telemetry.upstreamBundles;
      if (link)
        io.out(
          `bundle link ${link.url}: ${link.state}` +
            (link.lastImported
              ? `, last imported sequence ${link.lastImported.sequence} (${link.lastImported.id})`
              : '') +
            (link.transfer
              ? `, downloading ${link.transfer.id} ${humanBytes(link.transfer.have)}/${humanBytes(link.transfer.bytes)}`
              : '') +
            (link.lastError
              ? `; last error ${link.lastError.at}: ${link.lastError.code}: ${link.lastError.message}`
              : ''),
        );
    }
    printFleet(io, fleet);
    return 0;
  },
};

/** One line per bundle-sync peer: link, its sequence, back-off, the transfer under way. */
function peerLines(peers: PeerStatus[]): string[] {
  return peers.map((p) => {
    const parts = [`peer ${p.url}: link ${p.link}`, `sequence ${p.sequence ?? '-'}`];
    if (p.offer) parts.push(`offer ${p.offer}`);
    if (p.backoffUntil) parts.push(`backed off until ${p.backoffUntil} (${p.lastError?.code ?? ''})`);
    if (p.transfer)
      parts.push(
        `pulling ${p.transfer.digest.slice(0, 12)}… ${humanBytes(p.transfer.have)}/${humanBytes(p.transfer.total)}`,
      );
    parts.push(`${humanBytes(p.received)} received`);
    return parts.join(', ');
  });
}

function printStatus(
  io: Io,
  site: string,
  rootVersion: number,
  state: Awaited<ReturnType<Store['readState']>>,
): void {
  io.out(`site ${site}, trust root v${rootVersion}`);
  const a = state.active;
  io.out(a ? `active: ${a.publisher} sequence ${a.sequence}, expires ${a.expires}` : 'active: none');
  for (const m of state.pending) io.out(`pending: ${m.publisher} sequence ${m.sequence} (waiting for blobs)`);
  for (const q of state.quarantine.slice(-10))
    io.out(`quarantined ${q.at}: ${q.file}: ${q.code}: ${q.message}`);
  for (const i of state.imports.slice(-5)) io.out(`imported ${i.at}: ${i.file} → ${i.status}`);
}

export const mirrorServe: Command = {
  crypto: 'service',
  summary:
    'Runs the site mirror: serves the verified store to agents and peer mirrors over HTTP and imports every\n' +
    'bundle or volume that appears in the drop folder once it is completely written. Heartbeats it accepts\n' +
    'wait in its outbox (durable before the agent is answered) and go home to --upstream (the server or a\n' +
    'mirror closer to it), or through a --peer that has a route while the upstream is down; with no link at\n' +
    'all, `ferry mirror export-telemetry` writes them for the courier. Back-off between attempts doubles up\n' +
    'to --retry-max seconds (default 60). --server-key pins the key courier acks must be signed with (from\n' +
    '`ferry server identity --out`, brought with the trust root); a different key than the one pinned\n' +
    'refuses the start. --relay-key (repeatable; `ferry mirror identity --out` of another mirror) names the\n' +
    'mirrors whose batches this one relays, each checked against its key; without it, this mirror relays\n' +
    'for no one. Agents enrol with a token (`ferry mirror token create`); --open-enrolment admits any agent\n' +
    'that asks, with the groups it claims, and says so in the log and on the status page. SIGTERM/SIGINT\n' +
    'stop it gracefully. --silent-after (default 15m) is how long an agent may go without a heartbeat\n' +
    'before it counts as silent (an agent_silent alert). --fleet-view local (default) shows the agent list\n' +
    "on the status page and at GET /v1/fleet only to clients on the mirror's own host; site shows it to\n" +
    'anyone who reaches the port.\n' +
    'Bundle sync: the mirror polls every --peer and every URL in --peers FILE (one a line, re-read when it\n' +
    'changes) for a newer manifest, checks it against its own trust root, site and sequence, pulls the blobs\n' +
    'it lacks from the peers that hold them (several at once, resumed across broken links, each verified by\n' +
    'digest) and adopts it through the same checks as a drop-folder import; a peer whose offer is refused is\n' +
    'put on back-off. --peer-interval SEC between polls (default 10); --peer-rate 20MB/s caps each peer;\n' +
    "--peer-limits JSON overrides the client's idle timeout, deadlines and floor rate towards peers\n" +
    '(e.g. {"idleTimeoutMs":5000}).\n' +
    "Site log: rollout decisions (approve, halt, resume, abort, update-now, the gate's own halts), enrolments\n" +
    'and revocations made at any mirror of the site reach the others each peer round. --peer-key MIRROR.pub\n' +
    '(repeatable; `ferry mirror identity --out` of each other mirror of this site) names the mirrors whose\n' +
    'decisions count here; an entry signed by any other key is refused.\n' +
    'Bundle link: when --upstream is the server, the mirror asks it every --upstream-interval SEC (default\n' +
    "60) for its site's newest signed bundle newer than its own, with requests signed by its own key (the\n" +
    'one registered on the server), downloads it resumably and imports it with the checks of a drop-folder\n' +
    'import. An upstream that is a mirror answers 404 and is left alone. --upstream-bundles off disables it.\n' +
    httpHelp +
    '\nLogs are JSON lines on stderr.',
  usage:
    '--data DIR --listen HOST:PORT [--trust root.json --site S] [--drop DIR] [--upstream URL [--upstream-bundles on|off] [--upstream-interval SEC]] [--peer URL]... [--peers FILE] [--peer-interval SEC] [--peer-rate RATE] [--peer-limits JSON] [--retry-max SEC] [--server-key SERVER.pub] [--relay-key MIRROR.pub]... [--peer-key MIRROR.pub]... [--open-enrolment] [--silent-after DURATION] [--fleet-view local|site] ' +
    httpUsage,
  options: {
    data: { type: 'string' },
    listen: { type: 'string' },
    trust: { type: 'string' },
    site: { type: 'string' },
    drop: { type: 'string' },
    upstream: { type: 'string' },
    'upstream-bundles': { type: 'string' },
    'upstream-interval': { type: 'string' },
    peer: { type: 'string', multiple: true },
    peers: { type: 'string' },
    'peer-interval': { type: 'string' },
    'peer-rate': { type: 'string' },
    'peer-limits': { type: 'string' },
    'retry-max': { type: 'string' },
    'server-key': { type: 'string' },
    'relay-key': { type: 'string', multiple: true },
    'peer-key': { type: 'string', multiple: true },
    ...httpOptions,
    'open-enrolment': { type: 'boolean' },
    'silent-after': { type: 'string' },
    'fleet-view': { type: 'string' },
  },
  async run(p) {
    const silentAfter = str(p, 'silent-after', false);
    const silentAfterMs = silentAfter ? parseDuration(silentAfter) : undefined;
    if (silentAfter && silentAfterMs === undefined)
      throw new FerryError('USAGE', '--silent-after must be a duration like 90s, 15m or 2h');
    const fleetView = str(p, 'fleet-view', false) || 'local';
    if (fleetView !== 'local' && fleetView !== 'site')
      throw new FerryError('USAGE', '--fleet-view must be local or site');
    const { host, port } = parseListen(str(p, 'listen'));
    const log = createLogger({ component: 'mirror' });
    const trust = str(p, 'trust', false);
    const site = str(p, 'site', false);
    const drop = str(p, 'drop', false);
    const upstream = str(p, 'upstream', false);
    const peers = list(p, 'peer', false);
    const serverKey = str(p, 'server-key', false);
    const relayKeys = list(p, 'relay-key', false);
    const peerKeys = list(p, 'peer-key', false);
    for (const u of [upstream, ...peers].filter(Boolean)) parseUrl(u);
    const linkOn = str(p, 'upstream-bundles', false) || 'on';
    if (linkOn !== 'on' && linkOn !== 'off')
      throw new FerryError('USAGE', '--upstream-bundles must be on or off');
    const every = str(p, 'upstream-interval', false);
    if (every && !(/^\d+(\.\d+)?$/.test(every) && Number(every) > 0 && Number(every) <= 86_400))
      throw new FerryError('USAGE', '--upstream-interval must be a number of seconds, like 60 or 0.5');
    const mirror = await startMirror({
      dataDir: str(p, 'data'),
      host,
      port,
      log,
      ...(trust && { trustPath: trust }),
      ...(site && { site }),
      ...(drop && { dropDir: drop }),
      ...(upstream && { upstream }),
      upstreamBundles: {
        enabled: linkOn === 'on',
        ...(every && { intervalMs: Math.round(Number(every) * 1000) }),
      },
      peers,
      ...(p.values['retry-max'] !== undefined && { retryMaxMs: int(p, 'retry-max') * 1000 }),
      ...(serverKey && { serverKeyPath: resolve(serverKey) }),
      ...(relayKeys.length > 0 && { relayKeyPaths: relayKeys.map((k) => resolve(k)) }),
      ...(peerKeys.length > 0 && { peerKeyPaths: peerKeys.map((k) => resolve(k)) }),
      limits: httpLimits(p),
      openEnrolment: p.values['open-enrolment'] === true,
      ...(silentAfterMs !== undefined && { silentAfterMs }),
      fleetView,
      peerSync: peerSyncSettings(p),
    });
    await untilSignal(log, 'mirror.signal', () => mirror.close());
    return 0;
  },
};

/** `--peers`, `--peer-interval` (seconds, fractions allowed), `--peer-rate` (`20MB/s`, `512K`). */
function peerSyncSettings(p: Parameters<Command['run']>[0]): PeerSyncSettings {
  const out: PeerSyncSettings = {};
  const file = str(p, 'peers', false);
  if (file) out.peersFile = resolve(file);
  const every = str(p, 'peer-interval', false);
  if (every) {
    if (!/^(?:[0-9]{1,6})(?:\.[0-9]{1,3})?$/.test(every) || Number(every) <= 0)
      throw new FerryError('USAGE', '--peer-interval must be a number of seconds, like 10 or 0.5');
    out.intervalMs = Math.round(Number(every) * 1000);
  }
  const rate = str(p, 'peer-rate', false);
  if (rate) out.rateBytesPerSec = parseSize(rate.replace(/\/s$/, ''), 'peer-rate');
  const limits = str(p, 'peer-limits', false);
  if (limits) {
    try {
      out.limits = parseLimits(limits);
    } catch (e) {
      throw new FerryError('USAGE', `--peer-limits: ${(e as Error).message}`);
    }
  }
  return out;
}

function parseUrl(u: string): URL {
  try {
    const url = new URL(u);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error('not http');
    return url;
  } catch {
    throw new FerryError('USAGE', `${u} is not an http(s) URL`);
  }
}

/**
 * Runs a courier command: through the serving mirror's control socket when one
 * serves this data dir, otherwise here, holding the outbox lock so that a
 * mirror starting meanwhile waits for us.
 */
async function viaMirror<T extends Record<string, unknown>>(
  dataDir: string,
  route: string,
  body: Record<string, unknown>,
  local: (ctx: { outbox: MirrorOutbox; identity: MirrorIdentity; site: string }) => Promise<T>,
): Promise<T & { via: 'serve' | 'local' }> {
  const answer = await callControl(dataDir, 'POST', route, body);
  if (answer) {
    if (!answer.ok) throw new CodedError(answer.code ?? 'INTERNAL', answer.message ?? 'the mirror refused');
    const rest: Record<string, unknown> = { ...answer };
    delete rest.ok;
    return { ...(rest as T), via: 'serve' };
  }
  const store = await Store.open(dataDir);
  const site = (await store.readState()).site;
  await mkdir(join(dataDir, 'telemetry'), { recursive: true });
  let release;
  try {
    release = await acquireLock(MirrorOutbox.paths(dataDir).lock, { timeoutMs: 2000 });
  } catch (e) {
    if (isLockedError(e))
      throw new MirrorError(
        'STORE_LOCKED',
        `a ferry mirror serve holds ${dataDir} but does not answer on its control socket`,
      );
    throw e;
  }
  try {
    const identity = await mirrorIdentity(dataDir);
    const outbox = await MirrorOutbox.open(dataDir);
    try {
      return { ...(await local({ outbox, identity, site })), via: 'local' };
    } finally {
      await outbox.close();
    }
  } finally {
    await release();
  }
}

export const mirrorExportTelemetry: Command = {
  summary:
    "Writes everything in the mirror's telemetry outbox not yet acknowledged into one file for the courier:\n" +
    "a header signed with the mirror's key (range, line count, sha256 of the lines) chained to the previous\n" +
    "export, then one line per record. Nothing leaves the outbox until the server's ack comes back\n" +
    '(`ferry mirror import-ack`). Works while the mirror serves (it does the export itself).\n' +
    "Beside it, FILE.inventory.json (or --inventory PATH): the blobs the site holds, signed with the mirror's\n" +
    'key, for `ferry bundle create --have` to build exactly the delta the site lacks.',
  usage: '--data DIR --out FILE [--inventory PATH] [--json]',
  options: {
    data: { type: 'string' },
    out: { type: 'string' },
    inventory: { type: 'string' },
    ...jsonOption,
  },
  async run(p, io) {
    const dataDir = str(p, 'data');
    const out = resolve(str(p, 'out'));
    const r = await viaMirror(dataDir, '/export', { out }, ({ outbox, identity, site }) =>
      exportTelemetry(outbox, identity, site, out).then((x) => ({ ...x })),
    );
    const inv = await writeInventory(
      await Store.open(dataDir),
      await mirrorIdentity(dataDir),
      resolve(str(p, 'inventory', false) || `${out}.inventory.json`),
    );
    if (p.json) printJson(io, { ok: true, ...r, ...inv });
    else {
      io.out(
        `${r.out}: export ${String(r.number)} of mirror ${String(r.mirror)}, seq ${String(r.from)}..${String(r.to)}: ` +
          `${String(r.heartbeats)} heartbeat(s), ${String(r.enrolments)} enrolment(s), ${String(r.relayedBatches)} relayed batch(es), ${String(r.bytes)} bytes`,
      );
      io.out(
        `${inv.inventory}: signed inventory, ${inv.blobs} blob(s), active sequence ${inv.active ?? 'none'}`,
      );
    }
    return 0;
  },
};

export const mirrorImportAck: Command = {
  summary:
    "Applies a server's acknowledgement (from `ferry server import-telemetry --ack-out`): checked against the\n" +
    'server key pinned in the data dir (--server-key pins it the first time) and against the exports this\n' +
    'mirror made; then the outbox drops what the server has. Applying an ack twice changes nothing.',
  usage: 'ACK --data DIR [--server-key SERVER.pub] [--json]',
  options: { data: { type: 'string' }, 'server-key': { type: 'string' }, ...jsonOption },
  positionals: { min: 1, max: 1 },
  async run(p, io) {
    const dataDir = str(p, 'data');
    const ackPath = p.positionals[0]!;
    const ack = await readAckFile(ackPath);
    const keyArg = str(p, 'server-key', false);
    const serverKey = keyArg ? resolve(keyArg) : undefined;
    const r = await viaMirror(
      dataDir,
      '/import-ack',
      { ack, ...(serverKey && { serverKey }) },
      async (c) => ({
        ...(await applyAck(c.outbox, c.identity, dataDir, ack, serverKey)),
      }),
    );
    if (p.json) printJson(io, { ok: true, ...r });
    else
      io.out(
        r.alreadyApplied
          ? `${ackPath}: export ${String(r.number)} was acknowledged before; nothing to trim (${String(r.depth)} record(s) waiting)`
          : `${ackPath}: export ${String(r.number)} acknowledged up to seq ${String(r.upTo)}; ${String(r.trimmed)} record(s) trimmed, ${String(r.depth)} waiting`,
      );
    return 0;
  },
};

export const mirrorIdentityCommand: Command = {
  summary:
    "Shows the mirror's own key (made on first use in DIR/identity/): register it with the server once with\n" +
    '`ferry server register-mirror --pub FILE --site S`. --out copies the public key file there.',
  usage: '--data DIR [--out FILE] [--json]',
  options: { data: { type: 'string' }, out: { type: 'string' }, ...jsonOption },
  async run(p, io) {
    const dataDir = str(p, 'data');
    const id = await mirrorIdentity(dataDir);
    const out = str(p, 'out', false);
    if (out) await writeFileAtomic(out, await readFile(id.pubPath));
    if (p.json) printJson(io, { ok: true, mirror: id.id, keyid: id.key.keyid, pub: out || id.pubPath });
    else io.out(`mirror ${id.id} (keyid ${id.key.keyid})${out ? `; public key written to ${out}` : ''}`);
    return 0;
  },
};

/** `1200 record(s) waiting (seq 5..1204, 1.2 MiB on disk, the oldest for 3 d)`. */
function waitingLine(t: TelemetryStatus): string {
  const age = t.oldestAt
    ? `, the oldest for ${humanSeconds((Date.now() - Date.parse(t.oldestAt)) / 1000)}`
    : '';
  return `${t.depth} record(s) waiting (seq ${t.acked + 1}..${t.head}, ${humanBytes(t.bytes)} on disk${age})`;
}

interface TelemetryStatus extends OutboxFigures {
  serving: boolean;
  mirror: string;
  exports: number;
  /** The keyid acks are checked with, once pinned. */
  serverKey?: string;
  targets: { url: string; kind: string; ok: boolean; failures: number; lastError?: string }[];
  /** Bundle-sync peers, while the mirror serves. */
  bundlePeers?: PeerStatus[];
  /** The site log and each peer's cursor in it, while the mirror serves. */
  siteLog?: SiteSyncStatus | null;
  /** The bundle link to the server, while the mirror serves with one. */
  upstreamBundles?: UpstreamBundlesStatus;
}

/** The site log: entries held, then one line per peer (link, cursor, taken and refused). */
function siteLogLines(s: SiteSyncStatus | null | undefined): string[] {
  if (!s) return [];
  return [
    `site log: ${s.entries} entr${s.entries === 1 ? 'y' : 'ies'} held (seq ${s.head})`,
    ...s.peers.map((p) => {
      const parts = [
        `  site peer ${p.url}: link ${p.link}`,
        `read through ${p.cursor}`,
        `${p.accepted} taken`,
      ];
      if (p.refused > 0) parts.push(`${p.refused} refused (last ${p.lastRefusal?.code ?? ''})`);
      if (p.lastError) parts.push(`error ${p.lastError.code}`);
      return parts.join(', ');
    }),
  ];
}

/** The outbox as the serving mirror sees it, or read here when none serves (null while another process holds it). */
async function telemetryStatus(dataDir: string): Promise<TelemetryStatus | null> {
  const answer = await callControl(dataDir, 'GET', '/status');
  if (answer?.ok) {
    const a = answer as unknown as Omit<TelemetryStatus, 'serving'>;
    return { serving: true, ...a };
  }
  // Read-only when nothing is there yet: status never creates the outbox or the mirror's key.
  if (!(await stat(MirrorOutbox.paths(dataDir).journal).catch(() => undefined))) return null;
  let release;
  try {
    release = await acquireLock(MirrorOutbox.paths(dataDir).lock, { timeoutMs: 0 });
  } catch {
    return null;
  }
  try {
    const outbox = await MirrorOutbox.open(dataDir);
    const pub = await loadPublicKey(join(dataDir, 'identity', 'mirror.pub')).catch(() => undefined);
    const serverKey = await pinnedServerKeyId(dataDir).catch(() => undefined);
    const s = {
      serving: false,
      mirror: pub ? mirrorIdOf(pub.publicKey) : '',
      ...outbox.figures(),
      exports: outbox.exports.length,
      ...(serverKey !== undefined && { serverKey }),
      targets: [],
    };
    await outbox.close();
    return s;
  } finally {
    await release();
  }
}

/**
 * Runs an enrolment command: through the serving mirror's control socket when one serves this data
 * dir (it owns the tokens and agents), otherwise here, holding the outbox lock meanwhile.
 */
async function viaEnrolment<T extends object>(
  dataDir: string,
  method: 'GET' | 'POST',
  route: string,
  body: Record<string, unknown>,
  local: (ops: EnrolmentOps) => Promise<T>,
): Promise<T> {
  const answer = await callControl(dataDir, method, route, method === 'POST' ? body : undefined);
  if (answer) {
    if (!answer.ok) throw new CodedError(answer.code ?? 'INTERNAL', answer.message ?? 'the mirror refused');
    const rest: Record<string, unknown> = { ...answer };
    delete rest.ok;
    return rest as T;
  }
  const store = await Store.open(dataDir);
  const site = (await store.readState()).site;
  await mkdir(join(dataDir, 'telemetry'), { recursive: true });
  let release;
  try {
    release = await acquireLock(MirrorOutbox.paths(dataDir).lock, { timeoutMs: 2000 });
  } catch (e) {
    if (isLockedError(e))
      throw new MirrorError(
        'STORE_LOCKED',
        `a ferry mirror serve holds ${dataDir} but does not answer on its control socket`,
      );
    throw e;
  }
  const agents = new AgentsStore(dataDir);
  try {
    return await local(enrolmentOps(agents, site, silentLogger));
  } finally {
    await agents.close();
    await release();
  }
}

const tokenLine = (t: TokenView) =>
  `${t.id}  ${t.state.padEnd(9)} used ${t.used}/${t.uses}  expires ${t.expiresAt}  groups ${t.groups.join(',') || '(none)'}`;

export const mirrorTokenCreate: Command = {
  summary:
    'Makes an enrolment token: an agent presents it (`ferry agent run --token T` or --token-file F) to enrol\n' +
    'at this mirror. It expires after --ttl (30m, 1h, 7d …), allows --uses enrolments (default 1), is bound to\n' +
    "this mirror's site, and admits to the --group groups (the agent's own claim is not used). The token is\n" +
    'printed once on stdout and never stored or logged: the mirror keeps its SHA-256 and names it by its id.\n' +
    'Works while the mirror serves (it makes the token itself).',
  usage: '--data DIR --ttl DURATION [--uses N] [--group G]... [--json]',
  options: {
    data: { type: 'string' },
    ttl: { type: 'string' },
    uses: { type: 'string' },
    group: { type: 'string', multiple: true },
    ...jsonOption,
  },
  async run(p, io) {
    const dataDir = str(p, 'data');
    const ttlMs = parseDuration(str(p, 'ttl'));
    if (ttlMs === undefined) throw new FerryError('USAGE', '--ttl must be a duration like 30m, 1h or 7d');
    const body = { ttlMs, uses: int(p, 'uses', 1), groups: list(p, 'group', false) };
    const r = await viaEnrolment(dataDir, 'POST', '/tokens/create', body, (ops) => ops.createToken(body));
    if (p.json) printJson(io, { ok: true, token: r.token, ...r.record });
    else {
      io.out(r.token);
      io.err(
        `token ${r.record.id} for site ${r.record.site}: ${r.record.uses} enrolment(s) until ${r.record.expiresAt}, ` +
          `groups ${r.record.groups.join(',') || '(none)'}. It is shown this once: hand it over privately.`,
      );
    }
    return 0;
  },
};

export const mirrorTokenList: Command = {
  summary:
    "Lists the mirror's enrolment tokens by id (never their secrets): state (active, expired, exhausted,\n" +
    'revoked), uses, expiry, groups, and the agents each one enrolled.',
  usage: '--data DIR [--json]',
  options: { data: { type: 'string' }, ...jsonOption },
  async run(p, io) {
    const r = await viaEnrolment(str(p, 'data'), 'GET', '/tokens', {}, (ops) => ops.listTokens());
    if (p.json) printJson(io, { ok: true, ...r });
    else if (r.tokens.length === 0) io.out('no enrolment tokens');
    else for (const t of r.tokens) io.out(tokenLine(t));
    return 0;
  },
};

export const mirrorTokenRevoke: Command = {
  summary:
    'Revokes an enrolment token by id (from `token list`): enrolments with it are refused (TOKEN_REVOKED)\n' +
    'from now on. Agents it already enrolled stay enrolled (`ferry mirror agent revoke` shuts one out).',
  usage: 'ID --data DIR [--json]',
  options: { data: { type: 'string' }, ...jsonOption },
  positionals: { min: 1, max: 1 },
  async run(p, io) {
    const body = { id: p.positionals[0]! };
    const r = await viaEnrolment(str(p, 'data'), 'POST', '/tokens/revoke', body, (ops) =>
      ops.revokeToken(body),
    );
    if (p.json) printJson(io, { ok: true, ...r });
    else io.out(`token ${r.record.id} ${r.alreadyRevoked ? 'was already revoked' : 'revoked'}`);
    return 0;
  },
};

const agentLine = (a: AgentView) =>
  `${a.id}  ${a.revokedAt ? `REVOKED ${a.revokedAt}` : 'enrolled'}  ${a.hostname}  groups ${a.groups.join(',') || '(none)'}${a.tokenId ? `  token ${a.tokenId}` : ''}`;

export const mirrorAgentList: Command = {
  summary:
    'Lists the agents enrolled at this mirror: id, host, groups, the token that admitted each, revocation.',
  usage: '--data DIR [--json]',
  options: { data: { type: 'string' }, ...jsonOption },
  async run(p, io) {
    const r = await viaEnrolment(str(p, 'data'), 'GET', '/agents', {}, (ops) => ops.listAgents());
    if (p.json) printJson(io, { ok: true, ...r });
    else if (r.agents.length === 0) io.out('no agents enrolled');
    else for (const a of r.agents) io.out(agentLine(a));
    return 0;
  },
};

export const mirrorAgentRevoke: Command = {
  summary:
    'Revokes an enrolled agent: from now on this mirror refuses its heartbeats (AGENT_REVOKED) and its\n' +
    're-enrolment, and a revocation record, signed with the telemetry it travels in, goes home so the\n' +
    'server marks the agent revoked (`ferry server agents`). Works while the mirror serves.',
  usage: 'AGENT_ID --data DIR [--reason TEXT] [--json]',
  options: { data: { type: 'string' }, reason: { type: 'string' }, ...jsonOption },
  positionals: { min: 1, max: 1 },
  async run(p, io) {
    const body = { id: p.positionals[0]!, reason: str(p, 'reason', false) };
    const r = await viaEnrolment(str(p, 'data'), 'POST', '/agents/revoke', body, (ops) =>
      ops.revokeAgent(body),
    );
    if (p.json) printJson(io, { ok: true, ...r });
    else
      io.out(
        r.alreadyRevoked
          ? `agent ${r.agent.id} was already revoked (${r.agent.revokedAt ?? ''})`
          : `agent ${r.agent.id} revoked; the server learns it with the next telemetry`,
      );
    return 0;
  },
};
