/**
 * What the operator registers on the server: artifacts (stored once by digest under
 * `blobs/sha256/<hex>`), releases (a named, versioned set of artifacts that never changes), sites
 * (sequence counter, rollout plan, pins, "update now" marks, group moves) and the bundles built for
 * them. The records live in `catalog.json`, written atomically under `catalog.lock` by the server and
 * the CLI alike; readers re-read it when it changed. Everything goes through the `Catalog` interface,
 * so another backend can take its place.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { link, mkdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { ArtifactKind, Artifact, Rollout } from '../core/manifest.js';
import { ARTIFACT_KINDS } from '../core/manifest.js';
import { isSemver } from '../core/semver.js';
import { fsyncDir, tempPathFor, withAtomicFile, writeFileAtomic } from '../platform/fsx.js';
import { acquireLock } from '../platform/lock.js';
import { ServerError } from './errors.js';

export interface ArtifactRecord extends Artifact {
  uploadedAt: string;
  uploadedBy: string;
}

export interface ReleaseRecord {
  name: string;
  version: string;
  artifacts: Artifact[];
  createdAt: string;
  createdBy: string;
}

export type Strategy = 'immediate' | 'staggered' | 'manual';
export const STRATEGIES: readonly Strategy[] = ['immediate', 'staggered', 'manual'];

export interface SiteRecord {
  name: string;
  publisher: string;
  /** The last sequence issued for this site (the next bundle gets one more). */
  sequence: number;
  /** The plan of the last bundle built (or set), null before the first. */
  plan: Rollout | null;
  pins: Record<string, string>;
  /** Agents marked "update now": pinned to the release's agent version in the next bundle only. */
  updateNow: string[];
  /** Groups the operator moved agents to (kept on the server; shown in the fleet view). */
  groups: Record<string, string>;
  createdAt: string;
  /** The site's last known inventory (server/site-inventory.ts), when one came home. */
  inventory?: SiteInventory;
}

/** What the site record says of the last inventory kept (its bytes: `inventories/<site>.inventory.json`). */
export interface SiteInventory {
  mirror: string;
  /** Its own signed time. */
  created: string;
  /** The mirror's active sequence when it was made. */
  active: number | null;
  blobs: number;
  sha256: string;
  receivedAt: string;
  /** How it came: `courier` (beside a telemetry export) or `link` (a mirror's request). */
  via: string;
}

export interface BundleRecord {
  id: string;
  site: string;
  release: string;
  sequence: number;
  strategy: Strategy;
  file: string;
  bytes: number;
  /** sha256 of the manifest payload: names the signed content, whoever signs it. */
  payloadSha256: string;
  signatures: number;
  status: 'signed' | 'unsigned' | 'imported';
  builtAt: string;
  builtBy: string;
  importedAt?: string;
  /** The rollout plan the bundle carries and its id (core/rollout/plan.ts), as the site's mirrors compute it. */
  plan?: Rollout;
  rolloutId?: string;
  /** The files written when there is more than one (volumes); `file` is the first. */
  volumes?: string[];
  /** A delta: the inventory whose blobs it leaves out, and what a full bundle would weigh. */
  delta?: BundleDelta;
  /** Each time a mirror fetched it over its link (server/bundle-link.ts). */
  fetches?: { mirror: string; at: string }[];
}

export interface BundleDelta {
  /** `file` (--have) or `last` (the site's last known inventory). */
  from: 'file' | 'last';
  mirror: string;
  created: string;
  omitted: number;
  fullBytes: number;
}

export interface CatalogData {
  artifacts: Record<string, ArtifactRecord>;
  releases: Record<string, ReleaseRecord>;
  sites: Record<string, SiteRecord>;
  bundles: BundleRecord[];
}

const empty = (): CatalogData => ({ artifacts: {}, releases: {}, sites: {}, bundles: [] });
const own = <T>(o: Record<string, T>, k: string): T | undefined => (Object.hasOwn(o, k) ? o[k] : undefined);

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const PLATFORM = /^[a-z0-9]+-[a-z0-9_]+$/;
const INTERPRETER = /^[A-Za-z0-9._-]{1,64}$/;
const bad = (m: string) => new ServerError('BAD_INPUT', m);

export const releaseKey = (name: string, version: string) => `${name}@${version}`;
export const artifactKey = (a: Pick<Artifact, 'kind' | 'name' | 'version' | 'platform'>) =>
  `${a.kind}:${a.name}@${a.version}${a.platform ? `/${a.platform}` : ''}`;

export function checkName(v: unknown, what: string): string {
  if (typeof v !== 'string' || !NAME.test(v))
    throw bad(`${what} must be 1-64 of A-Z a-z 0-9 . _ - and start with a letter or digit`);
  return v;
}

export interface ArtifactMeta {
  name: string;
  kind: ArtifactKind;
  version: string;
  platform?: string;
  interpreter?: string;
}

