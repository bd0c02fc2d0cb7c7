/**
 * A site's rollouts page, the fragment its script fetches again while it is open (answered 304 when
 * nothing changed), the script itself, and the admin's roll back form.
 */
import { createHash } from 'node:crypto';
import { compareSemver, isSemver } from '../../core/semver.js';
import { rollbackSite } from '../rollback.js';
import { need } from '../auth-http.js';
import { siteRollouts } from '../rollout-view.js';
import type { CatalogData } from '../catalog.js';
import { LIVE_SCRIPT, LIVE_SCRIPT_PATH } from './live.js';
import { rolloutsFragment, rolloutsPage, type RollbackChoice } from './pages-rollouts.js';
import { send, viewer, type AreaRoutes } from './routes-kit.js';

/** Releases whose agent is older than the site's target: where a rollback may go. */
function rollbackChoices(c: CatalogData, target: string | null): RollbackChoice[] {
  if (!target || !isSemver(target)) return [];
  const out: RollbackChoice[] = [];
  for (const [key, r] of Object.entries(c.releases)) {
    const agent = r.artifacts.find((a) => a.kind === 'agent');
    if (agent && isSemver(agent.version) && compareSemver(agent.version, target) < 0)
      out.push({ release: key, agent: agent.version });
  }
  return out.sort((a, b) => compareSemver(b.agent, a.agent) || (a.release < b.release ? -1 : 1));
}

export const rolloutRoutes: AreaRoutes = (r, d, k) => {
  const liveSec = d.refreshSec ?? 5;

  r.get(LIVE_SCRIPT_PATH, (ctx) => {
    ctx.type = 'application/javascript; charset=utf-8';
    ctx.set('Cache-Control', 'no-cache');
    ctx.set('X-Content-Type-Options', 'nosniff');
    ctx.body = LIVE_SCRIPT;
  });

  r.get('/sites/:site/rollouts', async (ctx) => {
    const v = viewer(ctx);
    const site = ctx.params.site ?? '';
    const c = await d.catalog.read();
    const target = Object.hasOwn(c.sites, site) ? (c.sites[site]!.plan?.agent ?? null) : null;
    const rollouts = siteRollouts(d.store.state, c, site, Date.now());
    send(ctx, rolloutsPage(v, site, rollouts, { liveSec, choices: rollbackChoices(c, target), target }));
  });

  r.get('/sites/:site/rollouts/live', async (ctx) => {
    // 401, not the sign-in redirect: the page's script stops when the session is gone
    need(ctx, 'viewer');
    const site = ctx.params.site ?? '';
    const body = rolloutsFragment(siteRollouts(d.store.state, await d.catalog.read(), site, Date.now()));
    const text = body.toString();
    const etag = `"${createHash('sha256').update(text).digest('base64url').slice(0, 27)}"`;
    ctx.set('ETag', etag);
    ctx.set('Cache-Control', 'no-store');
    if (ctx.get('If-None-Match') === etag) {
      ctx.status = 304;
      return;
    }
    ctx.type = 'html';
    ctx.body = text;
  });

  r.post('/sites/:site/rollback', async (ctx) => {
    const { v, form } = await k.adminForm(ctx);
    const site = ctx.params.site ?? '';
    await rollbackSite(k.act(ctx, v), d.store.state, site, form.release, { signed: form.unsigned !== '1' });
    k.done(ctx, `/sites/${encodeURIComponent(site)}/rollouts`);
  });
};
