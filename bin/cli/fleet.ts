/**
 * The fleet part of `ferry mirror status`: asked of the serving mirror over its
 * control socket (the fleet view lives in that process), printed as text or
 * carried in --json. `--agents` lists one page of agents (`--page`, `--size`,
 * `--filter behind|failing|silent|doctor`).
 */
import { FerryError } from '../../core/errors.js';
import { callControl } from '../../mirror/control.js';
import type { FleetPage, FleetReport } from '../../mirror/fleet-store.js';
import { FLEET_FILTERS, type FleetAgentView } from '../../mirror/fleet.js';
import { int, str, type Io, type Parsed } from './common.js';

export const fleetStatusOptions = {
  agents: { type: 'boolean' },
  page: { type: 'string' },
  size: { type: 'string' },
  filter: { type: 'string' },
} as const;

export const fleetStatusUsage = `[--agents [--page N] [--size N] [--filter ${FLEET_FILTERS.filter((f) => f !== 'all').join('|')}]]`;

export type FleetStatus = (FleetReport & Partial<FleetPage>) | null;

/** The fleet as the serving mirror sees it; null when no mirror serves this data dir. */
export async function fleetStatus(dataDir: string, p: Parsed): Promise<FleetStatus> {
  const filter = str(p, 'filter', false);
  if (filter && !FLEET_FILTERS.includes(filter as never))
    throw new FerryError('USAGE', `--filter must be one of ${FLEET_FILTERS.join(', ')}`);
  const listing = p.values.agents === true || p.values.page !== undefined || filter !== '';
  const body = {
    ...(p.values.page !== undefined && { page: int(p, 'page') }),
    ...(p.values.size !== undefined && { size: int(p, 'size') }),
    ...(filter && { filter }),
  };
  const answer = listing
    ? await callControl(dataDir, 'POST', '/fleet', body)
    : await callControl(dataDir, 'GET', '/fleet');
  if (!answer) return null;
  if (!answer.ok) throw new FerryError('USAGE', answer.message ?? 'the mirror refused');
  const rest: Record<string, unknown> = { ...answer };
  delete rest.ok;
  return rest as unknown as FleetReport & Partial<FleetPage>;
}

function agentLine(a: FleetAgentView): string {
  const flags = [
    a.revoked && 'REVOKED',
    a.behind && `BEHIND→${a.wanted}`,
    a.failing && 'FAILING',
    a.silent && 'SILENT',
  ].filter(Boolean);
  const d = a.doctor;
  const doctor =
    d && (d.failCount > 0 || d.warnCount > 0)
      ? `  doctor fail ${d.failCount}${d.fail.length ? ` (${d.fail.join(',')})` : ''}` +
        ` warn ${d.warnCount}${d.warn.length ? ` (${d.warn.join(',')})` : ''} at ${d.at}`
      : '';
  const update = a.lastUpdate
    ? `  last update ${a.lastUpdate.outcome} ${a.lastUpdate.version}: ${a.lastUpdate.reason}`
    : '';
  return (
    `  ${a.id}  ${a.hostname}  ${a.version ?? '-'}  [${a.groups.join(',')}]  ` +
    `last contact ${a.lastContact ?? 'never'}  drift ${a.driftCount ?? 0}` +
    `${flags.length ? '  ' + flags.join(' ') : ''}${update}${doctor}`
  );
}

export function printFleet(io: Io, f: FleetStatus): void {
  if (!f) {
    io.out('fleet: mirror not serving (the running mirror keeps the fleet view)');
    return;
  }
  const s = f.summary;
  const versions = Object.entries(s.byVersion)
    .map(([v, n]) => `${v}: ${n}`)
    .join(', ');
  io.out(
    `fleet: ${s.agents} agent(s), ${s.behind} behind, ${s.failing} failing, ${s.silent} silent, ` +
      `${s.revoked} revoked, ${s.doctorFailing} with failing doctor checks${versions ? ` (${versions})` : ''}`,
  );
  for (const a of f.alerts) {
    io.out(`ALERT ${a.kind}: ${a.message}`);
    for (const x of a.agents) io.out(`  ${x.hostname} (${x.id}): ${x.reason}`);
  }
  const r = f.rollout;
  if (r) {
    io.out(
      `rollout ${r.rolloutId} of ${r.version} (${r.strategy}): ${r.state}, wave ${r.wave + 1}/${r.waves.length}`,
    );
    r.waves.forEach((w, i) => {
      const c = w.counts;
      io.out(
        `  wave ${i + 1} (${w.percent} %): ${c.agents} agent(s): pending ${c.pending}, updating ${c.updating}, ` +
          `committed ${c.committed}, failed ${c.failed}, rolled back ${c.rolledBack}, silent ${c.silent}`,
      );
    });
  }
  if (f.agents) {
    io.out(`agents (${f.filter}), page ${f.page} of ${f.pages}, ${f.total} in all:`);
    for (const a of f.agents) io.out(agentLine(a));
  }
}
