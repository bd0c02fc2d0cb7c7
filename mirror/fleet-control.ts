/**
 * The fleet on the running mirror's control socket (mirror/control.ts), for
 * `ferry mirror status`: GET /fleet answers the summary, the alerts and the
 * rollout; POST /fleet {page, size, filter} one page of agents as well. The
 * socket is the operator's (mode 0600), so it shows detail whatever the
 * HTTP fleet-view setting.
 */
import { FerryError } from '../core/errors.js';
import type { ControlHandler } from './control.js';
import type { FleetQuery, FleetService } from './fleet-store.js';
import { FLEET_FILTERS, type FleetFilter } from './fleet.js';
import { MAX_PAGE_SIZE } from './fleet-store.js';
import { StateView } from './snapshot.js';
import type { Store } from './store.js';

function query(b: Record<string, unknown>): FleetQuery {
  const n = (k: 'page' | 'size', max: number) => {
    const v = b[k];
    if (v === undefined) return undefined;
    if (!Number.isSafeInteger(v) || (v as number) < 1 || (v as number) > max)
      throw new FerryError('USAGE', `${k} must be a whole number from 1 to ${max}`);
    return v as number;
  };
  const filter = b.filter;
  if (filter !== undefined && !FLEET_FILTERS.includes(filter as FleetFilter))
    throw new FerryError('USAGE', `filter must be one of ${FLEET_FILTERS.join(', ')}`);
  const page = n('page', 1_000_000);
  const size = n('size', MAX_PAGE_SIZE);
  return {
    ...(page !== undefined && { page }),
    ...(size !== undefined && { size }),
    ...(filter !== undefined && { filter: filter as FleetFilter }),
  };
}

export function fleetControl(fleet: FleetService, store: Store): Record<string, ControlHandler> {
  const view = new StateView(store);
  const manifest = async () => {
    const { active } = await view.current();
    return [active?.manifest ?? null, active?.etag ?? ''] as const;
  };
  return {
    'GET /fleet': async () => {
      const [m, tag] = await manifest();
      return { ...fleet.report(m, tag) };
    },
    'POST /fleet': async (b) => {
      const q = query(b);
      const [m, tag] = await manifest();
      return { ...fleet.page(m, tag, q) };
    },
  };
}
