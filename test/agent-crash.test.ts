/**
 * The agent under kill -9 at random moments of its cycles (poll, fetch, script,
 * state writes, outbox): every restart finds a state that parses and agrees with
 * itself, and the mirror ends up with each heartbeat counter at most once.
 * Also: settings from --config, and the metrics textfile.
 */
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildBundle } from './helpers/fixtures.js';
import { useWorld } from './helpers/world.js';
import {
  agentStatus,
  eventually,
  importInto,
  readTelemetry,
  startAgent,
  OPEN_ENROLMENT,
  startMirrorAt,
} from './helpers/agent-proc.js';

const w = useWorld();

async function site(name: string) {
  const dir = join(w.dir, name);
  await mkdir(join(dir, 'etc'), { recursive: true });
  const marker = join(dir, 'marker');
  const policy = {
    type: 'ferry.policy/v1',
    scripts: [{ script: 'tick', groups: ['*'], schedule: 'once', args: [marker] }],
    files: [{ path: join(dir, 'etc/app.conf'), artifact: 'app-conf', mode: '0644', enforce: true }],
  };
  const b = await buildBundle(w, join(dir, 'b.ferry'), {
    artifacts: [
      { name: 'tick', kind: 'script', content: '#!/bin/sh\necho ran >> "$1"\n' },
      { name: 'app-conf', kind: 'file', content: Buffer.alloc(2 * 1024 * 1024, 0x61) },
      { name: 'baseline', kind: 'policy', content: JSON.stringify(policy) },
    ],
  });
  const data = join(dir, 'mirror');
  await importInto(data, b.volumes[0]!.path, w.rootPath);
  return { dir, data, marker, state: join(dir, 'agent') };
}

describe('ferry agent under kill -9', () => {
  it('restarts into a consistent state every time and never sends one counter twice', async () => {
    const s = await site('crash');
    const mirror = await startMirrorAt(s.data, 0, OPEN_ENROLMENT);
    const args = [
      '--state',
      s.state,
      '--mirror',
      mirror.url,
      '--trust',
      w.rootPath,
      '--site',
      'plant-7',
      '--interval',
      '1',
    ];
    for (let i = 0; i < 8; i++) {
      const agent = startAgent(args);
      // A kill before the very first state write leaves nothing to check (a loaded
      // CI machine can take longer than the shortest delay to start node).
      if (i === 0)
        await eventually('the first state.json', () =>
          stat(join(s.state, 'state.json')).catch(() => undefined),
        );
      await new Promise((r) => setTimeout(r, 150 + Math.random() * 1200));
      await agent.stop('SIGKILL');
      const st = await agentStatus(s.state); // parses and validates state.json
      expect(st.site).toBe('plant-7');
    }
    const agent = startAgent(args);
    await agent.waitForLog(
      (l) => l.event === 'agent.cycle' && l.sync !== 'unreachable' && l.outbox === 0,
      20_000,
    );
    const st = await eventually('an active manifest', async () => {
      const v = await agentStatus(s.state);
      return v.active ? v : undefined;
    });
    expect(st.active?.sequence).toBe(1);
    await agent.stop('SIGTERM');
    await mirror.stop('SIGTERM');
    const counters = (await readTelemetry(s.data)).map((h) => h.counter);
    expect(counters.length).toBeGreaterThan(0);
    expect(new Set(counters).size).toBe(counters.length); // never a counter twice
    expect([...counters].sort((a, b) => a - b)).toEqual(counters); // in order
  });

  it('reads its settings from --config, and command-line flags win', async () => {
    const s = await site('config');
    const mirror = await startMirrorAt(s.data, 0, OPEN_ENROLMENT);
    const config = join(s.dir, 'agent.json');
    const metricsFile = join(s.dir, 'ferry.prom');
    const settings = {
      metricsFile,
      state: s.state,
      mirrors: [mirror.url],
      trust: w.rootPath,
      site: 'plant-7',
      groups: ['web'],
      interval: 60,
    };
    await writeFile(config, JSON.stringify(settings));
    const agent = startAgent(['--config', config, '--group', 'db']);
    await agent.waitForLog((l) => l.event === 'agent.cycle' && l.sync === 'updated', 20_000);
    const st = await agentStatus(s.state);
    expect(st).toMatchObject({ site: 'plant-7', active: { sequence: 1 } });
    expect(st.groups).toEqual(['db']);
    // the node-exporter textfile, written atomically each cycle
    const prom = await readFile(metricsFile, 'utf8');
    expect(prom).toMatch(/^ferry_agent_active_sequence 1$/m);
    expect(prom).toMatch(/^ferry_agent_polls_total\{outcome="updated"\} 1$/m);
    expect(prom).toMatch(/^ferry_agent_scripts_total\{result="ok"\} 1$/m);
    expect(prom).toMatch(/^ferry_agent_bytes_fetched_total \d{7,}$/m); // the 2 MiB managed file and the rest
    await agent.stop('SIGTERM');
    await writeFile(config, JSON.stringify({ ...settings, colour: 'blue' }));
    const bad = startAgent(['--config', config]);
    const exit = await bad.exited;
    expect(exit.code).toBe(2);
    expect(bad.stderr()).toMatch(/unknown key "colour"/);
    await mirror.stop('SIGTERM');
  });
});
