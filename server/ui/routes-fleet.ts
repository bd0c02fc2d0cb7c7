/**
 * The fleet's routes: the dashboard, the agents list with its bulk form, one agent's detail.
 */
import { HttpError } from '../../platform/http/server-errors.js';
import { bulk } from '../actions.js';
import { agentOf, coverageGaps, mirrorOf, parkedOf } from '../fleet-state.js';
import { queryAgents, siteHealth, type AgentFilter } from '../fleet-query.js';
import { agentPage, agentsPage, dashboardPage } from './pages-fleet.js';
import { pageNumber, q, send, viewer, type AreaRoutes } from './routes-kit.js';

export const fleetRoutes: AreaRoutes = (r, d, k) => {
  const { act, adminForm, done, size } = k;
  r.get('/', async (ctx) => {
    const v = viewer(ctx);
    const s = d.store.state;
    const catalog = await d.catalog.read();
    const health = siteHealth(s, catalog, Date.now());
    const alerts: string[] = [];
    for (const [site, list] of Object.entries(s.rollouts ?? {})) {
      const last = list.at(-1)?.rollout;
      if (last?.event === 'halted')
        alerts.push(
          `site ${site}: rollout to ${last.version} HALTED at wave ${last.wave + 1}: ${last.reason}`,
        );
    }
    for (const m of d.store.mirrors.list()) {
      const gaps = coverageGaps(s, m.id);
      if (gaps.length)
        alerts.push(
          `mirror ${m.id.slice(0, 12)} (site ${m.site}): telemetry gaps ${gaps
            .slice(0, 3)
            .map(([a, b]) => (a === b ? a : `${a}-${b}`))
            .join(', ')}`,
        );
      if (!mirrorOf(s, m.id))
        alerts.push(`mirror ${m.id.slice(0, 12)} (site ${m.site}): nothing received yet`);
    }
    for (const h of health) if (h.failing) alerts.push(`site ${h.site}: ${h.failing} agent(s) failing`);
    send(
      ctx,
      dashboardPage(v, health, alerts, {
        agents: Object.keys(s.agents).length,
        rejections: s.totals.rejections,
      }),
    );
  });

  r.get('/agents', async (ctx) => {
    const v = viewer(ctx);
    const catalog = await d.catalog.read();
    const f: AgentFilter = {};
    const site = q(ctx, 'site');
    const version = q(ctx, 'version');
    if (site) f.site = site;
    if (version) f.version = version;
    for (const k of ['behind', 'failing', 'silent'] as const) if (q(ctx, k) === '1') f[k] = true;
    const n = pageNumber(ctx);
    const page = queryAgents(d.store.state, catalog, f, (n - 1) * size, size, Date.now());
    const params = new URLSearchParams();
    for (const [k, x] of Object.entries(f)) params.set(k, x === true ? '1' : String(x));
    const sites = [
      ...new Set([...Object.keys(catalog.sites), ...d.store.mirrors.list().map((m) => m.site)]),
    ].sort();
    send(ctx, agentsPage(v, f, page, size, params.toString(), catalog, sites, Date.now()));
  });

  r.post('/agents/bulk', async (ctx) => {
    const { v, form } = await adminForm(ctx, ['agents']);
    const n = await bulk(act(ctx, v), d.store.state, form.action, form.agents, form.value);
    ctx.set('X-Ferry-Count', String(n));
    done(ctx, '/agents');
  });

  r.get('/agents/:id', (ctx) => {
    const v = viewer(ctx);
    const a = agentOf(d.store.state, ctx.params.id ?? '');
    if (!a) throw new HttpError(404, 'UNKNOWN_AGENT', 'no such agent');
    send(ctx, agentPage(v, a, parkedOf(d.store.state, a.id)?.length ?? 0));
  });
};
