/**
 * Every change an operator makes through the UI, the API or the CLI, in one place: checked, applied
 * to the catalog (all or nothing), then written to the audit log with who did it. Callers check the
 * actor's role first; these check the input.
 */
import { isSemver } from '../core/semver.js';
import { resolveExpiry } from '../core/time.js';
import { loadPrivateKey, type PrivateKey } from '../platform/keyfile.js';
import { join } from 'node:path';
import type { AuditLog } from './audit.js';
import {
  addArtifact,
  addRelease,
  addSite,
  checkArtifactMeta,
  checkName,
  siteOf,
  STRATEGIES,
  type ArtifactRecord,
  type Catalog,
  type ReleaseRecord,
  type SiteRecord,
  type Strategy,
} from './catalog.js';
import { ServerError } from './errors.js';
import { buildSiteBundle, type BuildOptions } from './site-bundle.js';
import { checkPolicyFile, checkReleasePolicies } from './policy-check.js';
import { checkInventory, lastInventoryBlobs } from './site-inventory.js';
import { MirrorRegistry } from './mirrors.js';
import { readFile, stat } from 'node:fs/promises';
import type { ServerState } from './fleet-state.js';

const bad = (m: string) => new ServerError('BAD_INPUT', m);
const AGENT_ID = /^[0-9a-f]{32}$/;
export const MAX_BULK = 10_000;

export interface Ctx {
  dataDir: string;
  catalog: Catalog;
  audit: AuditLog;
  actor: string;
  now?: Date;
}

/** Stores an uploaded or named file by digest and registers it as an artifact. */
export async function storeArtifact(
  c: Ctx,
  meta: Record<string, unknown>,
  path: string,
): Promise<ArtifactRecord> {
  const m = checkArtifactMeta(meta);
  if (m.kind === 'policy') await checkPolicyFile(path, `policy ${m.name}@${m.version}`);
  const blob = await c.catalog.putBlob(path);
  let rec: ArtifactRecord;
  try {
    rec = await c.catalog.update((d) => addArtifact(d, m, blob, c.actor, c.now ?? new Date()));
  } catch (e) {
    if (blob.added) await c.catalog.dropBlob(blob.sha256); // refused: the store is as it was
    throw e;
  }
  await c.audit.append(c.actor, 'artifact.stored', {
    kind: rec.kind,
    name: rec.name,
    version: rec.version,
    sha256: rec.sha256,
    size: rec.size,
  });
  return rec;
}

export async function registerRelease(
  c: Ctx,
  name: unknown,
  version: unknown,
  keys: unknown,
): Promise<ReleaseRecord> {
  if (typeof name !== 'string' || typeof version !== 'string')
    throw bad('release name and version are required');
  if (!Array.isArray(keys) || !keys.every((k) => typeof k === 'string'))
    throw bad('artifacts must be a list of artifact keys');
  const rec = await c.catalog.update(async (d) => {
    const r = addRelease(d, name, version, keys, c.actor, c.now ?? new Date());
    await checkReleasePolicies(r.artifacts, (h) => c.catalog.blobPath(h));
    return r;
  });
  await c.audit.append(c.actor, 'release.registered', {
    release: `${rec.name}@${rec.version}`,
    artifacts: rec.artifacts.map((a) => `${a.kind}:${a.name}@${a.version}:${a.sha256.slice(0, 12)}`),
  });
  return rec;
}

export async function registerSite(
  c: Ctx,
  name: unknown,
  publisher: unknown,
  sequence: unknown,
): Promise<SiteRecord> {
  const site = checkName(name, 'site name');
  // no publisher given: a new site gets the default, a known one keeps its own
  const pub = publisher === undefined || publisher === '' ? undefined : checkName(publisher, 'publisher');
  const seq = sequence === undefined || sequence === '' ? 0 : Number(sequence);
  if (
    !Number.isSafeInteger(seq) ||
    seq < 0 ||
    (typeof sequence === 'string' && sequence !== '' && !/^\d+$/.test(sequence))
  )
    throw bad('sequence must be a whole number ≥ 0 (the last sequence the site has seen)');
  const prev = (await c.catalog.read()).sites;
  const before = Object.hasOwn(prev, site) ? { ...prev[site]! } : undefined;
  const rec = await c.catalog.update((d) => addSite(d, site, pub, seq, c.now ?? new Date()));
  if (before === undefined || rec.sequence !== before.sequence || rec.publisher !== before.publisher)
    await c.audit.append(c.actor, 'site.registered', {
      site,
      publisher: rec.publisher,
      sequence: rec.sequence,
      ...(before && { was: `${before.publisher}@${before.sequence}` }),
    });
  return rec;
}

/** `group:NAME` or `agent:ID` pinned to a version in the site's next bundles; an empty version removes the pin. */
export async function setPin(c: Ctx, site: string, target: unknown, version: unknown): Promise<void> {
  if (
    typeof target !== 'string' ||
    !/^(group:[A-Za-z0-9][A-Za-z0-9._-]{0,63}|agent:[0-9a-f]{32})$/.test(target)
  )
    throw bad('pin target must be group:NAME or agent:ID');
  if (version !== '' && !isSemver(version))
    throw bad('pin version must be a semver version (empty removes the pin)');
  await c.catalog.update((d) => {
    const s = siteOf(d, site);
    if (version === '') delete s.pins[target];
    else s.pins[target] = version;
  });
  await c.audit.append(c.actor, 'pin', { site, target, version: version });
}

