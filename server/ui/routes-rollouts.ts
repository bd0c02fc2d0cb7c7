/**
 * A site's rollouts page.
 */
import { rolloutsOf } from '../fleet-query.js';
import { rolloutsPage } from './pages-rollouts.js';
import { send, viewer, type AreaRoutes } from './routes-kit.js';

export const rolloutRoutes: AreaRoutes = (r, d) => {
  r.get('/sites/:site/rollouts', (ctx) => {
    const v = viewer(ctx);
    const site = ctx.params.site ?? '';
    send(ctx, rolloutsPage(v, site, rolloutsOf(d.store.state, site), d.refreshSec ?? 5));
  });
};
