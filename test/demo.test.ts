/**
 * `npm run demo`, the README's first command, run as a newcomer runs it (the built
 * dist/bin/demo.js): every step goes through the real CLI and services, and any
 * step that ends other than it should makes the demo exit non-zero.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO, tempDir } from './helpers/fixtures.js';

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('ferry-demo-test-'));
});
afterAll(() => cleanup());

describe('the demo', () => {
  it('runs every step to the end on its embedded defaults', async () => {
    const work = join(dir, 'work');
    const child = spawn(process.execPath, [join(REPO, 'dist/bin/demo.js'), '--dir', work, '--exit'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const [code] = (await once(child, 'exit')) as [number | null];
    expect(code, out.slice(-4000)).toBe(0);
    expect(out).toMatch(/demo complete: every good bundle verified, every bad one was refused/);
    // the refusals it shows, each with its reason code
    const refusals = [
      'SIGNATURE_THRESHOLD',
      'BLOB_DIGEST_MISMATCH',
      'SITE_MISMATCH',
      'EXPORT_TAMPERED',
      'SERVER_KEY_MISMATCH',
      'TOKEN_MISSING', // an agent without an enrolment token
      'ARTIFACT_MISMATCH', // install.sh from a hostile mirror serving a tampered agent
    ];
    for (const c of refusals) expect(out).toContain(c); // (a step whose exit differs ends the demo with 1)
    expect(out).toMatch(/GET http:\/\/127\.0\.0\.1:\d+\/v1\/agents → \S+: \d+ heartbeat/);
    // then a token is made and used: the agent enrols, and the token is shown nowhere in the demo
    expect(out).toMatch(/\$ ferry mirror token create --data \S+ --ttl 1h --group web/);
    expect(out).toMatch(/"event":"agent\.enrolled"/);
    expect(out).toMatch(/[0-9a-f]{16} +exhausted +used 1\/1/);
    expect(out).not.toMatch(/ferry-enrol:plant-7:[0-9a-f]{16}:/);
    // a second mirror gets the release from the first, with no courier, and serves an agent
    expect(out).toMatch(/second mirror adopted sequence \d+ from peer http:\/\/127\.0\.0\.1:\d+/);
    // a staged rollout with real agent builds: they wait at the gate, a canary goes first, the rest follow
    expect(out).toMatch(/agent-builds\/2\.1\.0\/ferry-agent: ferry-agent 2\.1\.0, \d+ bytes/);
    expect(out).toMatch(
      /agent 2\.1\.0 +manual +AWAITING-APPROVAL[^\n]*\n[^\n]*\n +wave 2 closed +agents 3 +pending 3 /,
    );
    expect(out).toMatch(
      /\$ ferry mirror update-now --agent [0-9a-f]{32} [^\n]*\n +agent [0-9a-f]{32} may update/,
    );
    expect(out).toMatch(/wave 2 closed +agents 3 +pending 2 +updating 0 +committed 1 +failed 0/);
    expect(out).toMatch(/\$ ferry mirror rollout approve [^\n]*\n[^\n]*RUNNING/);
    expect(out).toMatch(
      /COMPLETED[^\n]*\n[^\n]*\n +wave 2 open +agents 3 +pending 0 +updating 0 +committed 3 +failed 0/,
    );
    expect(out).toMatch(/fleet: 3 agent\(s\), 0 behind, 0 failing[^\n]*\(2\.1\.0: 3\)/);
    expect(out.match(/ferry-agent --version +# current → versions\/2\.1\.0\n +2\.1\.0\n/g)).toHaveLength(3);
    expect(out).toMatch(/SIGTERM → agents and mirror stopped/);
    // the connected server: the site's next bundle verifies, and the UI's address is printed last
    expect(out).toMatch(/plant-7-2\.ferry: site plant-7 sequence 2, release fleet@1\.4\.2, staggered/);
    expect(out).toMatch(/server web UI: http:\/\/127\.0\.0\.1:\d+\/ +\(sign in as demo \/ [a-z0-9]{20}\)/);
    expect(out).toMatch(/mirror status page: http:\/\/127\.0\.0\.1:\d+\//);
    // nothing the demo started outlives it: no process still names its work dir
    const left: string[] = [];
    for (const pid of await readdir('/proc')) {
      if (!/^\d+$/.test(pid)) continue;
      const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
      if (cmd.includes(work)) left.push(`${pid}: ${cmd.replace(/\0/g, ' ')}`);
    }
    expect(left).toEqual([]);
  }, 480_000); // a loaded 2-core machine: the demo runs a server, peers, a node install and a rollout
});