export type BulkAction = 'pin' | 'group' | 'update-now';

/**
 * One action on many agents, all of one known site each: pin them to a version, move them to a
 * group, or mark them for "update now" in their site's next bundle.
 */
export async function bulk(
  c: Ctx,
  state: ServerState,
  action: unknown,
  ids: unknown,
  value: unknown,
): Promise<number> {
  if (action !== 'pin' && action !== 'group' && action !== 'update-now')
    throw bad('action must be pin, group or update-now');
  if (!Array.isArray(ids) || ids.length === 0 || ids.length > MAX_BULK)
    throw bad(`select 1-${MAX_BULK} agents`);
  const uniq = [...new Set(ids as unknown[])];
  for (const id of uniq)
    if (typeof id !== 'string' || !AGENT_ID.test(id) || !Object.hasOwn(state.agents, id))
      throw bad(`no agent ${String(id)}`);
  if (action === 'pin' && !isSemver(value)) throw bad('pin needs a semver version');
  if (action === 'group') checkName(value, 'group');
  const bySite = new Map<string, string[]>();
  for (const id of uniq as string[]) {
    const site = state.agents[id]!.site;
    bySite.set(site, [...(bySite.get(site) ?? []), id]);
  }
  await c.catalog.update((d) => {
    for (const [site, list] of bySite) {
      const s = siteOf(d, site);
      for (const id of list) {
        if (action === 'pin') s.pins[`agent:${id}`] = value as string;
        else if (action === 'group') s.groups[id] = value as string;
        else if (!s.updateNow.includes(id)) s.updateNow.push(id);
      }
    }
  });
  const auditAction = action === 'pin' ? 'pin' : action === 'group' ? 'group.moved' : 'update-now';
  await c.audit.append(c.actor, auditAction, {
    agents: uniq.length,
    sites: [...bySite.keys()],
    first: (uniq as string[]).slice(0, 5),
    ...(action !== 'update-now' && { value: value as string }),
  });
  return uniq.length;
}

/**
 * What the site already holds: the inventory file given (checked: a registered mirror of this site
 * signed it), or else the site's last known inventory; undefined when there is none.
 */
async function haveOf(
  c: Ctx,
  site: string,
  path: string | undefined,
): Promise<BuildOptions['have'] | undefined> {
  const registry = await MirrorRegistry.open(c.dataDir);
  if (path === undefined) {
    const last = await lastInventoryBlobs(c.catalog, c.dataDir, site, registry);
    return (
      last && {
        blobs: last.blobs,
        from: 'last',
        mirror: last.inventory.mirror,
        created: last.inventory.created,
      }
    );
  }
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (e) {
    throw bad(`${path} cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  const { inventory, mirror } = checkInventory(bytes, registry);
  if (inventory.site !== site)
    throw new ServerError('WRONG_SITE', `${path} is the inventory of site ${inventory.site}, not ${site}`);
  return { blobs: new Set(inventory.blobs), from: 'file', mirror: mirror.id, created: inventory.created };
}

/** The key the server signs bundles with: `signing/bundle.key` in the data directory, if present. */
export async function serverSigningKey(dataDir: string): Promise<PrivateKey | undefined> {
  const path = join(dataDir, 'signing', 'bundle.key');
  if (!(await stat(path).catch(() => undefined))) return undefined;
  return loadPrivateKey(path);
}

export async function buildBundle(
  c: Ctx,
  site: unknown,
  release: unknown,
  strategy: unknown,
  o: {
    signed: boolean;
    key?: PrivateKey;
    out?: string;
    expires?: string;
    setPins?: Record<string, string>;
    /** An inventory file: leave out the blobs it lists. */
    have?: string;
    /** Every blob, even when the site's last known inventory lists some. */
    full?: boolean;
    volumeSize?: number;
  },
) {
  if (typeof site !== 'string' || typeof release !== 'string') throw bad('site and release are required');
  const strat = strategy === undefined || strategy === '' ? 'staggered' : strategy;
  if (!STRATEGIES.includes(strat as Strategy)) throw bad('strategy must be immediate, staggered or manual');
  if (o.expires !== undefined)
    try {
      resolveExpiry(o.expires, Date.now(), 'expires');
    } catch (e) {
      throw bad((e as Error).message);
    }
  let signer: PrivateKey | null = null;
  if (o.signed) {
    const key = o.key ?? (await serverSigningKey(c.dataDir));
    if (!key)
      throw new ServerError(
        'NO_SIGNING_KEY',
        'no signing key: put one at signing/bundle.key in the data directory, pass --key, or build it unsigned',
      );
    signer = key;
  }
  if (o.have !== undefined && o.full) throw bad('--have and --full exclude each other');
  if (o.volumeSize !== undefined && (!Number.isSafeInteger(o.volumeSize) || o.volumeSize < 4096))
    throw bad('volume size must be at least 4 KiB');
  const have = o.full ? undefined : await haveOf(c, site, o.have);
  return buildSiteBundle(c.catalog, c.audit, c.dataDir, {
    site,
    release,
    strategy: strat as Strategy,
    signer,
    actor: c.actor,
    ...(have && { have }),
    ...(o.volumeSize !== undefined && { volumeSize: o.volumeSize }),
    ...(o.out && { out: o.out }),
    ...(o.expires && { expires: o.expires }),
    ...(o.setPins && { setPins: o.setPins }),
    ...(c.now && { now: c.now }),
  });
}