/** Checks what an operator says about an artifact (form fields or a spec entry). */
export function checkArtifactMeta(v: Record<string, unknown>, what = 'artifact'): ArtifactMeta {
  const name = checkName(v.name, `${what} name`);
  if (typeof v.kind !== 'string' || !(ARTIFACT_KINDS as readonly string[]).includes(v.kind))
    throw bad(`${what} kind must be one of ${ARTIFACT_KINDS.join(', ')}`);
  const kind = v.kind as ArtifactKind;
  if (kind === 'agent' ? !isSemver(v.version) : typeof v.version !== 'string' || !NAME.test(v.version))
    throw bad(`${what} version must be ${kind === 'agent' ? 'a semver version' : 'a version name'}`);
  const m: ArtifactMeta = { name, kind, version: v.version as string };
  if (v.platform !== undefined && v.platform !== '') {
    if (typeof v.platform !== 'string' || !PLATFORM.test(v.platform))
      throw bad(`${what} platform must be like linux-x64`);
    m.platform = v.platform;
  }
  if (kind === 'script') {
    const i = v.interpreter === undefined || v.interpreter === '' ? 'sh' : v.interpreter;
    if (typeof i !== 'string' || !INTERPRETER.test(i)) throw bad(`${what} interpreter is not a program name`);
    m.interpreter = i;
  } else if (v.interpreter !== undefined && v.interpreter !== '')
    throw bad(`${what} interpreter is only for scripts`);
  return m;
}

/** Storage of the catalog: the one interface the server's pages, API and CLI use. */
export interface Catalog {
  read(): Promise<CatalogData>;
  update<T>(fn: (c: CatalogData) => T | Promise<T>): Promise<T>;
  blobPath(sha256: string): string;
  /** Stores a file's bytes by digest (once); returns digest, size and whether this call added them. */
  putBlob(path: string): Promise<{ sha256: string; size: number; added: boolean }>;
  /** Removes a blob this process just added and nothing names. */
  dropBlob(sha256: string): Promise<void>;
}

/** The embedded backend: one JSON file plus a blob directory in the data directory. */
export class FileCatalog implements Catalog {
  private cache: { mtimeMs: number; data: CatalogData } | undefined;

  constructor(readonly dataDir: string) {}

  private get path(): string {
    return join(this.dataDir, 'catalog.json');
  }

  async read(): Promise<CatalogData> {
    let mtimeMs: number;
    try {
      mtimeMs = (await stat(this.path)).mtimeMs;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return empty();
      throw e;
    }
    if (this.cache?.mtimeMs === mtimeMs) return this.cache.data;
    const data = { ...empty(), ...(JSON.parse(await readFile(this.path, 'utf8')) as Partial<CatalogData>) };
    this.cache = { mtimeMs, data };
    return data;
  }

  /** Runs `fn` on a fresh copy under the lock; writes it only when `fn` returns (a throw changes nothing). */
  async update<T>(fn: (c: CatalogData) => T | Promise<T>): Promise<T> {
    await mkdir(this.dataDir, { recursive: true });
    const release = await acquireLock(join(this.dataDir, 'catalog.lock'), { timeoutMs: 30_000 });
    try {
      this.cache = undefined;
      const data = structuredClone(await this.read());
      const r = await fn(data);
      await writeFileAtomic(this.path, JSON.stringify(data, null, 1) + '\n');
      this.cache = undefined;
      return r;
    } finally {
      await release();
    }
  }

  blobPath(sha256: string): string {
    return join(this.dataDir, 'blobs', 'sha256', sha256);
  }

  async putBlob(path: string): Promise<{ sha256: string; size: number; added: boolean }> {
    const dir = join(this.dataDir, 'blobs', 'sha256');
    await mkdir(dir, { recursive: true });
    const tmpTarget = tempPathFor(join(dir, 'upload'));
    const h = createHash('sha256');
    let size = 0;
    await withAtomicFile(tmpTarget, {}, async (fh) => {
      for await (const chunk of createReadStream(path, {
        highWaterMark: 1024 * 1024,
      }) as AsyncIterable<Buffer>) {
        h.update(chunk);
        size += chunk.length;
        await fh.write(chunk);
      }
    }).catch((e: unknown) => {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'EISDIR' || code === 'EACCES')
        throw bad(`${path} cannot be read (${code})`);
      throw e;
    });
    const sha256 = h.digest('hex');
    let added = true;
    try {
      await link(tmpTarget, this.blobPath(sha256)); // already stored: same bytes, keep the first
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      added = false;
    } finally {
      await rm(tmpTarget, { force: true });
    }
    await fsyncDir(dir);
    return { sha256, size, added };
  }

  async dropBlob(sha256: string): Promise<void> {
    await rm(this.blobPath(sha256), { force: true });
  }
}

