/**
 * runScript against real interpreters and real processes: output, exit codes,
 * timeouts that take the whole process group down, output caps, and an
 * interpreter refusal that provably runs nothing.
 */
import { access, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ScriptError, runScript } from '../agent/scripts.js';

let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ferry-scripts-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function script(name: string, body: string): Promise<string> {
  const p = join(dir, name);
  await writeFile(p, body, { mode: 0o644 }); // not executable: the interpreter runs it
  return p;
}

/**
 * Running = exists and is not a zombie. Orphans are reparented to PID 1, which
 * in some sandboxes never reaps them, so a dead process can linger as `Z`.
 */
async function alive(pid: number): Promise<boolean> {
  for (let i = 0; i < 20; i++) {
    let stat: string;
    try {
      stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    } catch {
      return false;
    }
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    if (state === 'Z' || state === 'X') return false;
    await new Promise((r) => setTimeout(r, 50)); // a SIGKILL may still be landing
  }
  return true;
}

async function exists(p: string): Promise<boolean> {
  return access(p).then(
    () => true,
    () => false,
  );
}

describe('runScript', () => {
  it('captures output and the exit code, passes args, uses a minimal environment', async () => {
    const p = await script(
      'print.sh',
      'echo "hello $1 $2"; echo "oops" >&2; echo "PATH=$PATH"; echo "SECRET=${FERRY_TEST_SECRET:-unset}"; pwd; exit 3\n',
    );
    process.env.FERRY_TEST_SECRET = 'leaked';
    try {
      const r = await runScript({
        path: p,
        interpreter: 'sh',
        args: ['a b', '$HOME'],
        timeoutSec: 10,
        cwd: dir,
      });
      expect(r.exitCode).toBe(3);
      expect(r.signal).toBeNull();
      expect(r.timedOut).toBe(false);
      expect(r.stdout.text).toBe(
        `hello a b $HOME\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nSECRET=unset\n${dir}\n`,
      );
      expect(r.stdout.truncated).toBe(false);
      expect(r.stderr.text).toBe('oops\n');
      expect(r.durationMs).toBeGreaterThanOrEqual(0);
    } finally {
      delete process.env.FERRY_TEST_SECRET;
    }
  });

  it('ignores the shebang: the interpreter is the one named', async () => {
    const marker = join(dir, 'shebang-marker');
    const p = await script('shebang.sh', `#!/usr/bin/env python3\necho ran-by-sh > ${marker}\n`);
    const r = await runScript({ path: p, interpreter: 'sh', timeoutSec: 10 });
    expect(r.exitCode).toBe(0);
    expect(await readFile(marker, 'utf8')).toBe('ran-by-sh\n');
  });

  it('kills the process group on timeout: the child and its grandchild are gone', async () => {
    const pids = join(dir, 'slow.pids');
    const p = await script('slow.sh', `sleep 60 &\necho "$$ $!" > ${pids}\necho started\nwait\n`);
    const t0 = Date.now();
    const r = await runScript({ path: p, interpreter: 'sh', timeoutSec: 1, killGraceMs: 500 });
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(r.timedOut).toBe(true);
    expect(r.exitCode).toBeNull();
    expect(r.signal).toBe('SIGTERM');
    expect(r.stdout.text).toBe('started\n');
    const [child, grandchild] = (await readFile(pids, 'utf8')).trim().split(' ').map(Number);
    expect(await alive(child!)).toBe(false);
    expect(await alive(grandchild!)).toBe(false);
  });

  it('escalates to SIGKILL when the script ignores SIGTERM', async () => {
    const pids = join(dir, 'stubborn.pids');
    const p = await script('stubborn.sh', `trap '' TERM\nsleep 60 &\necho "$$ $!" > ${pids}\nwait\nwait\n`);
    const r = await runScript({ path: p, interpreter: 'sh', timeoutSec: 1, killGraceMs: 300 });
    expect(r.timedOut).toBe(true);
    expect(r.signal).toBe('SIGKILL');
    const [child, grandchild] = (await readFile(pids, 'utf8')).trim().split(' ').map(Number);
    expect(await alive(child!)).toBe(false);
    expect(await alive(grandchild!)).toBe(false);
  });

  it('does not leave background processes behind after a normal exit', async () => {
    const pids = join(dir, 'bg.pids');
    const p = await script('bg.sh', `sleep 60 &\necho "$!" > ${pids}\nexit 0\n`);
    const r = await runScript({ path: p, interpreter: 'sh', timeoutSec: 30 });
    expect(r.exitCode).toBe(0);
    expect(r.timedOut).toBe(false);
    expect(r.durationMs).toBeLessThan(10_000);
    const bg = Number((await readFile(pids, 'utf8')).trim());
    expect(await alive(bg)).toBe(false);
  });

  it('caps each stream and says so', async () => {
    const p = await script(
      'loud.sh',
      'i=0; while [ $i -lt 2000 ]; do echo 0123456789012345678901234567890123456789; i=$((i+1)); done\necho err >&2\n',
    );
    const r = await runScript({ path: p, interpreter: 'bash', timeoutSec: 30, maxOutputBytes: 1000 });
    expect(r.exitCode).toBe(0);
    expect(r.stdout.truncated).toBe(true);
    expect(Buffer.byteLength(r.stdout.text)).toBe(1000);
    expect(r.stdout.bytes).toBe(2000 * 41);
    expect(r.stderr).toEqual({ text: 'err\n', bytes: 4, truncated: false });
  });

  it('refuses an interpreter not on the allowlist, and nothing runs', async () => {
    const marker = join(dir, 'refused-marker');
    const p = await script('refused.sh', `echo ran > ${marker}\n`);
    const attempts: Array<[string, readonly string[] | undefined]> = [
      ['python3', undefined],
      ['perl', undefined],
      ['sh', ['bash']],
      ['/bin/sh', ['/bin/sh', 'sh']],
      ['../sh', ['../sh']],
      ['', undefined],
    ];
    for (const [interpreter, allowlist] of attempts) {
      const e = await runScript({ path: p, interpreter, allowlist, timeoutSec: 5 }).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(ScriptError);
      expect((e as ScriptError).code).toBe('INTERPRETER_NOT_ALLOWED');
    }
    expect(await exists(marker)).toBe(false);
  });

  it('refuses an allowed interpreter that is not on the fixed PATH, and a missing script', async () => {
    const marker = join(dir, 'notfound-marker');
    const p = await script('notfound.sh', `echo ran > ${marker}\n`);
    await expect(
      runScript({ path: p, interpreter: 'no-such-shell', allowlist: ['no-such-shell'], timeoutSec: 5 }),
    ).rejects.toMatchObject({ code: 'INTERPRETER_NOT_FOUND' });
    await expect(
      runScript({ path: join(dir, 'absent.sh'), interpreter: 'sh', timeoutSec: 5 }),
    ).rejects.toMatchObject({ code: 'SCRIPT_NOT_FOUND' });
    expect(await exists(marker)).toBe(false);
  });
});
