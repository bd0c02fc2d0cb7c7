/**
 * A policy artifact is checked when it is registered, with the rules the agent applies
 * (core/policy.ts): an upload, an API call or a release spec holding a policy the agents would refuse
 * is refused before any byte is stored. A release is also checked whole: each of its policies may
 * name only scripts and files the release carries (core/policy-refs.ts, as the bundler checks).
 */
import { readFile, stat } from 'node:fs/promises';
import type { Artifact } from '../core/manifest.js';
import { decodePolicy, MAX_POLICY_BYTES, PolicyError, type Policy } from '../core/policy.js';
import { policyReferenceProblems } from '../core/policy-refs.js';
import { ServerError } from './errors.js';

/** The policy in `path`, decoded; POLICY_INVALID names what is wrong. */
export async function checkPolicyFile(path: string, what: string): Promise<Policy> {
  const st = await stat(path).catch(() => undefined);
  if (!st?.isFile()) throw new ServerError('BAD_INPUT', `${what}: ${path} is not a readable file`);
  if (st.size > MAX_POLICY_BYTES)
    throw new ServerError('POLICY_INVALID', `${what}: a policy is at most ${MAX_POLICY_BYTES} bytes`);
  try {
    return decodePolicy(await readFile(path));
  } catch (e) {
    if (e instanceof PolicyError)
      throw new ServerError('POLICY_INVALID', `${what}: ${e.message}`, { cause: e });
    throw e;
  }
}

/** Refuses a policy that names a script or file the release does not carry. */
export function checkPolicyRefs(
  policy: Policy,
  artifacts: readonly Pick<Artifact, 'name' | 'kind'>[],
  what: string,
): void {
  const problems = policyReferenceProblems(policy, artifacts);
  if (problems.length)
    throw new ServerError(
      'POLICY_INVALID',
      `${what} in this release: ${problems.map((p) => `${p.field} ${p.message}`).join('; ')}`,
    );
}

/** Refuses a release one of whose policies names a script or file the release does not carry. */
export async function checkReleasePolicies(
  artifacts: readonly Artifact[],
  blobPath: (sha256: string) => string,
): Promise<void> {
  for (const a of artifacts) {
    if (a.kind !== 'policy') continue;
    const what = `policy ${a.name}@${a.version}`;
    checkPolicyRefs(await checkPolicyFile(blobPath(a.sha256), what), artifacts, what);
  }
}
