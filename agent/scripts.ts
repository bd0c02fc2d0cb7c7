/**
 * Runs one script artifact under an interpreter the node's owner allows. The
 * interpreter is chosen by name from a local allowlist and resolved on a fixed
 * PATH (never from the script's shebang); the script is spawned without a
 * shell, in its own process group, with a minimal environment, a timeout that
 * kills the whole group, and capped output.
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { CodedError } from '../core/errors.js';

export const FIXED_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
export const DEFAULT_ALLOWLIST: readonly string[] = ['sh', 'bash'];
export const DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024;
export const DEFAULT_KILL_GRACE_MS = 5_000;

export type ScriptErrorCode =
  | 'INTERPRETER_NOT_ALLOWED'
  | 'INTERPRETER_NOT_FOUND'
  | 'SCRIPT_NOT_FOUND'
  | 'SCRIPT_OPTIONS_INVALID'
  | 'SCRIPT_SPAWN_FAILED';

/** A script that cannot be run as asked (not allowed, not found, bad options, spawn failed). */
export class ScriptError extends CodedError<ScriptErrorCode> {}

export interface RunScriptOptions {
  /** Absolute path of the (already verified) script blob. */
  path: string;
  /** Interpreter name, e.g. `sh`; must be on `allowlist`. */
  interpreter: string;
  args?: readonly string[];
  /** Seconds before the process group gets SIGTERM. */
  timeoutSec: number;
  /** Interpreter names the node's owner allows; default `sh`, `bash`. */
  allowlist?: readonly string[];
  /** Working directory; default `/`. */
  cwd?: string;
  /** Extra environment on top of the minimal one (PATH, LANG, HOME). */
  env?: Readonly<Record<string, string>>;
  /** Cap on each of stdout and stderr; default 1 MiB. */
  maxOutputBytes?: number;
  /** Time between SIGTERM and SIGKILL on timeout; default 5 s. */
  killGraceMs?: number;
}

export interface CapturedOutput {
  text: string;
  /** Bytes the script wrote, including those dropped past the cap. */
  bytes: number;
  truncated: boolean;
}

export interface ScriptResult {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  durationMs: number;
  stdout: CapturedOutput;
  stderr: CapturedOutput;
  timedOut: boolean;
}

const INTERPRETER_NAME = /^[A-Za-z0-9._-]{1,64}$/;

/** Finds `name` as an executable regular file on FIXED_PATH. */
export async function resolveInterpreter(name: string): Promise<string> {
  for (const dir of FIXED_PATH.split(':')) {
    const candidate = join(dir, name);
    try {
      const st = await stat(candidate);
      if (!st.isFile()) continue;
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here; try the next directory
    }
  }
  throw new ScriptError('INTERPRETER_NOT_FOUND', `interpreter ${name} is not on ${FIXED_PATH}`);
}

class Capture {
  private readonly chunks: Buffer[] = [];
  private kept = 0;
  bytes = 0;

  constructor(private readonly cap: number) {}

  push(chunk: Buffer): void {
    this.bytes += chunk.length;
    const room = this.cap - this.kept;
    if (room <= 0) return;
    const part = chunk.length <= room ? chunk : chunk.subarray(0, room);
    this.chunks.push(part);
    this.kept += part.length;
  }

  result(): CapturedOutput {
    return {
      text: Buffer.concat(this.chunks).toString('utf8'),
      bytes: this.bytes,
      truncated: this.bytes > this.kept,
    };
  }
}

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // ESRCH: the group is already gone
  }
}

/**
 * Runs the script. Refuses before executing anything when the interpreter is
 * not allowed or cannot be found. When the script's main process exits, any
 * processes it left in its group are killed, so nothing outlives the run.
 */
export async function runScript(opts: RunScriptOptions): Promise<ScriptResult> {
  const allowlist = opts.allowlist ?? DEFAULT_ALLOWLIST;
  if (!INTERPRETER_NAME.test(opts.interpreter) || !allowlist.includes(opts.interpreter)) {
    throw new ScriptError(
      'INTERPRETER_NOT_ALLOWED',
      `interpreter ${JSON.stringify(opts.interpreter)} is not on this node's allowlist (${allowlist.join(', ')})`,
    );
  }
  const maxOutputBytes = opts.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES;
  const killGraceMs = opts.killGraceMs ?? DEFAULT_KILL_GRACE_MS;
  if (!(opts.timeoutSec > 0) || !Number.isFinite(opts.timeoutSec))
    throw new ScriptError('SCRIPT_OPTIONS_INVALID', 'timeoutSec must be a positive number');
  if (!Number.isSafeInteger(maxOutputBytes) || maxOutputBytes < 0)
    throw new ScriptError('SCRIPT_OPTIONS_INVALID', 'maxOutputBytes must be a non-negative integer');
  if (!isAbsolute(opts.path))
    throw new ScriptError('SCRIPT_NOT_FOUND', `script path ${opts.path} is not absolute`);
  const interpreterPath = await resolveInterpreter(opts.interpreter);
  try {
    if (!(await stat(opts.path)).isFile()) throw new Error('not a regular file');
  } catch (e) {
    throw new ScriptError('SCRIPT_NOT_FOUND', `script ${opts.path}: ${(e as Error).message}`, { cause: e });
  }

  const env: Record<string, string> = { PATH: FIXED_PATH, LANG: 'C.UTF-8', HOME: '/', ...opts.env };
  const started = Date.now();
  const child = spawn(interpreterPath, [opts.path, ...(opts.args ?? [])], {
    cwd: opts.cwd ?? '/',
    env,
    shell: false,
    detached: true, // own process group, so a timeout can kill grandchildren too
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const out = new Capture(maxOutputBytes);
  const err = new Capture(maxOutputBytes);
  child.stdout.on('data', (c: Buffer) => out.push(c));
  child.stderr.on('data', (c: Buffer) => err.push(c));

  let timedOut = false;
  let killTimer: NodeJS.Timeout | undefined;
  const timer = setTimeout(() => {
    if (child.pid === undefined) return;
    timedOut = true;
    const pid = child.pid;
    killGroup(pid, 'SIGTERM');
    killTimer = setTimeout(() => killGroup(pid, 'SIGKILL'), killGraceMs);
  }, opts.timeoutSec * 1000);

  return await new Promise<ScriptResult>((resolve, reject) => {
    child.on('error', (e) => {
      clearTimeout(timer);
      if (killTimer) clearTimeout(killTimer);
      reject(
        new ScriptError('SCRIPT_SPAWN_FAILED', `cannot start ${interpreterPath}: ${e.message}`, { cause: e }),
      );
    });
    child.on('exit', () => {
      // The main process is gone: whatever it left behind in its group goes too,
      // which also closes the pipes those processes held open.
      if (child.pid !== undefined) killGroup(child.pid, 'SIGKILL');
    });
    child.on('close', (exitCode, signal) => {
      clearTimeout(timer);
      if (killTimer) clearTimeout(killTimer);
      resolve({
        exitCode,
        signal,
        durationMs: Date.now() - started,
        stdout: out.result(),
        stderr: err.result(),
        timedOut,
      });
    });
  });
}
