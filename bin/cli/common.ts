import { parseArgs, type ParseArgsConfig } from 'node:util';
import { useSodiumNative } from '../../core/ed25519.js';
import { FerryError, isCodedError } from '../../core/errors.js';
import { humanBytes } from '../../core/units.js';

export interface Io {
  out: (line: string) => void;
  err: (line: string) => void;
  isTTY: boolean;
}

export const stdio: Io = {
  out: (l) => process.stdout.write(l + '\n'),
  err: (l) => process.stderr.write(l + '\n'),
  isTTY: Boolean(process.stderr.isTTY),
};

export interface Command {
  summary: string;
  usage: string;
  options: NonNullable<ParseArgsConfig['options']>;
  positionals?: { min: number; max: number };
  /**
   * 'service': verifies heartbeats in bulk, so bin/ferry.ts selects sodium-native with its worker
   * (useServiceCrypto) instead of libsodium-wrappers, the operator commands' backend.
   */
  crypto?: 'service';
  run(args: Parsed, io: Io): Promise<number>;
}

export interface Parsed {
  values: Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
  json: boolean;
}

export const jsonOption = { json: { type: 'boolean' } } as const;
export const helpOption = { help: { type: 'boolean', short: 'h' } } as const;

export function str(p: Parsed, name: string, required = true): string {
  const v = p.values[name];
  if (typeof v === 'string' && v !== '') return v;
  if (required) throw new FerryError('USAGE', `--${name} is required`);
  return '';
}

export function list(p: Parsed, name: string, required = true): string[] {
  const v = p.values[name];
  const arr = Array.isArray(v) ? v : typeof v === 'string' ? [v] : [];
  if (required && arr.length === 0)
    throw new FerryError('USAGE', `--${name} is required (it may be given more than once)`);
  return arr;
}

export function int(p: Parsed, name: string, fallback?: number): number {
  const v = p.values[name];
  if (v === undefined && fallback !== undefined) return fallback;
  if (typeof v !== 'string' || !/^[1-9][0-9]{0,5}$/.test(v))
    throw new FerryError('USAGE', `--${name} must be a positive integer`);
  return Number(v);
}

const SIZE_UNITS: Record<string, number> = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };

/** `4G`, `700M`, `1048576` (binary units). */
export function parseSize(s: string, name: string): number {
  const m = /^([1-9][0-9]*)([KMGT]?)(?:i?B)?$/i.exec(s);
  if (!m) throw new FerryError('USAGE', `--${name} must be a size like 4G, 700M or a byte count`);
  return Number(m[1]) * SIZE_UNITS[m[2]!.toUpperCase()]!;
}

/**
 * Runs a command with the exit-code contract: 0 ok, 1 refusal/failure, 2 usage. `invocation` is how the
 * operator typed it (`ferry mirror serve`, `ferry-agent run`), for --help and usage errors.
 */
export async function runCommand(cmd: Command, invocation: string, argv: string[], io: Io): Promise<number> {
  const json = argv.includes('--json');
  let parsed: Parsed;
  try {
    const r = parseArgs({
      args: argv,
      options: { ...cmd.options, ...helpOption },
      allowPositionals: true,
      strict: true,
    });
    if (r.values.help) {
      io.out(`Usage: ${invocation} ${cmd.usage}\n\n${cmd.summary}`);
      return 0;
    }
    const pos = cmd.positionals ?? { min: 0, max: 0 };
    if (r.positionals.length < pos.min || r.positionals.length > pos.max) {
      throw new FerryError(
        'USAGE',
        r.positionals.length < pos.min ? 'missing argument' : `unexpected argument ${r.positionals.at(-1)}`,
      );
    }
    parsed = { values: r.values, positionals: r.positionals, json };
  } catch (e) {
    return fail(
      e instanceof FerryError ? e : new FerryError('USAGE', (e as Error).message),
      io,
      json,
      invocation,
      `${invocation} ${cmd.usage}`,
    );
  }
  try {
    return await cmd.run(parsed, io);
  } catch (e) {
    return fail(e, io, json, invocation);
  }
}

/** Any component's coded error, as the CLI reports it; anything else is an I/O failure. */
function coded(e: unknown): { code: string; message: string } {
  if (isCodedError(e)) return e;
  return new FerryError('IO_ERROR', (e as Error)?.message ?? String(e), { cause: e });
}

