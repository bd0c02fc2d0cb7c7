/**
 * The server's pages, each a pure function of what it shows (rendered with the web kit, which
 * escapes every value: host names, reasons and versions come from the field). Forms that change
 * something are drawn only for admins; the routes refuse viewers whatever they post.
 */
import { html, table, trusted, type Html } from '../../platform/web.js';
import type { RolloutCounts } from '../../core/telemetry.js';
import { ROLLOUT_COUNT_KEYS } from '../../core/telemetry.js';
import type { AuditEntry } from '../audit.js';
import type { ArtifactRecord, BundleRecord, CatalogData, ReleaseRecord, SiteRecord } from '../catalog.js';
import type { AgentState } from '../fleet-state.js';
import {
  isBehind,
  isFailing,
  isSilent,
  type AgentFilter,
  type AgentPage,
  type RolloutView,
  type SiteHealth,
} from '../fleet-query.js';
import { csrfField, page, type Viewer } from './layout.js';

const admin = (v: Viewer) => v.role === 'admin';

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

export function releasesPage(
  v: Viewer,
  artifacts: ArtifactRecord[],
  releases: ReleaseRecord[],
  history: Map<string, { committed: number; failed: number }>,
): string {
  const key = (a: ArtifactRecord) => `${a.kind}:${a.name}@${a.version}${a.platform ? `/${a.platform}` : ''}`;
  const forms = admin(v)
    ? html`<form method="post" action="/releases/artifacts" enctype="multipart/form-data" id="upload">
          ${csrfField(v)}
          <fieldset>
            <legend>Upload an artifact</legend>
            <label
              >kind
              <select name="kind">
                <option>agent</option>
                <option>script</option>
                <option>policy</option>
                <option>file</option>
              </select></label
            >
            <label>name <input name="name" size="12" /></label>
            <label>version <input name="version" size="8" /></label>
            <label>platform <input name="platform" size="10" placeholder="linux-x64" /></label>
            <label>interpreter <input name="interpreter" size="5" placeholder="sh" /></label>
            <input type="file" name="file" />
            <button type="submit">Upload</button>
          </fieldset>
        </form>
        <form method="post" action="/releases" id="register">
          ${csrfField(v)}
          <fieldset>
            <legend>Register a release</legend>
            <label>name <input name="name" size="12" /></label>
            <label>version <input name="version" size="8" /></label>
            ${artifacts.map((a) => html`<label><input type="checkbox" name="artifact" value="${key(a)}" /> ${key(a)}</label>`)}
            <button type="submit">Register</button>
          </fieldset>
        </form>`
    : html``;
  const body = html`${forms}
    <h2>Releases</h2>
    ${table<ReleaseRecord>({
      id: 'releases',
      columns: [
        { head: 'release', cell: (r) => `${r.name}@${r.version}` },
        {
          head: 'artifacts',
          cell: (r) => r.artifacts.map((a) => `${a.kind}:${a.name}@${a.version}`).join(', '),
        },
        {
          head: 'agent outcomes (reported)',
          cell: (r) => {
            const agent = r.artifacts.find((a) => a.kind === 'agent');
            const h = agent && history.get(agent.version);
            if (!h) return '—';
            const n = h.committed + h.failed;
            return `${h.committed} committed, ${h.failed} failed (${n ? Math.round((100 * h.committed) / n) : 0}% success)`;
          },
        },
        { head: 'created', cell: (r) => `${r.createdAt} by ${r.createdBy}` },
      ],
      rows: releases,
      empty: 'no releases yet',
    })}
    <h2>Artifacts (stored by digest)</h2>
    ${table<ArtifactRecord>({
      id: 'artifacts',
      columns: [
        { head: 'artifact', cell: key },
        { head: 'size', cell: (a) => a.size },
        { head: 'sha256', cell: (a) => a.sha256 },
        { head: 'uploaded', cell: (a) => `${a.uploadedAt} by ${a.uploadedBy}` },
      ],
      rows: artifacts,
    })}`;
  return page({ title: 'Releases', viewer: v, body });
}

