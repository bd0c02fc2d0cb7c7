/**
 * What this agent should be doing under a verified manifest: the policies'
 * script entries that apply to its groups and the managed files, each bound to
 * the manifest artifact that carries its bytes. Problems in a signed policy
 * (a document that does not validate, an entry naming a missing artifact) are
 * returned with a code and the entry, or the whole document, skipped; they
 * never stop the rest. The rules are the bundler's (core/policy.ts,
 * core/policy-refs.ts), so only a bundle from elsewhere can carry one.
 */
import { readFile } from 'node:fs/promises';
import type { Artifact, Manifest } from '../core/manifest.js';
import { appliesTo, decodePolicy, PolicyError, type FileEntry, type ScriptEntry } from '../core/policy.js';
import { policyReferenceProblems } from '../core/policy-refs.js';

export interface DesiredScript {
  entry: Required<ScriptEntry>;
  artifact: Artifact;
}

export interface DesiredFile {
  entry: FileEntry;
  artifact: Artifact;
}

/**
 * One problem with a signed policy. `code`: POLICY_INVALID (the document or an
 * entry breaks a rule), POLICY_TOO_LARGE, or POLICY_UNAVAILABLE (its verified
 * bytes are not in the cache).
 */
export interface PolicyProblem {
  policy: string;
  /** sha256 of the policy artifact, so a report names the exact document. */
  sha256: string;
  code: 'POLICY_INVALID' | 'POLICY_TOO_LARGE' | 'POLICY_UNAVAILABLE';
  message: string;
}

export interface Desired {
  scripts: DesiredScript[];
  files: DesiredFile[];
  pollIntervalSec?: number;
  problems: PolicyProblem[];
}

/**
 * `blobPath` returns the local path of an artifact's verified bytes (fetching
 * it if need be). With `blobErrors: 'throw'` a policy whose bytes cannot be had
 * fails the call (sync: the manifest must not become active without them);
 * by default it is a POLICY_UNAVAILABLE problem (apply: the rest still runs).
 */
export async function desiredState(
  manifest: Manifest,
  groups: readonly string[],
  blobPath: (a: Artifact) => Promise<string>,
  opts: { blobErrors?: 'throw' | 'report' } = {},
): Promise<Desired> {
  const byName = new Map(manifest.artifacts.map((a) => [a.name, a]));
  const out: Desired = { scripts: [], files: [], problems: [] };
  for (const p of manifest.artifacts.filter((a) => a.kind === 'policy')) {
    const problem = (code: PolicyProblem['code'], message: string) =>
      out.problems.push({ policy: p.name, sha256: p.sha256, code, message });
    let bytes: Buffer;
    try {
      bytes = await readFile(await blobPath(p));
    } catch (e) {
      if (opts.blobErrors === 'throw') throw e;
      problem('POLICY_UNAVAILABLE', `policy ${p.name}: verified bytes are not in the cache`);
      continue;
    }
    let policy;
    try {
      policy = decodePolicy(bytes);
    } catch (e) {
      if (!(e instanceof PolicyError)) throw e;
      problem(e.code, `policy ${p.name}: ${e.message.replace(/^policy: /, '')}`);
      continue;
    }
    // an entry that names what this manifest does not carry is skipped; the others still apply
    const bad = new Set<string>();
    for (const r of policyReferenceProblems(policy, manifest.artifacts)) {
      bad.add(r.field);
      problem('POLICY_INVALID', `policy ${p.name}: ${r.field} ${r.message}`);
    }
    if (policy.agent) out.pollIntervalSec = policy.agent.pollIntervalSec;
    policy.scripts.forEach((entry, i) => {
      if (bad.has(`scripts[${i}].script`) || !appliesTo(entry.groups, groups)) return;
      out.scripts.push({ entry, artifact: byName.get(entry.script)! });
    });
    policy.files.forEach((entry, i) => {
      if (bad.has(`files[${i}].artifact`)) return;
      out.files.push({ entry, artifact: byName.get(entry.artifact)! });
    });
  }
  return out;
}

/** Every blob the agent needs under `manifest`: its policies, and the scripts and files they name. */
export async function neededBlobs(
  manifest: Manifest,
  groups: readonly string[],
  blobPath: (a: Artifact) => Promise<string>,
): Promise<Artifact[]> {
  const d = await desiredState(manifest, groups, blobPath, { blobErrors: 'throw' });
  const seen = new Set<string>();
  return [...d.scripts, ...d.files]
    .map((x) => x.artifact)
    .filter((a) => !seen.has(a.sha256) && seen.add(a.sha256));
}
