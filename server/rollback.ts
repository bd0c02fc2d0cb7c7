/**
 * Roll a site back from the server: its next bundle carries an older release, in a form its agents
 * accept. An agent never moves below the highest version it committed unless a signed pin names the
 * version (agent/update/version-choice.ts), so the bundle pins every group the server has seen at
 * the site (and each agent that has no group) to the older agent version, and lowers any pin of the
 * site that names a newer one. The pins are kept in the site's record, shown on the sites page, and
 * stay until an operator removes them; the plan is `immediate` (pinned agents are outside the
 * rollout's waves anyway). The rollout's own approve, halt, resume and abort stay with the site's
 * mirror, which decides on its own evidence (docs/rollout.md). Audited as `rollback`.
 */
import { compareSemver, isSemver } from '../core/semver.js';
import type { PrivateKey } from '../platform/keyfile.js';
import { buildBundle, type Ctx } from './actions.js';
import { releaseOf, siteOf, type CatalogData } from './catalog.js';
import { ServerError } from './errors.js';
import type { ServerState } from './fleet-state.js';

const bad = (m: string) => new ServerError('BAD_INPUT', m);

export interface RollbackPlan {
  from: string;
  to: string;
  pins: Record<string, string>;
}

/** The pins a rollback of `site` to `release` sets, checked: refused unless the release's agent is older. */
export function rollbackPins(
  catalog: CatalogData,
  state: ServerState,
  site: unknown,
  release: unknown,
): RollbackPlan {
  if (typeof site !== 'string' || site === '') throw bad('site is required');
  if (typeof release !== 'string' || release === '') throw bad('the release to roll back to is required');
  const s = siteOf(catalog, site);
  const r = releaseOf(catalog, release);
  const agent = r.artifacts.find((a) => a.kind === 'agent');
  if (!agent) throw bad(`release ${release} carries no agent build: there is no version to roll back to`);
  const from = s.plan?.agent;
  if (!from) throw bad(`site ${site} has no rollout yet: there is nothing to roll back`);
  const to = agent.version;
  if (!isSemver(to) || !isSemver(from) || compareSemver(to, from) >= 0)
    throw bad(
      `release ${release} has agent ${to}, not older than the site's ${from}; build its bundle as usual`,
    );
  const pins: Record<string, string> = {};
  for (const [k, v] of Object.entries(s.pins)) if (!isSemver(v) || compareSemver(v, to) > 0) pins[k] = to;
  for (const a of Object.values(state.agents)) {
    if (a.site !== site) continue;
    if (a.groups.length === 0) pins[`agent:${a.id}`] = to;
    for (const g of a.groups) pins[`group:${g}`] = to;
  }
  if (Object.keys(pins).length === 0)
    throw bad(
      `no agent of site ${site} has reported to this server and the site has no pins: nothing would let its agents go back below the version they committed`,
    );
  return { from, to, pins };
}

/** Builds the site's rollback bundle (signed, or unsigned for the signing station); audited. */
export async function rollbackSite(
  c: Ctx,
  state: ServerState,
  site: unknown,
  release: unknown,
  o: { signed: boolean; key?: PrivateKey; out?: string; expires?: string },
) {
  const plan = rollbackPins(await c.catalog.read(), state, site, release);
  const built = await buildBundle(c, site, release, 'immediate', { ...o, setPins: plan.pins });
  await c.audit.append(c.actor, 'rollback', {
    site: site as string,
    from: plan.from,
    to: plan.to,
    release: release as string,
    bundle: built.record.id,
    pins: Object.keys(plan.pins).length,
  });
  return { ...built, rollback: plan };
}
