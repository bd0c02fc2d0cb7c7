/**
 * Helpers shared by the benches: the built CLI, a free loopback port, children that log to a file and
 * are all stopped on the way out, waiting for a server to answer, a process's CPU time, and the
 * plain-text tables they print.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Clock ticks per second, the unit of /proc/<pid>/stat's CPU times. */
const TICK = Number(spawnSync('getconf', ['CLK_TCK']).stdout?.toString()) || 100;

/** CPU seconds of a process (utime + stime), or of the waited-for children of this one. */
export function cpuSeconds(pid: number | 'self', waitedChildren = false): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // f[0] is field 3 of proc(5)
  const [u, s] = waitedChildren ? [f[13], f[14]] : [f[11], f[12]];
  return (Number(u) + Number(s)) / TICK;
}

/** Prints rows as left-aligned columns, the first row being the header. */
export function printTable(rows: string[][]): void {
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows)
    console.log(
      r
        .map((x, i) => x.padEnd(w[i]!))
        .join('  ')
        .trimEnd(),
    );
}

/** The built `ferry` entry point (dist/bin/ferry.js, next to dist/bench/). */
export const FERRY = resolve(dirname(fileURLToPath(import.meta.url)), '../bin/ferry.js');

/** Runs `ferry ARGS` to completion in `cwd`; throws with its output when it fails. */
export function ferry(args: string[], cwd?: string): string {
  const r = spawnSync(process.execPath, [FERRY, ...args], { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ferry ${args.join(' ')} failed: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

export const freePort = () =>
  new Promise<number>((ok, fail) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => ok(port));
    });
    s.on('error', fail);
  });

export const alive = (c: ChildProcess) => c.exitCode === null && c.signalCode === null;
/** The last 2,000 characters of a log, for an error message. */
export const tail = (log: string) => readFileSync(log, 'utf8').slice(-2000);

/** The children started here and not yet exited. */
export const children = new Set<ChildProcess>();

/** Starts `argv` with stdout and stderr appended to `log`. */
export function start(argv: string[], log: string, env: NodeJS.ProcessEnv = process.env): ChildProcess {
  const fd = openSync(log, 'a');
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', fd, fd], env });
  closeSync(fd);
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/** SIGTERM (the servers shut down gracefully on it), SIGKILL if still there after 5 s. */
export function stop(c: ChildProcess): Promise<void> {
  if (!alive(c)) return Promise.resolve();
  const timer = setTimeout(() => c.kill('SIGKILL'), 5000);
  const exited = new Promise<void>((ok) => c.once('exit', () => (clearTimeout(timer), ok())));
  c.kill('SIGTERM');
  return exited;
}

export const stopAll = () => Promise.all([...children].map(stop));

/** Waits up to 15 s until `url` answers `status` to `method`; fails early, with its log, if the child died. */
export async function ready(
  child: ChildProcess,
  url: string,
  log: string,
  { status = 200, method = 'GET' } = {},
): Promise<void> {
  for (let i = 0; i < 150 && alive(child); i++) {
    const r = await fetch(url, { method }).catch(() => undefined);
    if (r?.status === status) return;
    await new Promise((ok) => setTimeout(ok, 100));
  }
  throw new Error(`${child.spawnargs.join(' ')} did not serve ${url}:\n${tail(log)}`);
}