/** sha256 and size of a file, read once (nothing stored). */
export async function hashFile(path: string): Promise<{ sha256: string; size: number }> {
  const h = createHash('sha256');
  let size = 0;
  try {
    for await (const chunk of createReadStream(path, {
      highWaterMark: 1024 * 1024,
    }) as AsyncIterable<Buffer>) {
      h.update(chunk);
      size += chunk.length;
    }
  } catch (e) {
    throw bad(`${path} cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  return { sha256: h.digest('hex'), size };
}

/** Refuses an artifact whose name, kind and version are registered with other bytes. */
export function checkArtifactConflict(c: CatalogData, meta: ArtifactMeta, sha256: string): void {
  const key = artifactKey(meta);
  const prev = own(c.artifacts, key);
  if (prev && prev.sha256 !== sha256)
    throw bad(
      `artifact ${key} is already registered with other bytes (${prev.sha256.slice(0, 12)}…); give it a new version`,
    );
}

/** Registers an artifact (bytes already stored); the same name, kind and version with other bytes is refused. */
export function addArtifact(
  c: CatalogData,
  meta: ArtifactMeta,
  blob: { sha256: string; size: number },
  actor: string,
  now: Date,
): ArtifactRecord {
  const rec: ArtifactRecord = {
    ...meta,
    sha256: blob.sha256,
    size: blob.size,
    uploadedAt: now.toISOString(),
    uploadedBy: actor,
  };
  const key = artifactKey(rec);
  checkArtifactConflict(c, meta, rec.sha256);
  const prev = own(c.artifacts, key);
  if (!prev) c.artifacts[key] = rec;
  return prev ?? rec;
}

/** Registers a release of artifacts already in the catalog, by key. */
export function addRelease(
  c: CatalogData,
  name: string,
  version: string,
  keys: string[],
  actor: string,
  now: Date,
): ReleaseRecord {
  checkName(name, 'release name');
  if (!NAME.test(version)) throw bad('release version must be a version name');
  if (keys.length === 0) throw bad('a release needs at least one artifact');
  const key = releaseKey(name, version);
  if (own(c.releases, key))
    throw new ServerError('RELEASE_EXISTS', `release ${key} already exists; releases never change`);
  const artifacts: Artifact[] = [];
  const names = new Set<string>();
  for (const k of keys) {
    const a = own(c.artifacts, k);
    if (!a) throw bad(`no artifact ${k}`);
    if (names.has(a.name)) throw bad(`two artifacts named ${a.name} in one release`);
    names.add(a.name);
    const art: Artifact & Partial<ArtifactRecord> = { ...a };
    delete art.uploadedAt;
    delete art.uploadedBy;
    artifacts.push(art);
  }
  const agents = artifacts.filter((a) => a.kind === 'agent');
  if (new Set(agents.map((a) => a.version)).size > 1)
    throw bad('the agent builds of a release share one version');
  if (new Set(agents.map((a) => a.platform ?? '')).size !== agents.length)
    throw bad('one agent build per platform in a release');
  return (c.releases[key] = { name, version, artifacts, createdAt: now.toISOString(), createdBy: actor });
}

export function siteOf(c: CatalogData, name: string): SiteRecord {
  const s = own(c.sites, name);
  if (!s) throw new ServerError('UNKNOWN_SITE', `no site ${name} (ferry server site add)`);
  return s;
}

export function releaseOf(c: CatalogData, key: string): ReleaseRecord {
  const r = own(c.releases, key);
  if (!r) throw new ServerError('UNKNOWN_RELEASE', `no release ${key} (name@version)`);
  return r;
}

/** Registers a site, or updates one: a publisher given replaces its own, a later sequence raises its counter. */
export function addSite(
  c: CatalogData,
  name: string,
  publisher: string | undefined,
  sequence: number,
  now: Date,
): SiteRecord {
  checkName(name, 'site name');
  if (publisher !== undefined) checkName(publisher, 'publisher');
  if (!Number.isSafeInteger(sequence) || sequence < 0) throw bad('sequence must be a whole number ≥ 0');
  const prev = own(c.sites, name);
  if (prev) {
    // registering again may say the site has seen a later sequence (never an earlier one)
    if (sequence > prev.sequence) prev.sequence = sequence;
    if (publisher !== undefined) prev.publisher = publisher;
    return prev;
  }
  return (c.sites[name] = {
    name,
    publisher: publisher ?? 'ferry-server',
    sequence,
    plan: null,
    pins: {},
    updateNow: [],
    groups: {},
    createdAt: now.toISOString(),
  });
}

/** Reads a small file an operator names (a release spec): refuses anything over `max` bytes. */
export async function readSmallFile(path: string, max: number): Promise<Buffer> {
  const st = await stat(path).catch(() => undefined);
  if (!st?.isFile()) throw bad(`${path} is not a readable file`);
  if (st.size > max) throw bad(`${path} is larger than ${max} bytes`);
  return readFile(path);
}
