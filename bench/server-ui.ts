/**
 * Render time of the server's busiest pages with a large fleet in memory: the agents page (first
 * page, a filtered page, a deep page), the dashboard and one site's rollouts page (every agent of
 * the fleet scanned for the site's, each placed in its wave), at 10,000 and 100,000 agents, each against a
 * baseline run in the same process on the same state: `JSON.stringify` of every agent (what serving
 * the whole fleet as one JSON document costs). It prints a table and never fails on the figures.
 *
 *   node dist/bench/server-ui.js [--agents 10000,100000] [--runs 7] [--json]
 */
import { parseArgs } from 'node:util';
import type { CatalogData } from '../server/catalog.js';
import { emptyState, type AgentState, type ServerState } from '../server/fleet-state.js';
import { queryAgents, siteHealth } from '../server/fleet-query.js';
import { agentsPage, dashboardPage, rolloutsPage } from '../server/ui/pages.js';
import { siteRollouts } from '../server/rollout-view.js';
import type { Viewer } from '../server/ui/layout.js';

const { values } = parseArgs({
  options: {
    agents: { type: 'string', default: '10000,100000' },
    runs: { type: 'string', default: '7' },
    json: { type: 'boolean', default: false },
  },
});
const sizes = values.agents.split(',').map(Number);
const runs = Number(values.runs);
const PAGE = 50;
const viewer: Viewer = { user: 'admin', role: 'admin', csrf: 'x'.repeat(43) };

function fleet(n: number): { state: ServerState; catalog: CatalogData } {
  const state = emptyState();
  const catalog: CatalogData = { artifacts: {}, releases: {}, sites: {}, bundles: [] };
  const sites = Math.max(1, Math.round(n / 1000));
  for (let s = 0; s < sites; s++)
    catalog.sites[`site-${s}`] = {
      name: `site-${s}`,
      publisher: 'bench',
      sequence: 3,
      plan: { agent: '1.2.0', strategy: 'staggered', waves: [{ percent: 5 }, { percent: 100 }] },
      pins: {},
      updateNow: [],
      groups: {},
      createdAt: '2026-01-01T00:00:00Z',
    };
  catalog.bundles.push({
    id: 'site-0-3',
    site: 'site-0',
    release: 'fleet@1.2.0',
    sequence: 3,
    strategy: 'staggered',
    file: '/dev/null',
    bytes: 0,
    payloadSha256: 'ab'.repeat(32),
    signatures: 1,
    status: 'signed',
    builtAt: '2026-01-01T00:00:00Z',
    builtBy: 'bench',
    plan: catalog.sites['site-0']!.plan!,
    rolloutId: 'ef'.repeat(32),
  });
  const now = Date.now();
  for (let i = 0; i < n; i++) {
    const id = i.toString(16).padStart(32, '0');
    const a: AgentState = {
      id,
      site: `site-${i % sites}`,
      publicKey: 'ab'.repeat(32),
      hostname: `node-${i}`,
      platform: 'linux/amd64',
      groups: [i % 20 === 0 ? 'canary' : 'web'],
      enrolledBy: 'cd'.repeat(32),
      enrolledAt: '2026-01-01T00:00:00Z',
      counters: [[1, 100]],
      heartbeats: 100,
      latest: {
        counter: 100,
        sentAt: new Date(now - (i % 7 === 0 ? 7200_000 : 60_000)).toISOString(),
        version: i % 3 === 0 ? '1.1.0' : '1.2.0',
        manifestSequence: 3,
        disconnectedSec: 0,
        results: [{ name: 'check', ok: i % 50 !== 0 }],
        drift: [],
        resources: { rssBytes: 40_000_000, load1: 0.2 },
        receivedAt: new Date(now).toISOString(),
        via: 'cd'.repeat(32),
      },
    };
    state.agents[id] = a;
  }
  return { state, catalog };
}

function median(fn: () => unknown): { ms: number; bytes: number } {
  const times: number[] = [];
  let bytes = 0;
  for (let i = 0; i < runs; i++) {
    const t = process.hrtime.bigint();
    const out = fn();
    times.push(Number(process.hrtime.bigint() - t) / 1e6);
    bytes = typeof out === 'string' ? Buffer.byteLength(out) : 0;
  }
  times.sort((x, y) => x - y);
  return { ms: times[Math.floor(times.length / 2)]!, bytes };
}

const rows: { agents: number; page: string; ms: number; bytes: number; baselineMs: number; ratio: number }[] =
  [];
for (const n of sizes) {
  const { state, catalog } = fleet(n);
  const now = Date.now();
  const baseline = median(() => JSON.stringify(Object.values(state.agents))).ms;
  const agents = (f: Parameters<typeof queryAgents>[2], offset: number) => () =>
    agentsPage(
      viewer,
      f,
      queryAgents(state, catalog, f, offset, PAGE, now),
      PAGE,
      '',
      catalog,
      Object.keys(catalog.sites),
      now,
    );
  const cases: [string, () => string][] = [
    ['agents, page 1', agents({}, 0)],
    ['agents, site + behind filter', agents({ site: 'site-1', behind: true }, 0)],
    ['agents, last page', agents({}, n - PAGE)],
    ['agents, failing (fleet-wide)', agents({ failing: true }, 0)],
    [
      'dashboard',
      () => dashboardPage(viewer, siteHealth(state, catalog, now), [], { agents: n, rejections: 0 }),
    ],
    [
      'rollouts, one site',
      () =>
        rolloutsPage(viewer, 'site-0', siteRollouts(state, catalog, 'site-0', now), {
          liveSec: 5,
          choices: [],
          target: '1.2.0',
        }),
    ],
  ];
  for (const [page, fn] of cases) {
    const r = median(fn);
    rows.push({ agents: n, page, ms: r.ms, bytes: r.bytes, baselineMs: baseline, ratio: r.ms / baseline });
  }
}

if (values.json) console.log(JSON.stringify({ runs, pageSize: PAGE, rows }, null, 2));
else {
  console.log(`server UI render time, median of ${runs} (baseline: JSON.stringify of every agent)\n`);
  console.log('agents   page                            ms   KiB  baseline ms  ratio');
  for (const r of rows)
    console.log(
      `${String(r.agents).padStart(7)}  ${r.page.padEnd(30)} ${r.ms.toFixed(1).padStart(6)} ${(r.bytes / 1024).toFixed(0).padStart(5)} ${r.baselineMs.toFixed(1).padStart(12)} ${r.ratio.toFixed(2).padStart(6)}`,
    );
}
