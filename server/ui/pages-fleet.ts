/**
 * The fleet's pages: the dashboard (per-site health and alerts), the agents list (filters, pagination,
 * bulk actions) and one agent's detail. Each is a pure function of what it shows, rendered with the
 * web kit, which escapes every value (host names, reasons and versions come from the field).
 */
import { html, table, trusted, type Html } from '../../platform/web.js';
import type { CatalogData } from '../catalog.js';
import type { AgentState } from '../fleet-state.js';
import {
  isBehind,
  isFailing,
  isSilent,
  type AgentFilter,
  type AgentPage,
  type SiteHealth,
} from '../fleet-query.js';
import { csrfField, isAdmin as admin, page, type Viewer } from './layout.js';

function chips(a: AgentState, target: string | undefined, now: number): Html {
  const c: Html[] = [];
  if (a.revoked) c.push(html`<span class="chip failing">revoked</span>`);
  if (isBehind(a, target)) c.push(html`<span class="chip behind">behind</span>`);
  if (isFailing(a)) c.push(html`<span class="chip failing">failing</span>`);
  if (isSilent(a, now)) c.push(html`<span class="chip silent">silent</span>`);
  if (c.length === 0) c.push(html`<span class="chip ok">ok</span>`);
  return html`${c}`;
}

export function dashboardPage(
  v: Viewer,
  health: SiteHealth[],
  alerts: string[],
  totals: { agents: number; rejections: number },
): string {
  const body = html`<p>${totals.agents} agent(s) · ${totals.rejections} telemetry rejection(s) journaled</p>
    <h2>Alerts</h2>
    ${
      alerts.length
        ? html`<ul id="alerts">
            ${alerts.map((a) => html`<li class="bad">${a}</li>`)}
          </ul>`
        : html`<p class="none" id="alerts">none</p>`
    }
    <h2>Sites</h2>
    ${table<SiteHealth>({
      id: 'health',
      columns: [
        {
          head: 'site',
          cell: (h) => html`<a href="/agents?site=${encodeURIComponent(h.site)}">${h.site}</a>`,
        },
        { head: 'agents', cell: (h) => h.agents },
        { head: 'target', cell: (h) => h.target ?? '—' },
        {
          head: 'behind',
          cell: (h) =>
            h.behind
              ? html`<a href="/agents?site=${encodeURIComponent(h.site)}&amp;behind=1"
                  >${h.behind} agents behind</a
                >`
              : '0',
        },
        { head: 'failing', cell: (h) => h.failing },
        { head: 'silent', cell: (h) => h.silent },
        { head: 'revoked', cell: (h) => h.revoked },
        { head: 'last heard', cell: (h) => h.lastHeard ?? 'never' },
        {
          head: 'rollouts',
          cell: (h) => html`<a href="/sites/${encodeURIComponent(h.site)}/rollouts">rollouts</a>`,
        },
      ],
      rows: health,
      empty: 'no sites yet: register one on the Sites page, or import telemetry',
    })}`;
  return page({ title: 'Dashboard', viewer: v, body });
}

function filterForm(f: AgentFilter, sites: string[]): Html {
  const box = (name: keyof AgentFilter, label: string) =>
    html`<label
      ><input type="checkbox" name="${name}" value="1" ${f[name] ? trusted('checked') : ''} /> ${label}</label
    >`;
  return html`<form method="get" action="/agents" id="filters">
    <label
      >site
      <select name="site">
        <option value="">any</option>
        ${sites.map((s) => html`<option ${s === f.site ? trusted('selected') : ''}>${s}</option>`)}
      </select></label
    >
    <label>version <input name="version" value="${f.version ?? ''}" size="8" /></label>
    ${box('behind', 'behind')}${box('failing', 'failing')}${box('silent', 'silent')}
    <button type="submit">Filter</button>
  </form>`;
}

