/** The mirror's status page: what it serves, what it refused. A pure function of its state. */
import type { Manifest } from '../core/manifest.js';
import { humanBytes } from '../core/units.js';
import type { MirrorState } from './state.js';
import type { ForwardStatus } from './forward.js';

const esc = (s: unknown) =>
  String(s).replace(
    /[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!,
  );

function table(head: string[], rows: unknown[][]): string {
  if (rows.length === 0) return '<p class="none">none</p>';
  const th = head.map((h) => `<th>${esc(h)}</th>`).join('');
  const tr = rows.map((r) => `<tr>${r.map((c) => `<td>${esc(c)}</td>`).join('')}</tr>`).join('\n');
  return `<table><thead><tr>${th}</tr></thead><tbody>\n${tr}\n</tbody></table>`;
}

/** The telemetry outbox as the serving mirror sees it (absent when the app runs without one). */
export type TelemetryView = ForwardStatus & {
  exports: number;
  /** The keyid of the server key courier acks are checked with, once pinned. */
  serverKey?: string;
  /** How agents enrol: with a token (the default), or open to any (`serve --open-enrolment`). */
  enrolment?: 'token' | 'open';
};

function enrolmentLine(t: TelemetryView | undefined): string {
  if (t?.enrolment === 'open')
    return '<p id="enrolment" class="bad">OPEN ENROLMENT: any agent that asks is enrolled, with the groups it claims (serve --open-enrolment)</p>';
  if (t?.enrolment === 'token')
    return '<p id="enrolment">enrolment needs a token (<code>ferry mirror token create</code>)</p>';
  return '';
}

export interface StatusView {
  state: MirrorState;
  rootVersion: number;
  manifest: Manifest | null;
  now: number;
  telemetry?: TelemetryView;
}

function telemetryBlock(t: TelemetryView | undefined): string {
  if (!t) return '<p class="none">not available</p>';
  const waiting =
    t.depth > 0
      ? `<b id="outbox">${t.depth}</b> record(s) waiting to go home (seq ${t.acked + 1}–${t.head}, ` +
        `${esc(humanBytes(t.bytes))} on disk${t.oldestAt ? `, the oldest since <span id="oldest">${esc(t.oldestAt)}</span>` : ''})`
      : '<span id="outbox">nothing waiting</span>';
  const routes = t.targets.length
    ? table(
        ['route', 'url', 'state', 'last success'],
        t.targets.map((x) => [
          x.kind,
          x.url,
          x.ok ? 'ok' : `failing (${x.failures}×): ${x.lastError ?? ''}`,
          x.lastOkAt ?? '',
        ]),
      )
    : '<p class="none">no upstream or peer configured: telemetry leaves by courier (ferry mirror export-telemetry)</p>';
  const acks = t.serverKey
    ? `acks checked with server key <span id="server-key">${esc(t.serverKey.slice(0, 16))}…</span>`
    : 'no server key pinned yet (the first <code>import-ack --server-key</code> pins it)';
  return `<p>${waiting} · ${t.exports} export(s) made · ${acks}</p>\n${routes}`;
}

export function renderStatusPage(v: StatusView): string {
  const { state, manifest } = v;
  const a = state.active;
  const expired = a ? Date.parse(a.expires) <= v.now : false;
  const activeBlock =
    a && manifest
      ? `<p id="active"><b>${esc(a.publisher)}</b> sequence <b id="sequence">${a.sequence}</b>, expires ${esc(a.expires)}` +
        `${expired ? ' <span class="bad">EXPIRED — agents keep their last verified state</span>' : ''}</p>` +
        table(
          ['artifact', 'kind', 'version', 'platform', 'size', 'sha256'],
          manifest.artifacts.map((x) => [x.name, x.kind, x.version, x.platform ?? '', x.size, x.sha256]),
        )
      : '<p id="active" class="none">no active bundle</p>';
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ferry mirror — ${esc(state.site)}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}h1{font-size:20px}h2{font-size:16px;margin-top:1.5em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;font-family:monospace;font-size:12px}
.none{color:#888}.bad{color:#b00;font-weight:bold}
</style></head><body>
<h1>ferry mirror — site <span id="site">${esc(state.site)}</span></h1>
<p>trust root v${v.rootVersion} · ${state.pending.length} pending · ${state.quarantine.length} quarantined</p>
${enrolmentLine(v.telemetry)}
<h2>Active bundle</h2>
${activeBlock}
<h2>Telemetry outbox</h2>
${telemetryBlock(v.telemetry)}
<h2>Pending (waiting for blobs)</h2>
${table(
  ['publisher', 'sequence', 'expires'],
  state.pending.map((p) => [p.publisher, p.sequence, p.expires]),
)}
<h2>Quarantine</h2>
<div id="quarantine">${table(
    ['time', 'file', 'code', 'reason'],
    [...state.quarantine].reverse().map((q) => [q.at, q.file, q.code, q.message]),
  )}</div>
<h2>Recent imports</h2>
${table(
  ['time', 'file', 'publisher', 'sequence', 'status', 'new blobs'],
  [...state.imports].reverse().map((i) => [i.at, i.file, i.publisher, i.sequence, i.status, i.blobsAdded]),
)}
</body></html>
`;
}
