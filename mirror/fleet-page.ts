/**
 * The fleet on the mirror's status page: the summary, the alerts, the current
 * rollout's waves as stacked bars, and one page of the agents table with its
 * filters (behind, failing, silent, doctor) and page links. Paginated and filtered
 * on the server, so 10,000 agents cost what 50 do. Written with the web kit
 * (platform/web.ts): hostnames, groups, versions and reasons come from agents
 * and are shown as text.
 *
 * Per-agent detail (the table, and which agents an alert names) is shown only
 * to clients the mirror's fleet-view setting admits (docs/decisions.md); the
 * others see the counts.
 */
import { ROLLOUT_COUNT_KEYS, type RolloutCounts } from '../core/telemetry.js';
import { html, table, type Html } from '../platform/web.js';
import type { FleetPage, FleetReport } from './fleet-store.js';
import { FLEET_FILTERS, type FleetAgentView, type FleetAlert, type RolloutSummary } from './fleet.js';

/** What the status page shows of the fleet: with detail, or the report alone. */
export type FleetBlockView = { detail: true; page: FleetPage } | { detail: false; report: FleetReport };

export const FLEET_CSS = `.chip{display:inline-block;padding:0 5px;border-radius:3px;font-size:11px;color:#fff;margin-right:2px}
.chip.behind{background:#b60}.chip.failing{background:#b00}.chip.silent{background:#666}.chip.revoked{background:#444}.chip.doctor{background:#906}.chip.doctor-warn{background:#a80}
.bar{display:flex;width:420px;height:14px;border:1px solid #ccc;margin:2px 0}.bar span{display:block;height:100%}
.s-pending{background:#ddd}.s-updating{background:#48c}.s-committed{background:#2a2}.s-failed{background:#c22}
.s-rolledBack{background:#c80}.s-silent{background:#777}.alert{color:#b00}nav a{margin-right:8px}nav b{margin-right:8px}`;

type BarKey = Exclude<keyof RolloutCounts, 'agents'>;
const BAR_KEYS = ROLLOUT_COUNT_KEYS.filter((k): k is BarKey => k !== 'agents');

function bar(c: RolloutCounts): Html {
  const total = BAR_KEYS.reduce((n, k) => n + c[k], 0);
  const width = (k: BarKey) => ((100 * c[k]) / Math.max(1, total)).toFixed(2);
  // prettier-ignore
  const parts = BAR_KEYS.filter((k) => c[k] > 0).map((k) => html`<span class="s-${k}" style="width:${width(k)}%" title="${k} ${c[k]}"></span>`);
  const words = BAR_KEYS.map((k) => `${k} ${c[k]}`).join(' · ');
  return html`<div class="bar">${parts}</div>
    <small>${words}</small>`;
}

function rolloutBlock(r: RolloutSummary | null): Html {
  if (!r) return html`<p id="rollout" class="none">no rollout under way</p>`;
  const waves = r.waves.map(
    (w, i) =>
      html`<li class="wave${i === r.wave ? ' current' : ''}">
        wave ${i + 1} (${w.percent} %, ${w.counts.agents} agent(s))${i === r.wave ? ' ← current' : ''}
        ${bar(w.counts)}
      </li>`,
  );
  const halt = r.state === 'halted' && html` <span class="bad">HALTED: ${r.haltReason ?? ''}</span>`;
  return html`<div id="rollout">
    <p>
      rollout <b>${r.rolloutId}</b> of <b>${r.version}</b> (${r.strategy}):
      <b id="rollout-state">${r.state}</b>${halt}
    </p>
    <ol>
      ${waves}
    </ol>
  </div>`;
}

function alertItem(a: FleetAlert, detail: boolean): Html {
  const who =
    detail && a.agents.length
      ? html`<ul>
          ${a.agents.map((x) => html`<li>${x.hostname} (${x.id}): ${x.reason}</li>`)}
        </ul>`
      : html``;
  return html`<li class="alert" data-kind="${a.kind}"><b>${a.kind}</b> ${a.message}${who}</li>`;
}

