/**
 * Real `ferry` child processes for end-to-end tests of the mirror: start
 * `ferry mirror serve` on a loopback port chosen by the kernel (the URL comes
 * from its `mirror.started` log line), read its JSON log lines as they arrive,
 * stop it with a signal, and run one-shot commands whose death by signal the
 * caller wants to see.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { FERRY_BIN } from './fixtures.js';

export type LogLine = Record<string, unknown> & { event: string };

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Every child started here, so a failing test cannot leave one running. */
const live = new Set<ChildProcess>();

/** SIGKILLs whatever children these helpers started that are still running (for afterEach). */
export async function killStrays(): Promise<void> {
  const waits: Promise<unknown>[] = [];
  for (const c of live) {
    if (c.exitCode === null && c.signalCode === null) {
      waits.push(new Promise((r) => c.once('exit', r)));
      c.kill('SIGKILL');
    }
  }
  live.clear();
  await Promise.all(waits);
}

export interface FerryChild {
  child: ChildProcess;
  exited: Promise<Exit>;
  stdout: () => string;
  stderr: () => string;
}

/** Starts `ferry ARGS...` without waiting for it. */
export function spawnFerry(args: string[], env: NodeJS.ProcessEnv = {}): FerryChild {
  const child = spawn(process.execPath, [FERRY_BIN, ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(child);
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<Exit>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => {
      live.delete(child);
      resolve({ code, signal });
    });
  });
  return { child, exited, stdout: () => out, stderr: () => err };
}

/** Runs `ferry ARGS...` to the end; reports how it ended, including death by signal. */
export async function runFerry(
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<Exit & { stdout: string; stderr: string }> {
  const c = spawnFerry(args, env);
  const exit = await c.exited;
  return { ...exit, stdout: c.stdout(), stderr: c.stderr() };
}

export interface MirrorProc extends LoggedProc {
  url: string;
  /** Sends `signal` without waiting. */
  signal(signal: NodeJS.Signals): void;
}

export interface MirrorProcOptions {
  data: string;
  trust?: string;
  site?: string;
  drop?: string;
  env?: NodeJS.ProcessEnv;
  /** `--open-enrolment`: agents enrol without a token. */
  openEnrolment?: boolean;
  /** `--relay-key` files: the mirrors whose batches this one relays. */
  relayKeys?: string[];
  /** More `serve` flags. */
  args?: string[];
}

export interface LoggedProc {
  pid: number;
  logs: LogLine[];
  /** Resolves with the first log line (past or future) that satisfies `pred`. */
  waitForLog(pred: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** Resolves with the first line satisfying `pred` logged after this call. */
  nextLog(pred: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  exited: Promise<Exit>;
  stop(signal?: NodeJS.Signals): Promise<Exit>;
  stderr(): string;
}

/** Parses a child's stderr into JSON log lines as they arrive (mirrors and agents alike). */
export function followLogs(c: FerryChild, what: string): LoggedProc {
  const logs: LogLine[] = [];
  const waiters = new Set<{ pred: (l: LogLine) => boolean; resolve: (l: LogLine) => void }>();
  let partial = '';
  c.child.stderr!.on('data', (d: Buffer) => {
    partial += d.toString();
    const lines = partial.split('\n');
    partial = lines.pop() ?? '';
    for (const text of lines) {
      let line: LogLine;
      try {
        line = JSON.parse(text) as LogLine;
      } catch {
        continue;
      }
      logs.push(line);
      for (const w of waiters)
        if (w.pred(line)) {
          waiters.delete(w);
          w.resolve(line);
        }
    }
  });
  const wait = (pred: (l: LogLine) => boolean, from: number, timeoutMs: number): Promise<LogLine> => {
    const seen = logs.slice(from).find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise<LogLine>((resolve, reject) => {
      const w = {
        pred,
        resolve: (l: LogLine) => {
          clearTimeout(timer);
          resolve(l);
        },
      };
      const timer = setTimeout(() => {
        waiters.delete(w);
        reject(new Error(`${what}: no matching log line within ${timeoutMs} ms; stderr:\n${c.stderr()}`));
      }, timeoutMs);
      waiters.add(w);
      void c.exited.then((exit) => {
        if (!waiters.delete(w)) return;
        clearTimeout(timer);
        reject(new Error(`${what} exited (${JSON.stringify(exit)}) first; stderr:\n${c.stderr()}`));
      });
    });
  };
  return {
    pid: c.child.pid!,
    logs,
    waitForLog: (pred, timeoutMs = 20_000) => wait(pred, 0, timeoutMs),
    nextLog: (pred, timeoutMs = 20_000) => wait(pred, logs.length, timeoutMs),
    exited: c.exited,
    stop: async (signal = 'SIGTERM') => {
      if (c.child.exitCode === null && c.child.signalCode === null) c.child.kill(signal);
      return c.exited;
    },
    stderr: c.stderr,
  };
}

/** Starts `ferry mirror serve --listen 127.0.0.1:0` and waits for its `mirror.started` line. */
export async function startMirrorProc(o: MirrorProcOptions): Promise<MirrorProc> {
  const args = ['mirror', 'serve', '--data', o.data, '--listen', '127.0.0.1:0'];
  if (o.trust) args.push('--trust', o.trust);
  if (o.site) args.push('--site', o.site);
  if (o.drop) args.push('--drop', o.drop);
  if (o.openEnrolment) args.push('--open-enrolment');
  for (const k of o.relayKeys ?? []) args.push('--relay-key', k);
  args.push(...(o.args ?? []));
  const c = spawnFerry(args, o.env);
  const p = followLogs(c, 'mirror');
  const started = await p.waitForLog((l) => l.event === 'mirror.started');
  const url = started.url;
  if (typeof url !== 'string') throw new Error(`mirror.started has no url: ${JSON.stringify(started)}`);
  return {
    ...p,
    url,
    signal: (signal) => {
      c.child.kill(signal);
    },
  };
}

export const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** SHA-256 of a file, streamed. */
export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Every path under `dir` (relative), files and directories. */
export async function listTree(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string, rel: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      out.push(r);
      if (e.isDirectory()) await walk(join(d, e.name), r);
    }
  };
  await walk(dir, '');
  return out.sort();
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
