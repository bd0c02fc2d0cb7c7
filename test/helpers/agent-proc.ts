/**
 * Real `ferry agent` and `ferry mirror serve` children for end-to-end tests of
 * the agent: follow a child's JSON log lines, start a mirror on a chosen port
 * (so a killed mirror can come back where its agents look for it), run the
 * one-shot agent commands, and read what reached a mirror's telemetry log.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { spawnFerry, runFerry, sleep, type Exit, type FerryChild, type LogLine } from './mirror-proc.js';

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

/** Parses a child's stderr into JSON log lines as they arrive. */
function follow(c: FerryChild, what: string): LoggedProc {
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

export interface MirrorAt extends LoggedProc {
  url: string;
  port: number;
}

/** `ferry mirror serve` on 127.0.0.1:`port` (0: the kernel chooses) over an imported data dir. */
export async function startMirrorAt(data: string, port = 0): Promise<MirrorAt> {
  const p = follow(
    spawnFerry(['mirror', 'serve', '--data', data, '--listen', `127.0.0.1:${port}`]),
    'mirror',
  );
  const started = await p.waitForLog((l) => l.event === 'mirror.started');
  if (typeof started.url !== 'string')
    throw new Error(`mirror.started has no url: ${JSON.stringify(started)}`);
  return { ...p, url: started.url, port: Number(new URL(started.url).port) };
}

/** `ferry mirror import FILE --data DIR --trust ROOT --site plant-7`, which must succeed. */
export async function importInto(data: string, file: string, rootPath: string): Promise<void> {
  const r = await runFerry([
    'mirror',
    'import',
    file,
    '--data',
    data,
    '--trust',
    rootPath,
    '--site',
    'plant-7',
  ]);
  if (r.code !== 0) throw new Error(`mirror import ${file} failed: ${r.stdout}${r.stderr}`);
}

/** `ferry agent run ARGS...`, logs followed. */
export function startAgent(args: string[]): LoggedProc {
  return follow(spawnFerry(['agent', 'run', ...args]), 'agent');
}

export interface AgentStatusView {
  ok: boolean;
  agentId: string | null;
  site: string;
  groups: string[];
  active: { publisher: string; sequence: number } | null;
  lastContactAt: string | null;
  disconnectedSec: number;
  outbox: number;
  scripts: Record<string, { digest: string; lastRunAt: number; lastExit: number | null }>;
}

/** `ferry agent status --state DIR --json`. */
export async function agentStatus(stateDir: string): Promise<AgentStatusView> {
  const r = await runFerry(['agent', 'status', '--state', stateDir, '--json']);
  if (r.code !== 0) throw new Error(`agent status failed (${r.code}): ${r.stdout}${r.stderr}`);
  return JSON.parse(r.stdout) as AgentStatusView;
}

/** Polls `check` every `everyMs` until it returns a value, or fails after `timeoutMs`. */
export async function eventually<T>(
  what: string,
  check: () => Promise<T | undefined>,
  timeoutMs = 20_000,
  everyMs = 250,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}

export interface TelemetryHeartbeat {
  agentId: string;
  counter: number;
  payload: {
    agentId: string;
    counter: number;
    manifestSequence: number | null;
    results: { script: string; exitCode: number | null; refused?: { code: string; message: string } }[];
    drift: { path: string; artifact: string; status: string; action: string }[];
    disconnectedSec: number;
  };
}

/** Every heartbeat in a mirror's `telemetry/*.jsonl`, in file order, payload decoded. */
export async function readTelemetry(data: string): Promise<TelemetryHeartbeat[]> {
  const dir = join(data, 'telemetry');
  const files = (await readdir(dir).catch(() => [])).filter((f) => f.endsWith('.jsonl')).sort();
  const out: TelemetryHeartbeat[] = [];
  for (const f of files) {
    for (const line of (await readFile(join(dir, f), 'utf8')).split('\n')) {
      if (!line) continue;
      const rec = JSON.parse(line) as { agentId: string; counter: number; envelope: unknown };
      const env = (typeof rec.envelope === 'string' ? JSON.parse(rec.envelope) : rec.envelope) as {
        payload: string;
      };
      const payload = JSON.parse(
        Buffer.from(env.payload, 'base64').toString('utf8'),
      ) as TelemetryHeartbeat['payload'];
      out.push({ agentId: rec.agentId, counter: rec.counter, payload });
    }
  }
  return out;
}
