/**
 * What this agent should be doing under a verified manifest: the policies'
 * script entries that apply to its groups and the managed files, each bound to
 * the manifest artifact that carries its bytes. Problems in a signed policy
 * (an entry naming a missing artifact, a document that does not validate) are
 * reported and that entry skipped; they never stop the rest.
 */
import { readFile } from 'node:fs/promises';
import type { Artifact, Manifest } from '../core/manifest.js';
import { appliesTo, decodePolicy, type FileEntry, type ScriptEntry } from '../core/policy.js';

export interface DesiredScript {
  entry: Required<ScriptEntry>;
  artifact: Artifact;
}

export interface DesiredFile {
  entry: FileEntry;
  artifact: Artifact;
}

export interface Desired {
  scripts: DesiredScript[];
  files: DesiredFile[];
  pollIntervalSec?: number;
  problems: { policy: string; message: string }[];
}

/** `blobPath` returns the local path of an artifact's verified bytes (fetching it if need be). */
export async function desiredState(
  manifest: Manifest,
  groups: readonly string[],
  blobPath: (a: Artifact) => Promise<string>,
): Promise<Desired> {
  const byName = new Map(manifest.artifacts.map((a) => [a.name, a]));
  const out: Desired = { scripts: [], files: [], problems: [] };
  for (const p of manifest.artifacts.filter((a) => a.kind === 'policy')) {
    let policy;
    try {
      policy = decodePolicy(await readFile(await blobPath(p)));
    } catch (e) {
      out.problems.push({ policy: p.name, message: (e as Error).message });
      continue;
    }
    if (policy.agent) out.pollIntervalSec = policy.agent.pollIntervalSec;
    for (const entry of policy.scripts) {
      if (!appliesTo(entry.groups, groups)) continue;
      const artifact = byName.get(entry.script);
      if (artifact?.kind !== 'script') {
        out.problems.push({
          policy: p.name,
          message: `script ${entry.script} is not a script artifact of this manifest`,
        });
        continue;
      }
      out.scripts.push({ entry, artifact });
    }
    for (const entry of policy.files) {
      const artifact = byName.get(entry.artifact);
      if (!artifact || artifact.kind === 'agent' || artifact.kind === 'policy') {
        out.problems.push({
          policy: p.name,
          message: `file ${entry.path} names no file artifact ${entry.artifact}`,
        });
        continue;
      }
      out.files.push({ entry, artifact });
    }
  }
  return out;
}

/** Every blob the agent needs under `manifest`: its policies, and the scripts and files they name. */
export async function neededBlobs(
  manifest: Manifest,
  groups: readonly string[],
  blobPath: (a: Artifact) => Promise<string>,
): Promise<Artifact[]> {
  const d = await desiredState(manifest, groups, blobPath);
  const seen = new Set<string>();
  return [...d.scripts, ...d.files]
    .map((x) => x.artifact)
    .filter((a) => !seen.has(a.sha256) && seen.add(a.sha256));
}
