/**
 * A site's rollouts page: the plan each bundle sent the site, per-wave progress as the site's mirrors
 * reported it and as the fleet the server hears from stands, the halts with their counts and
 * thresholds, and (for admins) roll back. The rollouts part is a fragment the page's own script
 * (server/ui/live.ts) fetches again while the page is open, so the bars move without a reload.
 */
import { html, table, type Html } from '../../platform/web.js';
import type { RolloutCounts } from '../../core/telemetry.js';
import { ROLLOUT_COUNT_KEYS } from '../../core/telemetry.js';
import type { SiteRollout, WaveRow } from '../rollout-view.js';
import { csrfField, isAdmin, page, type Viewer } from './layout.js';
import { LIVE_SCRIPT_PATH } from './live.js';

function bar(c: RolloutCounts | null, kind: string): Html {
  if (!c || c.agents === 0) return html`<div class="bar ${kind}" title="no agents"></div>`;
  const parts = ROLLOUT_COUNT_KEYS.filter((k) => k !== 'agents' && c[k] > 0).map(
    (k) =>
      html`<span
        class="c-${k}"
        style="width:${((100 * c[k]) / c.agents).toFixed(1)}%"
        title="${k} ${c[k]}"
      ></span>`,
  );
  return html`<div class="bar ${kind}">${parts}</div>`;
}

const pct = (x: number) => `${(x * 100).toFixed(1)}%`;

const countText = (c: RolloutCounts | null | undefined) =>
  c
    ? ROLLOUT_COUNT_KEYS.filter((k) => k === 'agents' || c[k] > 0)
        .map((k) => `${k} ${c[k]}`)
        .join(', ')
    : '';

function done(c: RolloutCounts | null): string {
  if (!c || c.agents === 0) return '0 %';
  return `${Math.round((100 * c.committed) / c.agents)} %`;
}

function planLine(r: SiteRollout): Html {
  const s = r.sent;
  if (!s) return html`<p class="plan">plan: not sent by this server (only the site's reports are known)</p>`;
  const p = s.plan;
  const w = p.window;
  return html`<p class="plan">
    sent in bundle <b>${s.bundle}</b> (release ${s.release}, sequence ${s.sequence}) by ${s.builtBy} at
    ${s.builtAt} · strategy <b class="strategy">${p.strategy ?? 'staggered'}</b> · maxFailureRate
    <b class="max-failure">${pct(p.maxFailureRate ?? 0)}</b> · window
    ${w ? `${w.days.join(',')} ${w.start}–${w.end} ${w.tz}` : 'any time'}
  </p>`;
}

function waveTable(r: SiteRollout): Html {
  return table<WaveRow>({
    columns: [
      { head: 'wave', cell: (w) => w.wave + 1 },
      { head: 'up to', cell: (w) => (w.percent === null ? '?' : `${w.percent} %`) },
      { head: 'soak', cell: (w) => (w.soakMinutes === null ? '?' : `${w.soakMinutes} min`) },
      {
        head: 'reported by the site',
        cell: (w) =>
          html`${bar(w.reported, 'reported')}
            <span class="done">${done(w.reported)}</span>
            ${w.reported ? countText(w.reported) : 'no report yet'}`,
      },
      {
        head: 'fleet seen by the server',
        cell: (w) =>
          html`${bar(w.fleet, 'fleet')}
            <span class="done">${done(w.fleet)}</span> ${w.fleet.agents ? countText(w.fleet) : 'no agent'}`,
      },
    ],
    rows: r.waves,
    empty: 'no wave known',
  });
}

