/**
 * The mirror's status page: what it serves, what it refused. A pure function of its state, written
 * with the web kit (platform/web.ts), which escapes every value: file names, reasons and URLs come
 * from outside and are shown as text.
 */
import type { Manifest } from '../core/manifest.js';
import { humanBytes } from '../core/units.js';
import { html, layout, table, type Html } from '../platform/web.js';
import type { MirrorState } from './trust-state.js';
import type { ForwardStatus } from './forward.js';
import { FLEET_CSS, fleetBlock, type FleetBlockView } from './fleet-page.js';

/** The page reloads itself this often (a meta refresh: no script). */
export const STATUS_REFRESH_SEC = 15;
import type { PeerStatus } from './peers.js';
import type { SitePeerStatus, SiteSyncStatus } from './site-sync.js';
import type { UpstreamBundlesStatus } from './upstream-bundles.js';

/** The telemetry outbox as the serving mirror sees it (absent when the app runs without one). */
export type TelemetryView = ForwardStatus & {
  exports: number;
  /** The keyid of the server key courier acks are checked with, once pinned. */
  serverKey?: string;
  /** How agents enrol: with a token (the default), or open to any (`serve --open-enrolment`). */
  enrolment?: 'token' | 'open';
  /** Bundle-sync peers (mirror/peers.ts): link, sequence, back-off, transfer. */
  bundlePeers?: PeerStatus[];
  /** The site log and each peer's cursor in it (mirror/site-sync.ts). */
  siteLog?: SiteSyncStatus;
  /** The bundle link to the server (mirror/upstream-bundles.ts), when there is one. */
  upstreamBundles?: UpstreamBundlesStatus;
};

function enrolmentLine(t: TelemetryView | undefined): Html {
  if (t?.enrolment === 'open')
    return html`<p id="enrolment" class="bad">
      OPEN ENROLMENT: any agent that asks is enrolled, with the groups it claims (serve --open-enrolment)
    </p>`;
  if (t?.enrolment === 'token')
    return html`<p id="enrolment">enrolment needs a token (<code>ferry mirror token create</code>)</p>`;
  return html``;
}

export interface StatusView {
  state: MirrorState;
  rootVersion: number;
  manifest: Manifest | null;
  now: number;
  telemetry?: TelemetryView;
  fleet?: FleetBlockView;
}

type Target = ForwardStatus['targets'][number];
type Artifact = Manifest['artifacts'][number];
type Quarantined = MirrorState['quarantine'][number];
type Imported = MirrorState['imports'][number];
type Pending = MirrorState['pending'][number];

function telemetryBlock(t: TelemetryView | undefined): Html {
  if (!t) return html`<p class="none">not available</p>`;
  const oldest = t.oldestAt && html`, the oldest since <span id="oldest">${t.oldestAt}</span>`;
  const waiting =
    t.depth > 0
      ? html`<b id="outbox">${t.depth}</b> record(s) waiting to go home (seq ${t.acked + 1}–${t.head},
          ${humanBytes(t.bytes)} on disk${oldest})`
      : html`<span id="outbox">nothing waiting</span>`;
  const routes = t.targets.length
    ? table<Target>({
        columns: [
          { head: 'route', cell: (x) => x.kind },
          { head: 'url', cell: (x) => x.url },
          { head: 'state', cell: (x) => (x.ok ? 'ok' : `failing (${x.failures}×): ${x.lastError ?? ''}`) },
          { head: 'last success', cell: (x) => x.lastOkAt ?? '' },
        ],
        rows: t.targets,
      })
    : html`<p class="none">
        no upstream or peer configured: telemetry leaves by courier (ferry mirror export-telemetry)
      </p>`;
  const acks = t.serverKey
    ? html`acks checked with server key <span id="server-key">${t.serverKey.slice(0, 16)}…</span>`
    : html`no server key pinned yet (the first <code>import-ack --server-key</code> pins it)`;
  return html`<p>${waiting} · ${t.exports} export(s) made · ${acks}</p>
    ${routes}`;
}

/** Bundle-sync peers: one row each (mirror/peers.ts PeerStatus). */
function peersBlock(t: TelemetryView | undefined): Html {
  const peers = t?.bundlePeers ?? [];
  if (peers.length === 0) return html`<p id="peers" class="none">no peer mirrors configured</p>`;
  return html`<div id="peers">
    ${table<PeerStatus>({
      columns: [
        { head: 'peer', cell: (p) => p.url },
        { head: 'link', cell: (p) => p.link },
        { head: 'sequence', cell: (p) => p.sequence ?? '' },
        { head: 'offer', cell: (p) => p.offer ?? '' },
        {
          head: 'back-off',
          cell: (p) => (p.backoffUntil ? `until ${p.backoffUntil}: ${p.lastError?.code ?? ''}` : ''),
        },
        {
          head: 'transfer',
          cell: (p) =>
            p.transfer ? `${humanBytes(p.transfer.have)} of ${humanBytes(p.transfer.total)}` : '',
        },
        { head: 'received', cell: (p) => humanBytes(p.received) },
      ],
      rows: peers,
    })}
  </div>`;
}

