/**
 * The mirror's composition root: opens the store, mounts the HTTP API, watches
 * the drop folder, and shuts down gracefully (in-flight downloads finish, the
 * import under way completes, nothing is half-written).
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FerryError } from '../core/errors.js';
import { loadPublicKey } from '../platform/keyfile.js';
import { mirrorIdOf } from '../core/telemetry.js';
import type { Logger } from '../platform/log.js';
import { watchDrop, type DropWatcher } from './drop.js';
import { agentsFor } from './agents.js';
import { startControl } from './control.js';
import { enrolmentControl } from './enrolment.js';
import { applyAck, exportTelemetry, pinnedServerKeyId, serverKeyFor } from './courier.js';
import { MirrorError } from './errors.js';
import { Forwarder, outboxGauges } from './forward.js';
import { mirrorIdentity, type MirrorIdentity } from './identity.js';
import { acquireLock } from '../platform/lock.js';
import { isLockedError } from '../platform/errors.js';
import { MirrorOutbox } from './outbox.js';
import { startHttp, type ServerLimits } from '../platform/http/server.js';
import { createHandler } from './http/app.js';
import { importBundle, type ImportResult } from './import.js';
import { mirrorMetrics, type Metrics } from './metrics.js';
import { Store } from './store.js';
import type { TelemetryView } from './status-page.js';
import { backendName } from '../core/ed25519.js';
import type { GateLimits } from '../core/rollout/gate.js';
import { MirrorRollout, type RolloutSummary as GateSummary } from './rollout.js';
import type { Phase as RolloutPhase } from '../core/rollout/gate.js';
import { rolloutControl } from './rollout-control.js';
import { StateView } from './snapshot.js';
import { FleetService } from './fleet-store.js';
import type { RolloutSource, RolloutSummary as FleetRolloutSummary } from './fleet.js';
import type { FleetViewMode } from './http/fleet.js';
import { fleetControl } from './fleet-control.js';

const PHASE_STATE: Record<RolloutPhase, FleetRolloutSummary['state']> = {
  running: 'running',
  'awaiting-approval': 'waiting_approval',
  halted: 'halted',
  aborted: 'aborted',
  completed: 'completed',
};

/** The gate's summary as the fleet view shows it (per-wave bars, `rollout_halted`). */
function fleetRolloutOf(s: GateSummary | null): FleetRolloutSummary | null {
  if (!s) return null;
  return {
    rolloutId: s.id,
    version: s.version,
    strategy: s.strategy,
    state: PHASE_STATE[s.phase],
    wave: s.wave,
    waves: s.perWave.map((counts, i) => ({ percent: s.percents[i] ?? 100, counts })),
    ...(s.haltReason !== null && { haltReason: s.haltReason }),
  };
}
import { PeerSync } from './peers.js';
import { SiteLog } from './site-log.js';
import { SiteSync } from './site-sync.js';
import { UpstreamBundles } from './upstream-bundles.js';
import { peerList } from './peer-list.js';
import { undiciTransport } from '../platform/http/undici.js';
import { throttledTransport } from '../platform/http/throttle.js';
import type { ClientLimits } from '../platform/http/limits.js';

/** How long a stop waits for slow clients before cutting them off. */
export const SHUTDOWN_GRACE_MS = 5 * 60_000;

export interface MirrorOptions {
  dataDir: string;
  host: string;
  port: number;
  /** First start: pin this root and site (later starts check they agree). */
  trustPath?: string;
  site?: string;
  dropDir?: string;
  dropStableMs?: number;
  /** Where telemetry goes home: the server, or a mirror closer to it. */
  upstream?: string;
  /** The bundle link to an `upstream` server (mirror/upstream-bundles.ts); on by default. */
  upstreamBundles?: { enabled: boolean; intervalMs?: number };
  /** Mirrors to relay through while the upstream is unreachable (or when there is none). */
  peers?: string[];
  /**
   * The server's public key (a ferry .pub file) that courier acks must be signed with: pinned in the
   * data dir on first start, refused when it differs from the one pinned. Without it, the first
   * `import-ack --server-key` pins it.
   */
  serverKeyPath?: string;
  /**
   * Public keys (ferry .pub files, `ferry mirror identity --out`) of the mirrors whose batches this one
   * relays: a batch from any other mirror, or not signed by the one it names, is refused. Without them,
   * this mirror relays for no one.
   */
  relayKeyPaths?: string[];
  /**
   * Public keys of the other mirrors of this site whose site log entries count here (halts, approvals,
   * enrolments, revocations; mirror/site-sync.ts). Without them, this mirror follows only its own.
   */
  peerKeyPaths?: string[];
  /** Between site log rounds (ms); default the peer interval, else 10 s. */
  siteSyncIntervalMs?: number;
  /** Enrol agents that bring no token, with the groups they claim (announced in the log and on `/`). */
  openEnrolment?: boolean;
  /** Forwarding back-off bounds (defaults 1 s doubling to 60 s). */
  retryBaseMs?: number;
  retryMaxMs?: number;
  /** An agent not heard from for this long is silent (an `agent_silent` alert); default 15 min. */
  silentAfterMs?: number;
  /** Who sees per-agent detail over HTTP: the mirror's own host (default) or the whole site. */
  fleetView?: FleetViewMode;
  /** The site's rollout gate, for per-wave progress and `rollout_halted`. */
  rollout?: RolloutSource;
  /** Bundle sync with the --peer mirrors and those a peers file lists (mirror/peers.ts). */
  peerSync?: PeerSyncSettings;
  /** Connection cap and timeouts (defaults in platform/http/server.ts: 1024 connections). */
  limits?: Partial<ServerLimits>;
  /** The rollout gate's deadlines (core/rollout/gate.ts) and how often its clock ticks (default 5 s). */
  rolloutLimits?: Partial<GateLimits>;
  rolloutTickMs?: number;
  log: Logger;
}

