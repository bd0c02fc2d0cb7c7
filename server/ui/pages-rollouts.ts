/**
 * A site's rollouts page: what the site's mirrors decided, as they reported it, per wave.
 */
import { html, table, type Html } from '../../platform/web.js';
import type { RolloutCounts } from '../../core/telemetry.js';
import { ROLLOUT_COUNT_KEYS } from '../../core/telemetry.js';
import type { RolloutView } from '../fleet-query.js';
import { page, type Viewer } from './layout.js';

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
