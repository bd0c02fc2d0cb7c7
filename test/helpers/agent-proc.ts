/**
 * Real `ferry agent` and `ferry mirror serve` children for end-to-end tests of
 * the agent: follow a child's JSON log lines, start a mirror on a chosen port
 * (so a killed mirror can come back where its agents look for it), run the
 * one-shot agent commands, and read what reached a mirror's telemetry log.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { followLogs as follow, spawnFerry, runFerry, sleep, type LoggedProc } from './mirror-proc.js';

export type { LoggedProc };

export interface MirrorAt extends LoggedProc {
  url: string;
  port: number;
}

export interface MirrorAtOptions {
  /** `serve --open-enrolment`: agents enrol without a token (for tests that are not about enrolment). */
  openEnrolment?: boolean;
  /** More `serve` flags. */
  args?: string[];
}

/** Tests whose subject is not enrolment: agents enrol without a token. */
export const OPEN_ENROLMENT: MirrorAtOptions = { openEnrolment: true };

/**
 * `ferry mirror serve` on 127.0.0.1:`port` (0: the kernel chooses) over an imported data dir. Agents
 * need a token to enrol (makeToken) unless `o.openEnrolment`.
 */
export async function startMirrorAt(data: string, port = 0, o: MirrorAtOptions = {}): Promise<MirrorAt> {
  const p = follow(
    spawnFerry([
      'mirror',
      'serve',
      '--data',
      data,
      '--listen',
      `127.0.0.1:${port}`,
      ...(o.openEnrolment ? ['--open-enrolment'] : []),
      ...(o.args ?? []),
    ]),
    'mirror',
  );
  const started = await p.waitForLog((l) => l.event === 'mirror.started');
  if (typeof started.url !== 'string')
    throw new Error(`mirror.started has no url: ${JSON.stringify(started)}`);
  return { ...p, url: started.url, port: Number(new URL(started.url).port) };
}

/**
 * `ferry mirror token create --data DIR --ttl … --json` (through the serving mirror when one runs on
 * DIR), which must succeed; resolves to the token string and its id.
 */
export async function makeToken(
  data: string,
  o: { ttl?: string; uses?: number; groups?: string[] } = {},
): Promise<{ token: string; id: string }> {
  const r = await runFerry([
    'mirror',
    'token',
    'create',
    '--data',
    data,
    '--ttl',
    o.ttl ?? '1h',
    ...(o.uses !== undefined ? ['--uses', String(o.uses)] : []),
    ...(o.groups ?? []).flatMap((g) => ['--group', g]),
    '--json',
  ]);
  if (r.code !== 0) throw new Error(`mirror token create failed (${r.code}): ${r.stdout}${r.stderr}`);
  const v = JSON.parse(r.stdout) as { token: string; id: string };
  return { token: v.token, id: v.id };
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

/** Every heartbeat in a mirror's telemetry outbox (`telemetry/outbox/*.jsonl`), in seq order, payload decoded. */
export async function readTelemetry(data: string): Promise<TelemetryHeartbeat[]> {
  const dir = join(data, 'telemetry', 'outbox');
  const files = (await readdir(dir).catch(() => [])).filter((f) => f.endsWith('.jsonl')).sort();
  const out: TelemetryHeartbeat[] = [];
  for (const f of files) {
    for (const line of (await readFile(join(dir, f), 'utf8')).split('\n')) {
      if (!line) continue;
      const rec = JSON.parse(line) as {
        kind: string;
        agentId: string;
        counter: number;
        envelope: { payload: string };
      };
      if (rec.kind !== 'heartbeat') continue;
      const payload = JSON.parse(
        Buffer.from(rec.envelope.payload, 'base64').toString('utf8'),
      ) as TelemetryHeartbeat['payload'];
      out.push({ agentId: rec.agentId, counter: rec.counter, payload });
    }
  }
  return out;
}