function section(r: SiteRollout): Html {
  const id = r.rolloutId ? r.rolloutId.slice(0, 12) : `seq-${r.sent?.sequence ?? 0}`;
  return html`<section class="rollout" id="rollout-${id}">
    <h2>
      ${r.version} —
      <span class="status ${r.status === 'halted' ? 'bad' : ''}">${r.status}</span>
      <small>${r.rolloutId ? `rollout ${r.rolloutId.slice(0, 16)}…` : ''}</small>
    </h2>
    ${planLine(r)}
    ${r.halts.map(
      (h) =>
        html`<p class="halt">
          HALTED at wave ${h.wave + 1} (${h.actor}, ${h.at}):
          ${h.reason}${h.failureRate !== undefined ? html` — failure rate <b>${pct(h.failureRate)}</b>` : ''}${
            h.threshold !== undefined ? html` over threshold <b>${pct(h.threshold)}</b>` : ''
          };
          ${h.counts ? countText(h.counts) : 'no counts reported'}
        </p>`,
    )}
    ${waveTable(r)}
    <details>
      <summary>${r.events.length} event(s)</summary>
      ${table({
        columns: [
          { head: 'received', cell: (e: SiteRollout['events'][number]) => e.at },
          { head: 'event', cell: (e: SiteRollout['events'][number]) => e.rollout.event },
          { head: 'wave', cell: (e: SiteRollout['events'][number]) => e.rollout.wave + 1 },
          { head: 'by', cell: (e: SiteRollout['events'][number]) => e.rollout.actor },
          { head: 'reason', cell: (e: SiteRollout['events'][number]) => e.rollout.reason },
        ],
        rows: r.events,
      })}
    </details>
  </section>`;
}

/** The part of the page that updates live. */
export function rolloutsFragment(rollouts: SiteRollout[]): Html {
  return rollouts.length
    ? html`${rollouts.map(section)}`
    : html`<p class="none" id="no-rollouts">no rollout sent to or reported by this site yet</p>`;
}

export interface RollbackChoice {
  release: string;
  agent: string;
}

function rollbackForm(v: Viewer, site: string, choices: RollbackChoice[], target: string | null): Html {
  if (!isAdmin(v)) return html``;
  if (!target || choices.length === 0)
    return html`<p class="none" id="rollback-none">
      Roll back: no release with an agent older than the site's target ${target ?? '(none yet)'}.
    </p>`;
  return html`<form method="post" action="/sites/${encodeURIComponent(site)}/rollback" id="rollback">
    ${csrfField(v)}
    <fieldset>
      <legend>Roll back from ${target}</legend>
      <label
        >to release
        <select name="release">
          ${choices.map((c) => html`<option value="${c.release}">${c.release} (agent ${c.agent})</option>`)}
        </select></label
      >
      <label><input type="checkbox" name="unsigned" value="1" /> unsigned (offline signing station)</label>
      <button type="submit">Build rollback bundle</button>
    </fieldset>
  </form>`;
}

export function rolloutsPage(
  v: Viewer,
  site: string,
  rollouts: SiteRollout[],
  o: { liveSec: number; choices: RollbackChoice[]; target: string | null },
): string {
  const live = `/sites/${encodeURIComponent(site)}/rollouts/live`;
  const body = html`<p>
      The plan this server sent <b id="site">${site}</b>, what the site's mirrors decided as they reported it,
      and where the agents the server hears from stand in each wave (updated every ${o.liveSec}s while this
      page is open).
    </p>
    <p class="msg" id="site-decides">
      Approve, halt, resume and abort are the site's own decisions: its mirror runs the plan on its own
      evidence (<code>ferry mirror rollout approve|halt|resume|abort</code> at the site). From here you can
      roll the site back: its next bundle carries an older release, pinned so that agents accept it.
    </p>
    ${rollbackForm(v, site, o.choices, o.target)}
    <div id="live" data-live="${live}" data-live-sec="${o.liveSec}">${rolloutsFragment(rollouts)}</div>
    <noscript><meta http-equiv="refresh" content="${o.liveSec}" /></noscript>`;
  return page({ title: `Rollouts — ${site}`, viewer: v, body, script: LIVE_SCRIPT_PATH });
}