function chips(v: FleetAgentView): Html {
  return html`${v.revoked && html`<span class="chip revoked">revoked</span>`}${
    v.behind && html`<span class="chip behind">behind → ${v.wanted}</span>`
  }${v.failing && html`<span class="chip failing">update failed</span>`}${
    v.silent && html`<span class="chip silent">silent</span>`
  }${doctorChip(v)}`;
}

/** The latest doctor report's failing checks (or, when none fail, its warnings), ids as text. */
function doctorChip(v: FleetAgentView): Html {
  const d = v.doctor;
  if (!d || (d.failCount === 0 && d.warnCount === 0)) return html``;
  const title = `doctor at ${d.at}: fail ${d.fail.join(', ') || '-'}; warn ${d.warn.join(', ') || '-'}`;
  return d.failCount > 0
    ? html`<span class="chip doctor" title="${title}">doctor ✗${d.failCount}: ${d.fail.join(', ')}</span>`
    : html`<span class="chip doctor-warn" title="${title}"
        >doctor ⚠${d.warnCount}: ${d.warn.join(', ')}</span
      >`;
}

const link = (p: FleetPage, page: number, filter = p.filter) =>
  `/?filter=${encodeURIComponent(filter)}&page=${page}`;

function agentsBlock(p: FleetPage): Html {
  const filters = FLEET_FILTERS.map((f) =>
    f === p.filter ? html`<b>${f}</b>` : html`<a href="${link(p, 1, f)}">${f}</a>`,
  );
  const pager = html`<nav id="pager">
    ${p.page > 1 && html`<a rel="prev" href="${link(p, p.page - 1)}">← previous</a>`} page
    <b id="page">${p.page}</b> of <b id="pages">${p.pages}</b> (${p.total} agent(s))
    ${p.page < p.pages && html`<a rel="next" href="${link(p, p.page + 1)}">next →</a>`}
  </nav>`;
  const rows = table<FleetAgentView>({
    id: 'agents',
    empty: p.filter === 'all' ? 'no agent enrolled' : `no agent is ${p.filter}`,
    columns: [
      { head: 'agent', cell: (v) => v.id },
      { head: 'host', cell: (v) => v.hostname },
      { head: 'groups', cell: (v) => v.groups.join(', ') },
      { head: 'version', cell: (v) => html`${v.version ?? '—'} ${chips(v)}` },
      { head: 'last contact', cell: (v) => v.lastContact ?? 'never' },
      {
        head: 'last update',
        cell: (v) =>
          v.lastUpdate ? `${v.lastUpdate.outcome} ${v.lastUpdate.version}: ${v.lastUpdate.reason}` : '',
      },
      { head: 'drift', cell: (v) => v.driftCount ?? 0 },
      { head: 'disconnected', cell: (v) => (v.disconnectedSec ? `${v.disconnectedSec} s` : '') },
    ],
    rows: p.agents,
  });
  return html`<nav id="filters">show: ${filters}</nav>
    ${pager} ${rows}`;
}

export function fleetBlock(v: FleetBlockView): Html {
  const r = v.detail ? v.page : v.report;
  const s = r.summary;
  const versions = Object.entries(s.byVersion)
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([ver, n]) => `${ver}: ${n}`)
    .join(' · ');
  const alerts = r.alerts.length
    ? html`<ul id="alerts">
        ${r.alerts.map((a) => alertItem(a, v.detail))}
      </ul>`
    : html`<p id="alerts" class="none">no alerts</p>`;
  const detail = v.detail
    ? agentsBlock(v.page)
    : html`<p id="agents-hidden" class="none">
        the agent list is shown only on the mirror's own host (serve --fleet-view site shows it to the site)
      </p>`;
  return html`<p id="fleet-summary">
      <b id="agents-count">${s.agents}</b> agent(s) · <b id="behind-count">${s.behind}</b> behind ·
      ${s.failing} failing · ${s.silent} silent (no heartbeat for ${r.silentAfterSec} s) · ${s.revoked}
      revoked · <span id="doctor-count">${s.doctorFailing}</span> with failing doctor checks
    </p>
    <p id="versions">${versions || 'no versions reported yet'}</p>
    <h3>Alerts</h3>
    ${alerts}
    <h3>Rollout</h3>
    ${rolloutBlock(r.rollout)}
    <h3>Agents</h3>
    ${detail}`;
}
