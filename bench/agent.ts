/**
 * Idle agent budget: a real `ferry agent run` against a real mirror, polling
 * every --interval seconds, sampled for --minutes: RSS (VmRSS, VmHWM) and CPU
 * (utime + stime from /proc) averaged over the run. Prints figures and, for
 * comparison in the same run, the RSS of a bare Node process and of a bare
 * node:http client. Never fails on absolute figures.
 *
 *   node dist/bench/agent.js [--minutes 5] [--interval 30] [--node-flags "--lite-mode --no-expose-wasm"] [--json]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { cpuSeconds, ferry, FERRY } from './proc.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function procStatus(pid: number): { rssKiB: number; hwmKiB: number; cpuSec: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(status)?.[1] ?? NaN);
  return { rssKiB: kib('VmRSS'), hwmKiB: kib('VmHWM'), cpuSec: cpuSeconds(pid) };
}

async function bareRss(code: string): Promise<number> {
  const c = spawn(process.execPath, ['-e', `${code};setTimeout(()=>{},60000)`]);
  await sleep(1500);
  const rss = procStatus(c.pid!).rssKiB;
  c.kill();
  return rss / 1024;
}

async function waitForPid(file: string): Promise<number> {
  for (let i = 0; i < 100; i++) {
    try {
      return Number(readFileSync(file, 'utf8').trim());
    } catch {
      await sleep(100);
    }
  }
  throw new Error('agent did not start');
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      minutes: { type: 'string', default: '5' },
      interval: { type: 'string', default: '30' },
      'node-flags': { type: 'string', default: '--lite-mode --no-expose-wasm' },
      json: { type: 'boolean', default: false },
    },
  });
  const minutes = Number(values.minutes);
  const work = mkdtempSync(join(tmpdir(), 'ferry-bench-agent-'));
  const children: ChildProcess[] = [];
  try {
    // a site: keys, root, a bundle with a policy and a script every 15 m, a mirror serving it
    ferry(['keys', 'generate', '--out', 'keys', '--name', 'root'], work);
    ferry(['keys', 'generate', '--out', 'keys', '--name', 'rel'], work);
    ferry(
      ['trust', 'init', '--root-key', 'keys/root.key', '--bundle-key', 'keys/rel.pub', '--out', 'root.json'],
      work,
    );
    mkdirSync(join(work, 'art'));
    writeFileSync(join(work, 'art/tick.sh'), 'true\n');
    const policy = {
      type: 'ferry.policy/v1',
      scripts: [{ script: 'tick', groups: ['*'], schedule: 'every 15m' }],
    };
    writeFileSync(join(work, 'art/policy.json'), JSON.stringify(policy));
    const spec = {
      publisher: 'bench',
      sequence: 1,
      expires: '30d',
      sites: ['site'],
      artifacts: [
        { name: 'tick', kind: 'script', version: '1', path: 'art/tick.sh' },
        { name: 'baseline', kind: 'policy', version: '1', path: 'art/policy.json' },
      ],
    };
    writeFileSync(join(work, 'spec.json'), JSON.stringify(spec));
    ferry(['bundle', 'create', '--spec', 'spec.json', '--key', 'keys/rel.key', '--out', 'b.ferry'], work);
    ferry(['mirror', 'import', 'b.ferry', '--data', 'm', '--trust', 'root.json', '--site', 'site'], work);
    const port = 20000 + Math.floor(Math.random() * 20000);
    const mirror = spawn(
      process.execPath,
      // the bench measures the agent, not enrolment: agents enrol without a token
      [FERRY, 'mirror', 'serve', '--data', 'm', '--listen', `127.0.0.1:${port}`, '--open-enrolment'],
      {
        cwd: work,
        stdio: 'ignore',
      },
    );
    children.push(mirror);
    await sleep(1500);
    const flags = values['node-flags'].split(' ').filter(Boolean);
    const agentArgs = ['agent', 'run', '--state', 'a', '--mirror', `http://127.0.0.1:${port}`];
    agentArgs.push('--trust', 'root.json', '--site', 'site', '--interval', values.interval);
    const agent = spawn(process.execPath, [...flags, FERRY, ...agentArgs], { cwd: work, stdio: 'ignore' });
    children.push(agent);
    const pid = await waitForPid(join(work, 'a/agent.pid'));
    await sleep(5000); // first cycle: enrol, fetch, run
    const start = procStatus(pid);
    const t0 = Date.now();
    const rss: number[] = [];
    while (Date.now() - t0 < minutes * 60_000) {
      await sleep(5000);
      rss.push(procStatus(pid).rssKiB / 1024);
      if (!values.json) process.stderr.write(`\r${((Date.now() - t0) / 60_000).toFixed(1)} / ${minutes} min`);
    }
    const end = procStatus(pid);
    const wall = (Date.now() - t0) / 1000;
    const result = {
      minutes,
      pollIntervalSec: Number(values.interval),
      nodeFlags: flags,
      rssMiB: { last: end.rssKiB / 1024, max: Math.max(...rss), peakHwm: end.hwmKiB / 1024 },
      cpuPercentOfOneCore: ((end.cpuSec - start.cpuSec) / wall) * 100,
      floors: {
        bareNodeMiB: await bareRss('0'),
        nodeHttpMiB: await bareRss("require('http');require('crypto')"),
      },
      targets: { rssMiB: 50, cpuPercent: 1 },
    };
    if (values.json) console.log(JSON.stringify(result, null, 2));
    else {
      console.log(
        `\nidle agent over ${minutes} min, polling every ${values.interval} s, node ${flags.join(' ') || '(no flags)'}:`,
      );
      console.log(
        `  RSS last ${result.rssMiB.last.toFixed(1)} MiB, max sampled ${result.rssMiB.max.toFixed(1)} MiB, VmHWM ${result.rssMiB.peakHwm.toFixed(1)} MiB (target < 50)`,
      );
      console.log(`  CPU ${result.cpuPercentOfOneCore.toFixed(3)} % of one core (target < 1 %)`);
      console.log(
        `  same run, floors: bare node ${result.floors.bareNodeMiB.toFixed(1)} MiB, node with http+crypto ${result.floors.nodeHttpMiB.toFixed(1)} MiB`,
      );
    }
  } finally {
    for (const c of children) c.kill('SIGTERM');
    await sleep(500);
    rmSync(work, { recursive: true, force: true });
  }
}

await main();