export function agentsPage(
  v: Viewer,
  f: AgentFilter,
  p: AgentPage,
  pageSize: number,
  query: string,
  catalog: CatalogData,
  sites: string[],
  now: number,
): string {
  const target = (site: string) =>
    Object.hasOwn(catalog.sites, site) ? catalog.sites[site]!.plan?.agent : undefined;
  const group = (a: AgentState) => {
    const moved = Object.hasOwn(catalog.sites, a.site) ? catalog.sites[a.site]!.groups[a.id] : undefined;
    return moved ? `${a.groups.join(',')} → ${moved}` : a.groups.join(',');
  };
  const rows = table<AgentState>({
    id: 'agents',
    columns: [
      ...(admin(v)
        ? [
            {
              head: '',
              cell: (a: AgentState) =>
                html`<input type="checkbox" name="agents" value="${a.id}" form="bulk" />`,
            },
          ]
        : []),
      { head: 'host', cell: (a) => html`<a href="/agents/${a.id}">${a.hostname}</a>` },
      { head: 'site', cell: (a) => a.site },
      { head: 'groups', cell: group },
      { head: 'version', cell: (a) => a.latest?.version ?? '—' },
      { head: 'state', cell: (a) => chips(a, target(a.site), now) },
      {
        head: 'last heartbeat',
        cell: (a) => (a.latest ? `${a.latest.sentAt} via ${a.latest.via.slice(0, 12)}` : 'never'),
      },
      { head: 'disconnected', cell: (a) => (a.latest ? `${a.latest.disconnectedSec}s` : '') },
    ],
    rows: p.rows,
    empty: 'no agent matches',
  });
  const pages = Math.max(1, Math.ceil(p.total / pageSize));
  const at = Math.floor(p.offset / pageSize) + 1;
  const link = (n: number) => `/agents?${query}${query ? '&' : ''}page=${n}`;
  const pager = html`<p class="pager" id="pager">
    ${p.total} agent(s) · page ${at} of ${pages} ${at > 1 ? html`<a href="${link(at - 1)}">previous</a>` : ''}
    ${at < pages ? html`<a href="${link(at + 1)}" id="next">next</a>` : ''}
  </p>`;
  const bulk = admin(v)
    ? html`<form method="post" action="/agents/bulk" id="bulk">
        ${csrfField(v)}
        <fieldset>
          <legend>Selected agents</legend>
          <label><input type="radio" name="action" value="pin" checked /> pin to version</label>
          <label><input type="radio" name="action" value="group" /> move to group</label>
          <label><input type="radio" name="action" value="update-now" /> update now (next bundle)</label>
          <label>value <input name="value" size="10" /></label>
          <button type="submit">Apply</button>
        </fieldset>
      </form>`
    : html``;
  return page({ title: 'Agents', viewer: v, body: html`${filterForm(f, sites)}${bulk}${pager}${rows}` });
}

export function agentPage(v: Viewer, a: AgentState, parked: number): string {
  const l = a.latest;
  const json = (x: unknown) => JSON.stringify(x);
  const body = html`<p>
      <b id="agent-id">${a.id}</b> · site ${a.site} · groups ${a.groups.join(', ')} · ${a.platform} · enrolled
      ${a.enrolledAt} by mirror ${a.enrolledBy.slice(0, 16)}
    </p>
    ${a.revoked ? html`<p class="bad">REVOKED ${a.revoked.at}: ${a.revoked.reason}</p>` : ''}
    <p>
      ${a.heartbeats} heartbeat(s), ${parked} parked · version <b>${l?.version ?? '—'}</b> · manifest
      ${l?.manifestSequence ?? '—'} · last
      ${l ? `${l.sentAt} (received ${l.receivedAt} via ${l.via})` : 'never'} · disconnected
      ${l?.disconnectedSec ?? 0}s
    </p>
    <h2>Last results</h2>
    ${table({ id: 'results', columns: [{ head: 'result', cell: (r: unknown) => json(r) }], rows: l?.results ?? [] })}
    <h2>Drift</h2>
    ${table({ id: 'drift', columns: [{ head: 'difference', cell: (r: unknown) => json(r) }], rows: l?.drift ?? [] })}`;
  return page({ title: `Agent ${a.hostname}`, viewer: v, body });
}
