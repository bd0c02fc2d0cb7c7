/**
 * Fixtures built by code: keys, roots, specs and bundles, so that every test
 * shows how its good or bad case is made.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, mkdir, rm, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { serializeEnvelope, type Signer } from '../../core/dsse.js';
import { generateKeyFiles, loadPrivateKey, type PrivateKey } from '../../platform/keyfile.js';
import { buildRootPayload, signRoot, trustPinnedRoot, type TrustedRoot } from '../../core/root.js';
import { isoUtc } from '../../core/time.js';
import { createBundle, type CreateOptions, type CreateResult } from '../../bundler/create.js';
import { resolveSpec } from '../../bundler/spec.js';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const FERRY_BIN = join(REPO, 'dist/bin/ferry.js');

export async function tempDir(
  prefix = 'ferry-test-',
): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

export async function makeKey(dir: string, name: string): Promise<PrivateKey> {
  await mkdir(dir, { recursive: true });
  const { keyPath } = await generateKeyFiles(dir, name);
  return loadPrivateKey(keyPath);
}

export interface RootOptions {
  version?: number;
  expires?: string;
  rootKeys: PrivateKey[];
  rootThreshold?: number;
  bundleKeys: PrivateKey[];
  bundleThreshold?: number;
  /** Who signs; defaults to every root key. */
  signers?: Signer[];
}

export function makeRootEnvelope(o: RootOptions) {
  const payload = buildRootPayload({
    version: o.version ?? 1,
    expires: o.expires ?? isoUtc(Date.now() + 365 * 86_400_000),
    rootKeys: o.rootKeys,
    rootThreshold: o.rootThreshold ?? 1,
    bundleKeys: o.bundleKeys,
    bundleThreshold: o.bundleThreshold ?? 1,
  });
  return signRoot(payload, o.signers ?? o.rootKeys);
}

/** A complete little world: a root key, a bundle key, a pinned root on disk. */
export interface World {
  dir: string;
  rootKey: PrivateKey;
  bundleKey: PrivateKey;
  root: TrustedRoot;
  rootPath: string;
  keyDir: string;
  cleanup: () => Promise<void>;
}

export async function makeWorld(): Promise<World> {
  const { dir, cleanup } = await tempDir();
  const keyDir = join(dir, 'keys');
  const rootKey = await makeKey(keyDir, 'root');
  const bundleKey = await makeKey(keyDir, 'release');
  const env = makeRootEnvelope({ rootKeys: [rootKey], bundleKeys: [bundleKey] });
  const rootPath = join(dir, 'root.json');
  await writeFile(rootPath, serializeEnvelope(env));
  return { dir, rootKey, bundleKey, root: trustPinnedRoot(env), rootPath, keyDir, cleanup };
}

export interface ArtifactInput {
  name: string;
  kind: 'agent' | 'script' | 'policy' | 'file';
  version?: string;
  platform?: string;
  content: Buffer | string;
}

export const SAMPLE_ARTIFACTS: ArtifactInput[] = [
  {
    name: 'ferry-agent',
    kind: 'agent',
    version: '1.4.2',
    platform: 'linux-x64',
    content: Buffer.alloc(70_000, 7),
  },
  {
    name: 'rotate-logs',
    kind: 'script',
    version: '3',
    content: '#!/bin/sh\nfind /var/log/acme -mtime +7 -delete\n',
  },
  {
    name: 'baseline',
    kind: 'policy',
    version: '7',
    content: JSON.stringify({ type: 'ferry.policy/v1', scripts: [] }),
  },
];

/** Writes artifact files and a spec next to them; returns the spec path. */
export async function writeSpec(
  dir: string,
  overrides: Record<string, unknown> = {},
  artifacts: ArtifactInput[] = SAMPLE_ARTIFACTS,
): Promise<string> {
  await mkdir(join(dir, 'art'), { recursive: true });
  const specArtifacts = [];
  for (const a of artifacts) {
    await writeFile(join(dir, 'art', a.name), a.content);
    specArtifacts.push({
      name: a.name,
      kind: a.kind,
      version: a.version ?? (a.kind === 'agent' ? '1.0.0' : '1'),
      ...(a.platform && { platform: a.platform }),
      ...(a.kind === 'agent' && !a.platform && { platform: 'linux-x64' }),
      path: `art/${a.name}`,
    });
  }
  const spec = {
    publisher: 'acme-ops',
    sequence: 1,
    expires: '90d',
    sites: ['plant-7'],
    artifacts: specArtifacts,
    ...overrides,
  };
  const path = join(dir, 'spec.json');
  await writeFile(path, JSON.stringify(spec, null, 2));
  return path;
}

/** Builds a bundle through the library (not the CLI). */
export async function buildBundle(
  w: World,
  out: string,
  o: {
    spec?: Record<string, unknown>;
    artifacts?: ArtifactInput[];
    now?: number;
  } & Partial<CreateOptions> = {},
): Promise<CreateResult> {
  const specDir = await mkdtemp(join(w.dir, 'spec-'));
  const specPath = await writeSpec(specDir, o.spec, o.artifacts);
  const spec = await resolveSpec(JSON.parse(await readFile(specPath, 'utf8')), specDir, o.now ?? Date.now());
  return createBundle(spec, out, { signers: o.signers ?? [w.bundleKey], ...o });
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the built `ferry` binary as a child process. */
export function ferry(
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [FERRY_BIN, ...args], {
      cwd: opts.cwd,
      env: { ...process.env, ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolvePromise({ code: code ?? -1, stdout, stderr }));
  });
}

/** Every file under `dir` with its sha256 and mode, to prove a refusal changed nothing. */
export async function snapshotDir(dir: string): Promise<Record<string, string>> {
  const { readdir, lstat } = await import('node:fs/promises');
  const { createHash } = await import('node:crypto');
  const out: Record<string, string> = {};
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else {
        const st = await lstat(p);
        const h = e.isFile()
          ? createHash('sha256')
              .update(await readFile(p))
              .digest('hex')
          : 'special';
        out[p.slice(dir.length + 1)] = `${(st.mode & 0o7777).toString(8)}:${h}`;
      }
    }
  };
  await walk(dir);
  return out;
}

/**
 * A mirror data dir as a refusal must leave it: blobs/, manifests/ and state.json less its quarantine
 * list (the one thing a refusal adds, by design).
 */
export async function storeView(data: string) {
  const state = JSON.parse(await readFile(join(data, 'state.json'), 'utf8')) as Record<string, unknown>;
  return {
    blobs: await snapshotDir(join(data, 'blobs')),
    manifests: await snapshotDir(join(data, 'manifests')),
    state: { ...state, quarantine: null },
  };
}