function fail(e: unknown, io: Io, json: boolean, invocation: string, usage?: string): number {
  const err = coded(e);
  if (json) io.out(JSON.stringify({ ok: false, code: err.code, message: err.message }));
  else {
    io.err(`${invocation.split(' ')[0]}: ${err.code}: ${err.message}`);
    if (err.code === 'USAGE' && usage) io.err(`usage: ${usage}\n(see --help)`);
  }
  if (!isCodedError(e) && process.env.FERRY_DEBUG) io.err(String((e as Error)?.stack));
  return err.code === 'USAGE' ? 2 : 1;
}

export function printJson(io: Io, value: unknown): void {
  io.out(JSON.stringify(value, null, 2));
}

export { humanBytes, humanSeconds } from '../../core/units.js';

/** A progress line: `update` as work is done, `end` once when it stops. */
export interface Progress {
  update(done: number, total: number): void;
  /** Ends the line: at 100 % when the work succeeded, where it stood when it failed. */
  end(ok: boolean): void;
}

const silentProgress: Progress = { update: () => undefined, end: () => undefined };

/**
 * A progress line on stderr when it is a TTY and the work is large (at least `minTotal` bytes);
 * silent otherwise. Whatever is printed after `end` starts on a line of its own.
 */
export function progressBar(
  io: Io,
  label: string,
  opts: { quiet?: boolean; minTotal?: number } = {},
): Progress {
  const minTotal = opts.minTotal ?? 64 * 1024 * 1024;
  if (!io.isTTY || opts.quiet) return silentProgress;
  let last = 0;
  let shown: { done: number; total: number } | undefined;
  let ended = false;
  const draw = (done: number, total: number) => {
    const pct = total ? Math.min(100, Math.floor((done / total) * 100)) : 100;
    const width = 30;
    const fill = Math.round((pct / 100) * width);
    process.stderr.write(
      `\r${label} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${pct}% ${humanBytes(done)}/${humanBytes(total)}`,
    );
    shown = { done, total };
  };
  return {
    update(done, total) {
      if (ended || total < minTotal) return;
      const now = Date.now();
      if (now - last < 100 && shown) return;
      last = now;
      draw(done, total);
    },
    end(ok) {
      if (ended) return;
      ended = true;
      if (!shown) return;
      if (ok) draw(shown.total, shown.total);
      process.stderr.write('\n');
    },
  };
}

/** Runs `work` with a progress line that is ended however the work ends. */
export async function withProgress<T>(progress: Progress, work: () => Promise<T>): Promise<T> {
  try {
    const r = await work();
    progress.end(true);
    return r;
  } catch (e) {
    progress.end(false);
    throw e;
  }
}

/** Joins a hard-wrapped text into one paragraph and wraps it at `width` columns after `indent`. */
export function wrapText(text: string, width: number, indent: string): string {
  const words = text.split(/\s+/).filter(Boolean);
  const lines: string[] = [];
  let line = '';
  for (const w of words) {
    if (line && indent.length + line.length + 1 + w.length > width) {
      lines.push(indent + line);
      line = w;
    } else line = line ? `${line} ${w}` : w;
  }
  if (line) lines.push(indent + line);
  return lines.join('\n');
}

/** `HOST:PORT` or `[V6]:PORT`, as --listen takes it: the server kit parses it. */
export { parseListen } from '../../platform/http/server.js';

/** A long-running command's life: until SIGTERM or SIGINT, then its graceful close. */
export function untilSignal(
  log: { info(event: string, fields: Record<string, unknown>): void },
  event: string,
  close: () => Promise<void>,
): Promise<void> {
  return new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info(event, { signal });
      void close().then(resolve);
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
}

/**
 * The services and bulk imports verify every heartbeat: they select sodium-native (core/ed25519.ts).
 * Where it cannot load, they go on with node:crypto and say so.
 */
export async function useServiceCrypto(warn: (event: string, fields: Record<string, unknown>) => void) {
  const r = await useSodiumNative({
    worker: true,
    onWorkerFailure: (e) => warn('crypto.worker_failed', { reason: e.message, now: 'inline' }),
  });
  if (!r.ok) warn('crypto.fallback', { backend: 'node', reason: r.reason });
}
