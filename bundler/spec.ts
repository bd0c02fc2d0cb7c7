import { readFile, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { FerryError } from '../core/errors.js';
import { assertManifest, type Artifact, type ArtifactKind, type Manifest } from '../core/manifest.js';
import { isoUtc, resolveExpiry } from '../core/time.js';
import { inputFileError, statInputFile } from '../platform/fsx.js';

/** One artifact as the operator's spec names it: a path instead of digest and size. */
export interface SpecArtifact {
  name: string;
  kind: ArtifactKind;
  version: string;
  platform?: string;
  interpreter?: string;
  path: string;
}

/** A loaded spec: the manifest (with placeholder digests) and where each artifact's bytes are. */
export interface LoadedSpec {
  manifest: Manifest;
  sources: { artifact: Artifact; path: string }[];
}

const MAX_SPEC_BYTES = 1024 * 1024;
/** What an artifact entry of a spec may say; anything else is a typo to refuse, not to ignore. */
const ARTIFACT_FIELDS = new Set(['name', 'kind', 'version', 'platform', 'interpreter', 'path']);

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const bad = (m: string) => new FerryError('SPEC_INVALID', `spec: ${m}`);

export async function loadSpec(specPath: string, now: number): Promise<LoadedSpec> {
  let text: string;
  // NOT_FOUND, NOT_A_FILE or IO_ERROR, naming the path
  if ((await statInputFile(specPath, 'a bundle spec (JSON) file')) > MAX_SPEC_BYTES)
    throw bad(`file is larger than ${MAX_SPEC_BYTES} bytes`);
  try {
    text = await readFile(specPath, 'utf8');
  } catch (e) {
    throw inputFileError(specPath, e, 'a bundle spec (JSON) file');
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new FerryError('SPEC_INVALID', `spec: ${specPath} is not valid JSON`, { cause: e });
  }
  return resolveSpec(v, dirname(resolve(specPath)), now);
}

export async function resolveSpec(v: unknown, baseDir: string, now: number): Promise<LoadedSpec> {
  if (!isObject(v)) throw bad('not a JSON object');
  const known = new Set([
    'publisher',
    'sequence',
    'expires',
    'sites',
    'artifacts',
    'rollout',
    'pins',
    'minAgentVersion',
  ]);
  for (const k of Object.keys(v)) if (!known.has(k)) throw bad(`unknown field ${JSON.stringify(k)}`);
  if (typeof v.expires !== 'string') throw bad('expires must be a duration (90d) or an ISO time');
  const expires = resolveExpiry(v.expires, now, 'spec expires');
  if (!Array.isArray(v.artifacts)) throw bad('artifacts must be an array');
  const sources: LoadedSpec['sources'] = [];
  const artifacts: Artifact[] = [];
  for (const [i, a] of (v.artifacts as unknown[]).entries()) {
    if (!isObject(a)) throw bad(`artifacts[${i}] is not an object`);
    for (const k of Object.keys(a))
      if (!ARTIFACT_FIELDS.has(k)) throw bad(`artifacts[${i}] has unknown field ${JSON.stringify(k)}`);
    if (typeof a.path !== 'string' || a.path === '') throw bad(`artifacts[${i}].path must name a file`);
    const path = resolve(baseDir, a.path);
    let size: number;
    try {
      const st = await stat(path);
      if (!st.isFile()) throw bad(`artifacts[${i}].path ${a.path} is not a regular file`);
      size = st.size;
    } catch (e) {
      if (e instanceof FerryError) throw e;
      throw bad(
        `artifacts[${i}].path ${a.path} cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
      );
    }
    const artifact: Record<string, unknown> = { name: a.name, kind: a.kind, version: a.version };
    if (a.platform !== undefined) artifact.platform = a.platform;
    if (a.kind === 'script') artifact.interpreter = a.interpreter ?? 'sh';
    else if (a.interpreter !== undefined) throw bad(`artifacts[${i}].interpreter is only for scripts`);
    artifact.sha256 = i.toString(16).padStart(64, '0'); // distinct, fixed-width placeholder until hashed
    artifact.size = size;
    artifacts.push(artifact as unknown as Artifact);
    sources.push({ artifact: artifact as unknown as Artifact, path });
  }
  const manifest: Record<string, unknown> = {
    type: 'ferry.manifest/v1',
    publisher: v.publisher,
    sequence: v.sequence,
    created: isoUtc(now),
    expires,
    sites: v.sites,
    artifacts,
  };
  if (v.rollout !== undefined) manifest.rollout = v.rollout;
  if (v.pins !== undefined) manifest.pins = v.pins;
  if (v.minAgentVersion !== undefined) manifest.minAgentVersion = v.minAgentVersion;
  assertManifest(manifest, 'SPEC_INVALID');
  return { manifest, sources };
}