export function sitesPage(
  v: Viewer,
  sites: SiteRecord[],
  mirrors: { id: string; site: string; lastExportAt: string | null }[],
  releases: string[],
): string {
  const form = admin(v)
    ? html`<form method="post" action="/sites" id="add-site">
        ${csrfField(v)}
        <fieldset>
          <legend>Register a site</legend>
          <label>name <input name="name" size="12" /></label>
          <label>publisher <input name="publisher" size="12" placeholder="ferry-server" /></label>
          <label>last sequence the site has <input name="sequence" size="5" value="0" /></label>
          <button type="submit">Register</button>
        </fieldset>
      </form>`
    : html``;
  const siteBlock = (s: SiteRecord) =>
    html`<h2 id="site-${s.name}">${s.name}</h2>
      <p>
        publisher ${s.publisher} · sequence <b class="sequence">${s.sequence}</b> · plan
        ${s.plan ? `${s.plan.strategy ?? ''} → ${s.plan.agent}, waves ${s.plan.waves.map((w) => w.percent).join('/')}%` : 'none yet'}
        · ${s.updateNow.length} marked "update now" ·
        <a href="/sites/${encodeURIComponent(s.name)}/rollouts">rollouts</a>
      </p>
      ${table({
        columns: [
          { head: 'pin', cell: (p: [string, string]) => p[0] },
          { head: 'version', cell: (p: [string, string]) => p[1] },
        ],
        rows: Object.entries(s.pins),
        empty: 'no pins',
      })}
      ${
        admin(v)
          ? html`<form method="post" action="/sites/${encodeURIComponent(s.name)}/pins" class="pin-form">
                ${csrfField(v)}
                <label>pin <input name="target" placeholder="group:scada" size="14" /></label>
                <label>to version <input name="version" size="8" /></label>
                <button type="submit">Pin</button>
              </form>
              <form method="post" action="/bundles" class="build-form">
                ${csrfField(v)}<input type="hidden" name="site" value="${s.name}" />
                <label
                  >release
                  <select name="release">
                    ${releases.map((r) => html`<option>${r}</option>`)}
                  </select></label
                >
                <label
                  >strategy
                  <select name="strategy">
                    <option>staggered</option>
                    <option>immediate</option>
                    <option>manual</option>
                  </select></label
                >
                <label
                  ><input type="checkbox" name="unsigned" value="1" /> unsigned (offline signing
                  station)</label
                >
                <label
                  ><input type="checkbox" name="full" value="1" /> full (ignore the site's last
                  inventory)</label
                >
                <button type="submit">Build next bundle</button>
              </form>`
          : ''
      }`;
  const body = html`${form}${sites.map(siteBlock)}
    <h2>Registered mirrors</h2>
    ${table({
      id: 'mirrors',
      columns: [
        { head: 'mirror', cell: (m: (typeof mirrors)[number]) => m.id },
        { head: 'site', cell: (m: (typeof mirrors)[number]) => m.site },
        { head: 'last courier import', cell: (m: (typeof mirrors)[number]) => m.lastExportAt ?? 'never' },
      ],
      rows: mirrors,
      empty: 'no mirror registered (ferry server register-mirror)',
    })}`;
  return page({ title: 'Sites', viewer: v, body });
}

function bar(c: RolloutCounts | null): Html {
  if (!c || c.agents === 0) return html`<div class="bar"></div>`;
  const parts = ROLLOUT_COUNT_KEYS.filter((k) => k !== 'agents' && c[k] > 0).map(
    (k) =>
      html`<span
        class="c-${k}"
        style="width:${((100 * c[k]) / c.agents).toFixed(1)}%"
        title="${k} ${c[k]}"
      ></span>`,
  );
  return html`<div class="bar">${parts}</div>`;
}

const countText = (c: RolloutCounts | null | undefined) =>
  c ? ROLLOUT_COUNT_KEYS.map((k) => `${k} ${c[k]}`).join(', ') : 'no counts reported';

