/**
 * The rule that ties a policy to the manifest that carries it: every script
 * entry names a `script` artifact, and every managed file names an artifact
 * that holds file bytes (kind `file` or `script`; never an agent binary or
 * another policy). The bundler refuses to sign a policy that breaks it and the
 * agent reports one that does, so both use this one function.
 */
import type { ArtifactKind } from './manifest.js';
import type { Policy } from './policy.js';

export interface PolicyReferenceProblem {
  /** The policy field at fault, e.g. `scripts[0].script`. */
  field: string;
  message: string;
}

/** Kinds a managed file may take its bytes from. */
export const FILE_SOURCE_KINDS: readonly ArtifactKind[] = ['file', 'script'];

/** Every reference in `policy` that `artifacts` (the same manifest's) does not satisfy, in document order. */
export function policyReferenceProblems(
  policy: Policy,
  artifacts: readonly { name: string; kind: ArtifactKind }[],
): PolicyReferenceProblem[] {
  const kindOf = new Map(artifacts.map((a) => [a.name, a.kind]));
  const out: PolicyReferenceProblem[] = [];
  policy.scripts.forEach((s, i) => {
    const kind = kindOf.get(s.script);
    if (kind !== 'script')
      out.push({
        field: `scripts[${i}].script`,
        message:
          kind === undefined
            ? `names ${s.script}, which is not an artifact of this bundle`
            : `names ${s.script}, which is a ${kind} artifact, not a script`,
      });
  });
  policy.files.forEach((f, i) => {
    const kind = kindOf.get(f.artifact);
    if (kind === undefined || !FILE_SOURCE_KINDS.includes(kind))
      out.push({
        field: `files[${i}].artifact`,
        message:
          kind === undefined
            ? `names ${f.artifact}, which is not an artifact of this bundle`
            : `names ${f.artifact}, which is a ${kind} artifact; a managed file comes from a file or script artifact`,
      });
  });
  return out;
}
