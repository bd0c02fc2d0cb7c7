/**
 * Policies are checked before anything is signed, with the validator every
 * agent runs (core/policy.ts) and the reference rule it applies
 * (core/policy-refs.ts): a policy an agent would drop is refused here, naming
 * the artifact, the field and the reason. The digest of the bytes checked is
 * kept, so the bundle can refuse a policy file that changes before it is
 * hashed into the bundle.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { decodePolicy, MAX_POLICY_BYTES, PolicyError } from '../core/policy.js';
import { policyReferenceProblems } from '../core/policy-refs.js';
import { FerryError } from '../core/errors.js';
import { BundlerError } from './errors.js';
import type { LoadedSpec } from './spec.js';

/** sha256 of each checked policy's bytes, by artifact name. */
export type CheckedPolicies = Map<string, string>;

/** Refuses (POLICY_INVALID, POLICY_TOO_LARGE) the first policy problem in `spec`; nothing is written. */
export async function checkPolicies(spec: LoadedSpec): Promise<CheckedPolicies> {
  const checked: CheckedPolicies = new Map();
  for (const { artifact, path } of spec.sources) {
    if (artifact.kind !== 'policy') continue;
    const where = `policy ${artifact.name} (${path})`;
    if (artifact.size > MAX_POLICY_BYTES)
      throw new BundlerError(
        'POLICY_TOO_LARGE',
        `${where} is ${artifact.size} bytes; agents accept at most ${MAX_POLICY_BYTES}`,
      );
    let bytes: Buffer;
    try {
      bytes = await readFile(path);
    } catch (e) {
      throw new FerryError('IO_ERROR', `cannot read ${where}: ${(e as Error).message}`, { cause: e });
    }
    let policy;
    try {
      policy = decodePolicy(bytes);
    } catch (e) {
      if (!(e instanceof PolicyError)) throw e;
      // the validator's message is "policy: <field> <reason>"
      throw new BundlerError(e.code, `${where}: ${e.message.replace(/^policy: /, '')}`, { cause: e });
    }
    const problems = policyReferenceProblems(policy, spec.manifest.artifacts);
    if (problems.length > 0) {
      const [first] = problems;
      const more = problems.length > 1 ? ` (and ${problems.length - 1} more)` : '';
      throw new BundlerError('POLICY_INVALID', `${where}: ${first!.field} ${first!.message}${more}`);
    }
    checked.set(artifact.name, createHash('sha256').update(bytes).digest('hex'));
  }
  return checked;
}