export interface PeerSyncSettings {
  /** One URL a line, re-read when it changes; its peers join --peer's. */
  peersFile?: string;
  /** Between peer rounds (ms); default 10 s. */
  intervalMs?: number;
  /** Per-peer download rate cap (bytes/s); none by default. */
  rateBytesPerSec?: number;
  /** Blobs pulled at once; default 4. */
  parallel?: number;
  limits?: Partial<ClientLimits>;
}

export interface RunningMirror {
  url: string;
  store: Store;
  metrics: Metrics;
  identity: MirrorIdentity;
  forwarder: Forwarder;
  /** The site's rollout gate (`rolloutSummary()` for the fleet view). */
  rollout: MirrorRollout;
  peerSync: PeerSync;
  importFile(path: string): Promise<ImportResult>;
  /** Stops accepting connections, lets in-flight requests and the current import finish. */
  close(): Promise<void>;
}

/** Mirror id → public key, from ferry .pub files. */
async function loadRelayKeys(paths: string[]): Promise<Map<string, Uint8Array>> {
  const keys = new Map<string, Uint8Array>();
  for (const p of paths) {
    const { publicKey } = await loadPublicKey(p);
    keys.set(mirrorIdOf(publicKey), publicKey);
  }
  return keys;
}

export async function startMirror(o: MirrorOptions): Promise<RunningMirror> {
  if (Boolean(o.trustPath) !== Boolean(o.site))
    throw new FerryError('USAGE', '--trust and --site go together');
  const init = o.trustPath && o.site ? { rootBytes: await readFile(o.trustPath), site: o.site } : undefined;
  // Checked before anything is written: a key that is not the pinned one refuses the start.
  const serverKey = o.serverKeyPath ? await serverKeyFor(o.dataDir, o.serverKeyPath) : undefined;
  const relayKeys = await loadRelayKeys(o.relayKeyPaths ?? []);
  const peerKeys = await loadRelayKeys(o.peerKeyPaths ?? []);
  const store = await Store.open(o.dataDir, init ? { init } : {});
  const metrics = mirrorMetrics();
  const log = o.log;
  // One serving process owns the outbox: a second `serve` on this data dir is refused, and the
  // courier commands go through this one's control socket.
  await mkdir(join(o.dataDir, 'telemetry'), { recursive: true });
  const releaseOutbox = await acquireLock(MirrorOutbox.paths(o.dataDir).lock, { timeoutMs: 0 }).catch(
    (e: unknown) => {
      if (isLockedError(e))
        throw new MirrorError('STORE_LOCKED', `another ferry mirror serve is using ${o.dataDir}`);
      throw e;
    },
  );
  await serverKey?.pin?.();
  const identity = await mirrorIdentity(o.dataDir);
  const agents = agentsFor(store);
  agents.openEnrolment = o.openEnrolment === true;
  const outbox = await agents.outbox();
  const site = (await store.readState()).site;
  let gate: MirrorRollout | undefined;
  const fleet = await FleetService.open({
    dataDir: o.dataDir,
    agents,
    outbox,
    now: store.now,
    log,
    ...(o.silentAfterMs !== undefined && { silentAfterMs: o.silentAfterMs }),
    // The gate is made below (it needs the fleet's roster); the view asks it only when shown.
    rollout: o.rollout ?? { rolloutSummary: () => fleetRolloutOf(gate?.rolloutSummary() ?? null) },
  });
  const fleetView = o.fleetView ?? 'local';
  // Who the peers are now: --peer and the peers file, re-read as it changes (relay, bundle sync, site log).
  const peersNow = peerList(o.peers ?? [], o.peerSync?.peersFile, log);
  const forwarder = new Forwarder({
    outbox,
    identity,
    site,
    ...(o.upstream !== undefined && { upstream: o.upstream }),
    peers: o.peers ?? [],
    // The peers file as well as --peer (re-read as it changes), as bundle sync uses it.
    ...(o.peerSync?.peersFile !== undefined && {
      peerList: peersNow,
    }),
    log,
    metrics,
    ...(o.retryBaseMs !== undefined && { retryBaseMs: o.retryBaseMs }),
    ...(o.retryMaxMs !== undefined && { retryMaxMs: o.retryMaxMs }),
  });

  const importFile = async (path: string): Promise<ImportResult> => {
    const r = await importBundle(store, path);
    if (r.ok) {
      metrics.inc('ferry_mirror_imports_total', { status: r.status });
      log.info('import.accepted', {
        file: r.file,
        publisher: r.publisher,
        sequence: r.sequence,
        status: r.status,
        changed: r.changed,
        missing: r.missing.length,
      });
      for (const x of r.revoked)
        log.warn('import.revoked', {
          file: r.file,
          publisher: x.publisher,
          sequence: x.sequence,
          reason: 'the adopted root no longer authorises its signers',
        });
    } else {
      metrics.inc('ferry_mirror_refusals_total', { code: r.code });
      log.warn('import.refused', { file: r.file, code: r.code, reason: r.message });
    }
    return r;
  };

  const ps = o.peerSync ?? {};
  const peerTransport = undiciTransport({ keepAliveTimeoutMs: 30_000 });
  const peerSync = new PeerSync({
    store,
    peers: peersNow,
    transport: ps.rateBytesPerSec ? throttledTransport(peerTransport, ps.rateBytesPerSec) : peerTransport,
    log: log.child({ part: 'peers' }),
    ...(ps.intervalMs !== undefined && { intervalMs: ps.intervalMs }),
    ...(ps.parallel !== undefined && { parallel: ps.parallel }),
    ...(ps.limits && { limits: ps.limits }),
    ...(o.retryBaseMs !== undefined && { backoffBaseMs: o.retryBaseMs }),
    ...(o.retryMaxMs !== undefined && { backoffMaxMs: o.retryMaxMs }),
    onAdopted: (r) => {
      if (r.ok) metrics.inc('ferry_mirror_imports_total', { status: r.status });
    },
    onReceived: (peer, n) => metrics.inc('ferry_mirror_peer_bytes_total', { peer }, n),
  });
  metrics.define('ferry_mirror_peer_bytes_total', 'counter', 'Blob bytes pulled from peer mirrors, by peer.');

  const link =
    o.upstream !== undefined && o.upstreamBundles?.enabled !== false
      ? new UpstreamBundles({
          upstream: o.upstream,
          dataDir: o.dataDir,
          store,
          identity,
          site,
          log: log.child({ part: 'upstream-bundles' }),
          transport: peerTransport,
          ...(o.upstreamBundles?.intervalMs !== undefined && { intervalMs: o.upstreamBundles.intervalMs }),
          ...(o.retryBaseMs !== undefined && { retryBaseMs: o.retryBaseMs }),
          onImported: (r) => {
            if (r.ok) metrics.inc('ferry_mirror_imports_total', { status: r.status });
            else metrics.inc('ferry_mirror_refusals_total', { code: r.code });
          },
        })
      : undefined;

  /** The keyid acks are checked with (pinned here at start, or by the first ack carried in). */
  let serverKeyId = await pinnedServerKeyId(o.dataDir);
  /** The outbox and its routes: the status page's block and the control socket's GET /status. */
  const telemetryView = (): TelemetryView => ({
    ...forwarder.status(),
    exports: outbox.exports.length,
    ...(serverKeyId !== undefined && { serverKey: serverKeyId }),
    enrolment: agents.openEnrolment ? 'open' : 'token',
    bundlePeers: peerSync.status(),
    ...(late.siteSync && { siteLog: late.siteSync.status() }),
    ...(link && { upstreamBundles: link.status() }),
  });
  // The rollout gate follows the active manifest, hears every heartbeat accepted, and ticks.
  const view = new StateView(store);
  const siteLog = await SiteLog.open(o.dataDir, site, identity, peerKeys);
  // The site log's driver needs the gate, and the gate tells it of decisions: bound once both exist.
  const late: { siteSync?: SiteSync } = {};
  const rollout = (gate = await MirrorRollout.open({
    dataDir: o.dataDir,
    outbox,
    log,
    onDecision: (d) => late.siteSync?.onDecision(d) ?? Promise.resolve(),
    roster: async () =>
      (await agents.list())
        .filter((a) => a.revokedAt === undefined)
        .map((a) => ({ agentId: a.id, groups: a.groups })),
    ...(o.rolloutLimits && { limits: o.rolloutLimits }),
  }));
  const followPlan = async () => rollout.adopt((await view.current()).active?.manifest ?? null);
  await followPlan();
  const siteSync = (late.siteSync = new SiteSync({
    log: siteLog,
    identity,
    rollout,
    agents,
    peers: peersNow,
    transport: peerTransport,
    logger: log.child({ part: 'site' }),
    now: store.now,
  }));
  agents.onCommitted(async (items) => {
    const list = [];
    for (const { heartbeat } of items)
      list.push({ heartbeat, groups: (await agents.get(heartbeat.agentId))?.groups ?? [] });
    await rollout.heartbeats(list);
  });
  const rolloutTicker = setInterval(() => {
    followPlan()
      .then(() => rollout.tick())
      .catch((e: unknown) =>
        log.warn('rollout.tick_failed', { error: e instanceof Error ? e.message : String(e) }),
      );
  }, o.rolloutTickMs ?? 5000);
  rolloutTicker.unref();
  const http = await startHttp({
    host: o.host,
    port: o.port,
    handler: createHandler({
      store,
      view,
      rollout,
      log,
      metrics,
      agents,
      relay: {
        selfId: identity.id,
        hasRoute: () => forwarder.hasRoute(),
        trusted: relayKeys,
      },
      telemetry: telemetryView,
      fleet: { service: fleet, mode: fleetView },
      siteLog,
    }),
    log,
    metrics: { registry: metrics, prefix: 'ferry_mirror' },
    ...(o.limits && { limits: o.limits }),
    // A site's agents may all reconnect at once (after a mirror restart): a deep accept queue keeps
    // their SYNs from being dropped and retried a second later.
    backlog: 4096,
  });
  const { url } = http;

  let drop: DropWatcher | undefined;
  if (o.dropDir) {
    drop = watchDrop({
      dir: o.dropDir,
      importFile,
      log,
      ...(o.dropStableMs !== undefined && { stableMs: o.dropStableMs }),
    });
    await drop.ready;
  }
  const control = await startControl(
    o.dataDir,
    {
      'POST /export': async (b) => {
        if (typeof b.out !== 'string' || b.out === '')
          throw new FerryError('USAGE', 'export: out must be a path');
        return { ...(await exportTelemetry(outbox, identity, site, b.out)) };
      },
      'POST /import-ack': async (b) => {
        const serverKey = typeof b.serverKey === 'string' ? b.serverKey : undefined;
        const r = await applyAck(outbox, identity, o.dataDir, b.ack, serverKey);
        serverKeyId = await pinnedServerKeyId(o.dataDir);
        return { ...r };
      },
      'GET /status': () => Promise.resolve({ mirror: identity.id, ...telemetryView() }),
      ...fleetControl(fleet, store),
      ...enrolmentControl(agents, site, log),
      ...rolloutControl(rollout, agents, view),
    },
    log,
  );
  // The outbox gauges for alerting (a site cut off for long needs a courier): kept current on every change.
  const gauges = () => outboxGauges(metrics, outbox);
  gauges();
  outbox.onAppend(gauges);
  outbox.onAck(gauges);
  forwarder.start();
  peerSync.start();
  await siteSync.start(o.siteSyncIntervalMs ?? ps.intervalMs);
  link?.start();
  if (agents.openEnrolment)
    log.warn('mirror.open_enrolment', {
      message: 'enrolment is open: any agent that asks is enrolled, with the groups it claims',
    });
  const state = await store.readState();
  log.info('mirror.started', {
    url,
    site: state.site,
    drop: o.dropDir ?? null,
    mirror: identity.id,
    upstream: o.upstream ?? null,
    upstreamBundles: link ? 'on' : 'off',
    peers: o.peers ?? [],
    peersFile: o.peerSync?.peersFile ?? null,
    outbox: outbox.depth,
    serverKey: serverKeyId ?? null,
    relayFrom: [...relayKeys.keys()],
    siteLogFrom: [...peerKeys.keys()],
    enrolment: agents.openEnrolment ? 'open' : 'token',
    active: state.active?.sequence ?? null,
    fleetView,
    silentAfterSec: fleet.silentAfterMs / 1000,
    crypto: backendName(),
  });

  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      log.info('mirror.stopping', {});
      // Downloads in flight finish and flush; idle keep-alive connections are ended gracefully.
      const closed = http.close(SHUTDOWN_GRACE_MS);
      await drop?.close();
      await closed;
      clearInterval(rolloutTicker);
      await forwarder.stop();
      await peerSync.stop();
      await siteSync?.stop();
      await siteLog.close();
      await link?.stop();
      await peerTransport.close();
      await control?.close();
      await fleet.close();
      await agents.close(); // the outbox, after the last request that could append
      await releaseOutbox();
      log.info('mirror.stopped', {});
    })());
  return { url, store, metrics, identity, forwarder, rollout, peerSync, importFile, close };
}
