/**
 * Policy documents (`ferry.policy/v1`, an artifact of kind `policy`): which
 * scripts an agent runs and when, which files it manages, and how often it
 * polls. The bytes come out of a bundle, so they are untrusted until
 * `decodePolicy` has validated them; every refusal names the bad field.
 */
import { posix } from 'node:path';
import { CodedError } from './errors.js';
import { JsonError, parseJsonStrict } from './json.js';

export const POLICY_TYPE = 'ferry.policy/v1';
/** Hard limit on a policy document. */
export const MAX_POLICY_BYTES = 1024 * 1024;
export const MAX_SCRIPT_ARGS = 64;
export const MAX_ARG_CHARS = 4096;
export const DEFAULT_TIMEOUT_SEC = 300;
export const MIN_INTERVAL_MS = 10_000;

export type PolicyErrorCode = 'POLICY_INVALID' | 'POLICY_TOO_LARGE';

/** A signed policy document that does not validate; the message names the bad field. */
export class PolicyError extends CodedError<PolicyErrorCode> {}

/** Deepest nesting a policy has: document → scripts → entry → args. */
const POLICY_DEPTH = 4;

export type Schedule = { kind: 'once' } | { kind: 'boot' } | { kind: 'every'; intervalMs: number };

export interface ScriptEntry {
  /** Artifact name of a `script` artifact in the same manifest. */
  script: string;
  /** `["*"]` or group names. */
  groups: string[];
  /** `once`, `boot` or `every <N><s|m|h|d>`. */
  schedule: string;
  args?: string[];
  timeoutSec?: number;
}

export interface FileEntry {
  /** Absolute, normalised, outside /proc /sys /dev. */
  path: string;
  artifact: string;
  /** Octal string, `0644`; no setuid/setgid/sticky bits. */
  mode: string;
  owner?: string;
  group?: string;
  enforce: boolean;
}

/** The document as written; `assertPolicy` proves an unknown value has this shape. */
export interface PolicyDocument {
  type: typeof POLICY_TYPE;
  scripts?: ScriptEntry[];
  files?: FileEntry[];
  agent?: { pollIntervalSec: number };
}

/** The validated document with defaults filled in. */
export interface Policy {
  type: typeof POLICY_TYPE;
  scripts: Array<Required<ScriptEntry>>;
  files: FileEntry[];
  agent?: { pollIntervalSec: number };
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const MODE = /^0[0-7]{3}$/;
/** A user/group name as useradd accepts it, or a numeric id. */
const ACCOUNT = /^(?:[a-z_][a-z0-9_-]{0,31}|[0-9]{1,10})$/;
const EVERY = /^every ([1-9][0-9]{0,6})([smhd])$/;
const UNIT_MS: Record<string, number> = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const FORBIDDEN_ROOTS = ['/proc', '/sys', '/dev'];

type Bad = (field: string, why: string) => PolicyError;
const bad: Bad = (field, why) => new PolicyError('POLICY_INVALID', `policy: ${field} ${why}`);

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function onlyKeys(v: Record<string, unknown>, allowed: readonly string[], field: string): void {
  for (const k of Object.keys(v)) {
    if (!allowed.includes(k)) throw bad(field === '' ? k : `${field}.${k}`, 'is not a known field');
  }
}

function isIntIn(v: unknown, lo: number, hi: number): v is number {
  return Number.isSafeInteger(v) && (v as number) >= lo && (v as number) <= hi;
}

/** Parses a schedule string; undefined when it is not one ferry accepts. */
export function parseSchedule(s: unknown): Schedule | undefined {
  if (s === 'once' || s === 'boot') return { kind: s };
  if (typeof s !== 'string') return undefined;
  const m = EVERY.exec(s);
  if (!m) return undefined;
  const intervalMs = Number(m[1]) * UNIT_MS[m[2]!]!;
  return intervalMs >= MIN_INTERVAL_MS ? { kind: 'every', intervalMs } : undefined;
}

/**
 * Why `p` may not be a managed file path, or undefined when it may: absolute,
 * already normalised (no `.`/`..`/`//`/trailing slash), not `/` itself, and not
 * under a kernel pseudo-filesystem.
 */
export function managedPathProblem(p: unknown): string | undefined {
  if (typeof p !== 'string' || p.length === 0 || p.length > 4096)
    return 'must be a non-empty string of at most 4096 characters';
  for (let i = 0; i < p.length; i++) {
    const c = p.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) return 'must not contain control characters';
  }
  if (!p.startsWith('/')) return 'must be absolute';
  if (p.split('/').includes('..')) return "must not contain '..'";
  if (posix.normalize(p) !== p || p.endsWith('/')) return 'must be normalised';
  for (const root of FORBIDDEN_ROOTS) {
    if (p === root || p.startsWith(root + '/')) return `must not be under ${root}`;
  }
  return undefined;
}

