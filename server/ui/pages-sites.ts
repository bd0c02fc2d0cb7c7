/**
 * The sites page: each site's publisher, sequence, plan and pins, with the pin and build forms for
 * admins, and the mirrors registered for the sites.
 */
import { html, table } from '../../platform/web.js';
import type { SiteRecord } from '../catalog.js';
import { csrfField, isAdmin as admin, page, type Viewer } from './layout.js';

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
