/**
 * systemd/ferry-agent-prestart.sh on its own, run with sh exactly as the unit's
 * ExecStartPre= runs it: counts starts while an update is pending, switches
 * `current` back past the limit, does nothing otherwise.
 */
import { spawnSync } from 'node:child_process';
import { mkdir, readFile, readdir, readlink, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { REPO, tempDir } from './helpers/fixtures.js';

const SCRIPT = join(REPO, 'systemd', 'ferry-agent-prestart.sh');

let dir: { dir: string; cleanup: () => Promise<void> };
let state: string;
let install: string;

const prestart = (...args: string[]) => spawnSync('sh', [SCRIPT, ...args], { encoding: 'utf8' });
const boot = () => prestart(state, install);
const read = (name: string) => readFile(join(state, name), 'utf8').catch(() => undefined);
const current = () => readlink(join(install, 'current'));

beforeEach(async () => {
  dir = await tempDir('ferry-prestart-');
  state = join(dir.dir, 'state');
  install = join(dir.dir, 'opt-ferry');
  await mkdir(state);
  for (const v of ['1.0.0', '2.0.0']) {
    await mkdir(join(install, 'versions', v), { recursive: true });
    await writeFile(join(install, 'versions', v, 'ferry-agent'), '#!/bin/sh\n', { mode: 0o755 });
  }
  await symlink(join('versions', '2.0.0'), join(install, 'current'));
});

afterEach(() => dir.cleanup());

async function pending(max?: number, previous = join(install, 'versions', '1.0.0')): Promise<void> {
  await writeFile(join(state, 'pending.json'), '{"version":"2.0.0","previous":"1.0.0"}\n');
  await writeFile(join(state, 'pending.previous'), `${previous}\n`);
  if (max !== undefined) await writeFile(join(state, 'pending.max'), `${max}\n`);
}

describe('ferry-agent-prestart.sh', () => {
  it('does nothing when no update is pending', async () => {
    const before = await readdir(state);
    expect(boot()).toMatchObject({ status: 0, stdout: '', stderr: '' });
    expect(await readdir(state)).toEqual(before);
    expect(await current()).toBe(join('versions', '2.0.0'));
  });

  it('counts each start and rolls back atomically once the count exceeds pending.max', async () => {
    await pending(2);
    for (const n of [1, 2]) {
      expect(boot().status).toBe(0);
      expect(await read('pending.attempts')).toBe(`${n}\n`);
      expect(await current()).toBe(join('versions', '2.0.0'));
      expect(await read('pending.rolledback')).toBeUndefined();
    }
    const third = boot();
    expect(third.status).toBe(0);
    expect(third.stderr).toContain('rolled back');
    expect(await read('pending.attempts')).toBe('3\n');
    expect(await current()).toBe(join(install, 'versions', '1.0.0'));
    expect(await read('pending.rolledback')).toMatch(/^started 3 times without a commit \(max 2\)/);
    expect((await readdir(install)).sort()).toEqual(['current', 'versions']); // no current.tmp left
    expect((await readdir(state)).filter((n) => n.endsWith('.tmp'))).toEqual([]);
    // rolled back once: later starts change nothing until the agent cleans up
    expect(boot().status).toBe(0);
    expect(await read('pending.attempts')).toBe('3\n');
    expect(await current()).toBe(join(install, 'versions', '1.0.0'));
  });

  it('defaults to 3 attempts, and treats a garbled count as 0', async () => {
    await pending();
    await writeFile(join(state, 'pending.attempts'), 'garbage\n');
    for (let i = 0; i < 3; i++) boot();
    expect(await read('pending.attempts')).toBe('3\n');
    expect(await current()).toBe(join('versions', '2.0.0'));
    boot();
    expect(await current()).toBe(join(install, 'versions', '1.0.0'));
  });

  it('never points current at a previous version that is not installed', async () => {
    await pending(0, join(install, 'versions', '0.9.0'));
    const r = boot();
    expect(r.status).toBe(0);
    expect(r.stderr).toContain('no previous version');
    expect(await current()).toBe(join('versions', '2.0.0'));
    expect(await read('pending.rolledback')).toBeUndefined();
  });

  it('needs both paths', () => {
    expect(prestart().status).not.toBe(0);
    expect(prestart(state).status).not.toBe(0);
  });
});