export function rolloutsPage(v: Viewer, site: string, rollouts: RolloutView[], refresh: number): string {
  const one = (r: RolloutView) =>
    html`<section class="rollout" id="rollout-${r.rolloutId.slice(0, 12)}">
      <h2>
        ${r.version} (manifest ${r.manifestSequence}) —
        <span class="status ${r.status === 'halted' ? 'bad' : ''}">${r.status}</span>
      </h2>
      ${r.halts.map(
        (h) =>
          html`<p class="halt">
            HALTED at wave ${h.wave + 1} (${h.actor}, ${h.at}):
            ${h.reason}${
              h.failureRate !== undefined
                ? html` — failure rate <b>${(h.failureRate * 100).toFixed(1)}%</b>`
                : ''
            }${h.threshold !== undefined ? html` over threshold <b>${(h.threshold * 100).toFixed(1)}%</b>` : ''};
            ${countText(h.counts)}
          </p>`,
      )}
      ${table({
        columns: [
          { head: 'wave', cell: (w: RolloutView['waves'][number]) => w.wave + 1 },
          { head: 'progress', cell: (w: RolloutView['waves'][number]) => bar(w.counts) },
          { head: 'counts', cell: (w: RolloutView['waves'][number]) => countText(w.counts) },
        ],
        rows: r.waves,
      })}
      <details>
        <summary>${r.events.length} event(s)</summary>
        ${table({
          columns: [
            { head: 'received', cell: (e: RolloutView['events'][number]) => e.at },
            { head: 'event', cell: (e: RolloutView['events'][number]) => e.rollout.event },
            { head: 'wave', cell: (e: RolloutView['events'][number]) => e.rollout.wave + 1 },
            { head: 'by', cell: (e: RolloutView['events'][number]) => e.rollout.actor },
            { head: 'reason', cell: (e: RolloutView['events'][number]) => e.rollout.reason },
          ],
          rows: r.events,
        })}
      </details>
    </section>`;
  const body = html`<p>
      What the mirrors of <b id="site">${site}</b> decided, as they reported it (this page reloads every
      ${refresh}s).
    </p>
    ${rollouts.length ? rollouts.map(one) : html`<p class="none" id="no-rollouts">no rollout reported by this site yet</p>`}`;
  return page({ title: `Rollouts — ${site}`, viewer: v, body, refresh });
}

export function bundlesPage(v: Viewer, bundles: BundleRecord[]): string {
  const body = html`<p>
      Bundles built for sites, newest first. An unsigned one is signed at the offline station (<code
        >ferry bundle sign</code
      >) and recorded with <code>ferry server bundle import</code>.
    </p>
    ${table<BundleRecord>({
      id: 'bundles',
      columns: [
        { head: 'bundle', cell: (b) => b.id },
        { head: 'site', cell: (b) => b.site },
        { head: 'release', cell: (b) => b.release },
        { head: 'sequence', cell: (b) => b.sequence },
        { head: 'strategy', cell: (b) => b.strategy },
        { head: 'status', cell: (b) => `${b.status} (${b.signatures} signature(s))` },
        { head: 'size', cell: (b) => b.bytes },
        { head: 'built', cell: (b) => `${b.builtAt} by ${b.builtBy}` },
        { head: 'file', cell: (b) => html`<a href="/bundles/${encodeURIComponent(b.id)}/file">download</a>` },
      ],
      rows: [...bundles].reverse(),
      empty: 'no bundles built yet',
    })}`;
  return page({ title: 'Bundles', viewer: v, body });
}

export function auditPage(
  v: Viewer,
  total: number,
  offset: number,
  size: number,
  entries: AuditEntry[],
): string {
  const at = Math.floor(offset / size) + 1;
  const pages = Math.max(1, Math.ceil(total / size));
  const body = html`<p class="pager">
      ${total} entr${total === 1 ? 'y' : 'ies'} · page ${at} of ${pages}
      ${at > 1 ? html`<a href="/audit?page=${at - 1}">newer</a>` : ''}
      ${at < pages ? html`<a href="/audit?page=${at + 1}">older</a>` : ''}
    </p>
    ${table<AuditEntry>({
      id: 'audit',
      columns: [
        { head: '#', cell: (e) => e.seq },
        { head: 'time', cell: (e) => e.at },
        { head: 'actor', cell: (e) => e.actor },
        { head: 'action', cell: (e) => e.action },
        {
          head: 'detail',
          cell: (e) =>
            Object.entries(e.detail)
              .map(([k, x]) => `${k}=${Array.isArray(x) ? x.join(',') : String(x)}`)
              .join(' '),
        },
        { head: 'hash', cell: (e) => `${e.hash.slice(0, 12)}…` },
      ],
      rows: entries,
    })}`;
  return page({ title: 'Audit log', viewer: v, body });
}