/** The site log: entries held and, per peer, how far this mirror has read it and what it refused. */
function siteLogBlock(t: TelemetryView | undefined): Html {
  const s = t?.siteLog;
  if (!s) return html``;
  return html`<div id="site-log">
    <p>${s.entries} entries held (seq ${s.head})</p>
    ${table<SitePeerStatus>({
      columns: [
        { head: 'peer', cell: (p) => p.url },
        { head: 'link', cell: (p) => p.link },
        { head: 'read through', cell: (p) => p.cursor },
        { head: 'taken', cell: (p) => p.accepted },
        { head: 'refused', cell: (p) => (p.refused ? `${p.refused} (${p.lastRefusal?.code ?? ''})` : '0') },
        { head: 'error', cell: (p) => p.lastError?.code ?? '' },
      ],
      rows: s.peers,
    })}
  </div>`;
}

function activeBlock(v: StatusView): Html {
  const a = v.state.active;
  if (!a || !v.manifest) return html`<p id="active" class="none">no active bundle</p>`;
  const expired =
    Date.parse(a.expires) <= v.now &&
    html` <span class="bad">EXPIRED — agents keep their last verified state</span>`;
  return html`<p id="active">
      <b>${a.publisher}</b> sequence <b id="sequence">${a.sequence}</b>, expires ${a.expires}${expired}
    </p>
    ${table<Artifact>({
      columns: [
        { head: 'artifact', cell: (x) => x.name },
        { head: 'kind', cell: (x) => x.kind },
        { head: 'version', cell: (x) => x.version },
        { head: 'platform', cell: (x) => x.platform ?? '' },
        { head: 'size', cell: (x) => x.size },
        { head: 'sha256', cell: (x) => x.sha256 },
      ],
      rows: v.manifest.artifacts,
    })}`;
}

export function renderStatusPage(v: StatusView): string {
  const { state } = v;
  const body = html`<h1>ferry mirror — site <span id="site">${state.site}</span></h1>
    <p>
      trust root v${v.rootVersion} · ${state.pending.length} pending · ${state.quarantine.length} quarantined
    </p>
    ${enrolmentLine(v.telemetry)}
    ${
      v.fleet &&
      html`<h2>Fleet</h2>
        <div id="fleet">${fleetBlock(v.fleet)}</div>`
    }
    <h2>Active bundle</h2>
    ${activeBlock(v)}
    <h2>Telemetry outbox</h2>
    ${telemetryBlock(v.telemetry)}
    <h2>Peer mirrors</h2>
    ${peersBlock(v.telemetry)} ${v.telemetry?.siteLog && html`<h2>Site log</h2>`} ${siteLogBlock(v.telemetry)}
    <h2>Pending (waiting for blobs)</h2>
    ${table<Pending>({
      columns: [
        { head: 'publisher', cell: (p) => p.publisher },
        { head: 'sequence', cell: (p) => p.sequence },
        { head: 'expires', cell: (p) => p.expires },
      ],
      rows: state.pending,
    })}
    <h2>Quarantine</h2>
    <div id="quarantine">
      ${table<Quarantined>({
        columns: [
          { head: 'time', cell: (q) => q.at },
          { head: 'file', cell: (q) => q.file },
          { head: 'code', cell: (q) => q.code },
          { head: 'reason', cell: (q) => q.message },
        ],
        rows: [...state.quarantine].reverse(),
      })}
    </div>
    <h2>Recent imports</h2>
    ${table<Imported>({
      columns: [
        { head: 'time', cell: (i) => i.at },
        { head: 'file', cell: (i) => i.file },
        { head: 'publisher', cell: (i) => i.publisher },
        { head: 'sequence', cell: (i) => i.sequence },
        { head: 'status', cell: (i) => i.status },
        { head: 'new blobs', cell: (i) => i.blobsAdded },
      ],
      rows: [...state.imports].reverse(),
    })}`;
  return layout({
    title: `ferry mirror — ${state.site}`,
    body,
    ...(v.fleet && { css: FLEET_CSS, refreshSec: STATUS_REFRESH_SEC }),
  });
}
