/**
 * A site's last known inventory: the signed list of blobs its mirror holds (core/inventory.ts), carried
 * home beside a telemetry export. Checked against the registered mirror's key and site before anything
 * is kept; the newest per site (by its own signed `created` time, then its active sequence) is kept as
 * `inventories/<site>.inventory.json` and summarised on the site record, where the site's next bundle
 * finds it (server/site-bundle.ts). An older one never replaces a newer one. A refusal changes nothing.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isCodedError } from '../core/errors.js';
import { readInventory, type InventoryPayload } from '../core/inventory.js';
import { mirrorIdOf } from '../core/telemetry.js';
import { parseIsoUtc } from '../core/time.js';
import { writeFileAtomic } from '../platform/fsx.js';
import type { AuditLog } from './audit.js';
import type { Catalog, SiteInventory } from './catalog.js';
import { ServerError } from './errors.js';
import type { MirrorInfo } from './ingest.js';

export const inventoryPath = (dataDir: string, site: string) =>
  join(dataDir, 'inventories', `${site}.inventory.json`);

export interface InventoryOutcome {
  site: string;
  mirror: string;
  created: string;
  blobs: number;
  active: number | null;
  /** `kept`: now the site's last known inventory; `older`: a newer one was already kept. */
  status: 'kept' | 'older' | 'same';
}

/** Checks an inventory's signature, that a registered mirror signed it and that it is that mirror's site. */
export function checkInventory(
  bytes: Uint8Array,
  registry: { get(id: string): MirrorInfo | undefined },
): { inventory: InventoryPayload; mirror: MirrorInfo } {
  let inventory: InventoryPayload;
  try {
    inventory = readInventory(bytes);
  } catch (e) {
    if (isCodedError(e))
      throw new ServerError('BAD_INVENTORY', `the inventory does not verify: ${e.message}`, { cause: e });
    throw e;
  }
  const id = mirrorIdOf(Buffer.from(inventory.publicKey, 'hex'));
  const mirror = registry.get(id);
  if (!mirror)
    throw new ServerError(
      'UNKNOWN_MIRROR',
      `the inventory is signed by mirror ${id}, which is not registered`,
    );
  if (mirror.site !== inventory.site)
    throw new ServerError(
      'WRONG_SITE',
      `the inventory names site ${inventory.site}, but mirror ${id} is registered for ${mirror.site}`,
    );
  return { inventory, mirror };
}

/** Orders two inventories of one site by their own signed time, then by their active sequence. */
function newer(a: InventoryPayload, b: SiteInventory): number {
  const t = parseIsoUtc(a.created)! - parseIsoUtc(b.created)!;
  if (t !== 0) return t;
  return (a.active?.sequence ?? 0) - (b.active ?? 0);
}

/** Keeps `bytes` as its site's last known inventory when it is newer than the one kept; audited. */
export async function recordInventory(
  catalog: Catalog,
  audit: AuditLog,
  dataDir: string,
  bytes: Uint8Array,
  registry: { get(id: string): MirrorInfo | undefined },
  o: { actor: string; via: string; now?: Date },
): Promise<InventoryOutcome> {
  const { inventory, mirror } = checkInventory(bytes, registry);
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  const base = {
    site: inventory.site,
    mirror: mirror.id,
    created: inventory.created,
    blobs: inventory.blobs.length,
    active: inventory.active?.sequence ?? null,
  };
  const status = await catalog.update(async (c) => {
    if (!Object.hasOwn(c.sites, inventory.site))
      throw new ServerError('UNKNOWN_SITE', `no site ${inventory.site} (ferry server site add)`);
    const site = c.sites[inventory.site]!;
    const prev = site.inventory;
    if (prev?.sha256 === sha256) return 'same' as const;
    if (prev && newer(inventory, prev) <= 0) return 'older' as const;
    const path = inventoryPath(dataDir, inventory.site);
    await mkdir(join(dataDir, 'inventories'), { recursive: true });
    await writeFileAtomic(path, Buffer.from(bytes));
    site.inventory = {
      mirror: mirror.id,
      created: inventory.created,
      active: inventory.active?.sequence ?? null,
      blobs: inventory.blobs.length,
      sha256,
      receivedAt: (o.now ?? new Date()).toISOString(),
      via: o.via,
    };
    return 'kept' as const;
  });
  if (status === 'kept') await audit.append(o.actor, 'inventory.received', { ...base, via: o.via, sha256 });
  return { ...base, status };
}

/** The digests of a site's last known inventory, read back and checked again; undefined when none. */
export async function lastInventoryBlobs(
  catalog: Catalog,
  dataDir: string,
  site: string,
  registry: { get(id: string): MirrorInfo | undefined },
): Promise<{ blobs: Set<string>; inventory: SiteInventory } | undefined> {
  const c = await catalog.read();
  const rec = Object.hasOwn(c.sites, site) ? c.sites[site]?.inventory : undefined;
  if (!rec) return undefined;
  const bytes = await readFile(inventoryPath(dataDir, site));
  const { inventory } = checkInventory(bytes, registry);
  return { blobs: new Set(inventory.blobs), inventory: rec };
}