function assertScript(s: unknown, f: string): asserts s is ScriptEntry {
  if (!isObject(s)) throw bad(f, 'is not an object');
  onlyKeys(s, ['script', 'groups', 'schedule', 'args', 'timeoutSec'], f);
  if (typeof s.script !== 'string' || !NAME.test(s.script))
    throw bad(`${f}.script`, 'must be an artifact name of A-Z a-z 0-9 . _ -');
  if (!Array.isArray(s.groups) || s.groups.length === 0 || s.groups.length > 256)
    throw bad(`${f}.groups`, 'must be a non-empty array of at most 256 names');
  const groups = s.groups as unknown[];
  if (groups.includes('*') && groups.length !== 1)
    throw bad(`${f}.groups`, 'must be ["*"] or names, not both');
  for (const g of groups)
    if (typeof g !== 'string' || (g !== '*' && !NAME.test(g)))
      throw bad(`${f}.groups`, `has an invalid group ${JSON.stringify(g)}`);
  if (parseSchedule(s.schedule) === undefined)
    throw bad(`${f}.schedule`, "must be 'once', 'boot' or 'every <N><s|m|h|d>' of at least 10s");
  if (s.args !== undefined) {
    if (!Array.isArray(s.args) || s.args.length > MAX_SCRIPT_ARGS)
      throw bad(`${f}.args`, `must be an array of at most ${MAX_SCRIPT_ARGS} strings`);
    for (const [j, a] of (s.args as unknown[]).entries()) {
      if (typeof a !== 'string' || a.length > MAX_ARG_CHARS || a.includes('\0'))
        throw bad(`${f}.args[${j}]`, `must be a string of at most ${MAX_ARG_CHARS} characters without NUL`);
    }
  }
  if (s.timeoutSec !== undefined && !isIntIn(s.timeoutSec, 1, 86_400))
    throw bad(`${f}.timeoutSec`, 'must be an integer from 1 to 86400');
}

function assertFile(x: unknown, f: string): asserts x is FileEntry {
  if (!isObject(x)) throw bad(f, 'is not an object');
  onlyKeys(x, ['path', 'artifact', 'mode', 'owner', 'group', 'enforce'], f);
  const problem = managedPathProblem(x.path);
  if (problem !== undefined) throw bad(`${f}.path`, problem);
  if (typeof x.artifact !== 'string' || !NAME.test(x.artifact))
    throw bad(`${f}.artifact`, 'must be an artifact name of A-Z a-z 0-9 . _ -');
  if (typeof x.mode !== 'string' || !MODE.test(x.mode))
    throw bad(`${f}.mode`, "must be an octal string like '0644'");
  for (const k of ['owner', 'group'] as const) {
    const v = x[k];
    if (v !== undefined && (typeof v !== 'string' || !ACCOUNT.test(v)))
      throw bad(`${f}.${k}`, 'must be an account name or a numeric id');
  }
  if (typeof x.enforce !== 'boolean') throw bad(`${f}.enforce`, 'must be true or false');
}

/** Validates an untrusted policy value; the message names the bad field. */
export function assertPolicy(v: unknown): asserts v is PolicyDocument {
  if (!isObject(v)) throw bad('document', 'is not a JSON object');
  onlyKeys(v, ['type', 'scripts', 'files', 'agent'], '');
  if (v.type !== POLICY_TYPE) throw bad('type', `must be "${POLICY_TYPE}"`);
  if (v.scripts !== undefined) {
    if (!Array.isArray(v.scripts)) throw bad('scripts', 'must be an array');
    const seen = new Set<string>();
    for (const [i, s] of (v.scripts as unknown[]).entries()) {
      assertScript(s, `scripts[${i}]`);
      if (seen.has(s.script)) throw bad(`scripts[${i}].script`, `${s.script} appears twice`);
      seen.add(s.script);
    }
  }
  if (v.files !== undefined) {
    if (!Array.isArray(v.files)) throw bad('files', 'must be an array');
    const seen = new Set<string>();
    for (const [i, x] of (v.files as unknown[]).entries()) {
      assertFile(x, `files[${i}]`);
      if (seen.has(x.path)) throw bad(`files[${i}].path`, `${x.path} appears twice`);
      seen.add(x.path);
    }
  }
  if (v.agent !== undefined) {
    if (!isObject(v.agent)) throw bad('agent', 'must be an object');
    onlyKeys(v.agent, ['pollIntervalSec'], 'agent');
    if (!isIntIn(v.agent.pollIntervalSec, 10, 86_400))
      throw bad('agent.pollIntervalSec', 'must be an integer from 10 to 86400');
  }
}

/** Fills defaults into a validated document. */
export function normalizePolicy(doc: PolicyDocument): Policy {
  const out: Policy = {
    type: POLICY_TYPE,
    scripts: (doc.scripts ?? []).map((s) => ({
      script: s.script,
      groups: [...s.groups],
      schedule: s.schedule,
      args: [...(s.args ?? [])],
      timeoutSec: s.timeoutSec ?? DEFAULT_TIMEOUT_SEC,
    })),
    files: (doc.files ?? []).map((f) => ({ ...f })),
  };
  if (doc.agent) out.agent = { pollIntervalSec: doc.agent.pollIntervalSec };
  return out;
}

/** Parses the exact artifact bytes into a validated, normalised policy. */
export function decodePolicy(body: Uint8Array): Policy {
  if (body.byteLength > MAX_POLICY_BYTES)
    throw new PolicyError('POLICY_TOO_LARGE', `policy: document is larger than ${MAX_POLICY_BYTES} bytes`);
  let v: unknown;
  try {
    v = parseJsonStrict(body, { maxBytes: MAX_POLICY_BYTES, maxDepth: POLICY_DEPTH });
  } catch (e) {
    if (!(e instanceof JsonError)) throw e;
    throw new PolicyError('POLICY_INVALID', `policy: document is not strict UTF-8 JSON: ${e.message}`, {
      cause: e,
    });
  }
  assertPolicy(v);
  return normalizePolicy(v);
}

/** True when a script entry applies to an agent in `agentGroups`. */
export function appliesTo(groups: readonly string[], agentGroups: readonly string[]): boolean {
  return groups.includes('*') || groups.some((g) => agentGroups.includes(g));
}

/** `'0644'` → 0o644. */
export function parseMode(mode: string): number {
  return parseInt(mode, 8);
}
