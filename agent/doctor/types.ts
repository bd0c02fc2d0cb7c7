/**
 * The doctor's vocabulary: a check result names what it looked at (`id`), how
 * it stands (ok, warn, fail), the evidence it saw and the exact fix. A check
 * that a remediation pattern can mend names that pattern (`fixable`).
 */
export type CheckStatus = 'ok' | 'warn' | 'fail';

export interface CheckResult {
  id: string;
  /** One line on what the check covers, for people reading the list. */
  title: string;
  status: CheckStatus;
  /** What was seen: paths, modes, digests, times. */
  evidence: string;
  /** What to do about it; empty when the check is ok. */
  fix: string;
  /** The remediation pattern (agent/doctor/fixes.ts) that mends this, when one applies. */
  fixable?: string;
}

export interface DoctorReport {
  at: number;
  checks: CheckResult[];
  counts: Record<CheckStatus, number>;
}

/** The agent's config file as the command line read it (bin/cli/agent.ts `--config`). */
export interface ConfigReading {
  path: string;
  /** Absent: no config file is used (settings come from flags). */
  error?: string;
}

export interface DoctorOptions {
  stateDir: string;
  /** Where versions/<v>/ferry-agent and `current` live; undefined when not known. */
  installRoot: string | undefined;
  /** The filesystem root the node's system files sit under (`/` on a real node). */
  systemRoot: string;
  config?: ConfigReading;
  /** Interpreters this node allows (default sh, bash). */
  allowlist: readonly string[];
  /** Re-hash every cached blob, not a sample. */
  deep: boolean;
  /** Run by the agent itself (it is the agent that runs). */
  inAgent?: boolean;
  /** Skip the mirror probes (a caller that has just talked to the mirrors). */
  offline?: boolean;
  /** Per-request timeout of the mirror probes (ms). */
  timeoutMs?: number;
  now?: () => number;
}

export const ok = (id: string, title: string, evidence: string): CheckResult => ({
  id,
  title,
  status: 'ok',
  evidence,
  fix: '',
});

export function counts(checks: readonly CheckResult[]): Record<CheckStatus, number> {
  const c: Record<CheckStatus, number> = { ok: 0, warn: 0, fail: 0 };
  for (const r of checks) c[r.status]++;
  return c;
}

export const errText = (e: unknown): string => {
  const code = (e as { code?: unknown }).code;
  const msg = e instanceof Error ? e.message : String(e);
  return typeof code === 'string' && !msg.includes(code) ? `${code}: ${msg}` : msg;
};
