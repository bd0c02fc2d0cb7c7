/**
 * The signed inventory the courier carries home beside the telemetry export
 * (core/inventory.ts): the blobs this mirror holds, signed with its own key.
 */
import { readdir } from 'node:fs/promises';
import { serializeEnvelope } from '../core/dsse.js';
import { isSha256Hex } from '../core/encoding.js';
import { signInventory } from '../core/inventory.js';
import { isoUtc } from '../core/time.js';
import { writeFileAtomic } from '../platform/fsx.js';
import type { MirrorIdentity } from './identity.js';
import type { Store } from './store.js';

export interface InventorySummary {
  inventory: string;
  blobs: number;
  active: number | null;
}

/** Writes `out` (atomically): the store's blobs and active manifest, signed by the mirror. */
export async function writeInventory(
  store: Store,
  identity: MirrorIdentity,
  out: string,
): Promise<InventorySummary> {
  const state = await store.readState();
  const blobs = (await readdir(store.paths.blobs)).filter(isSha256Hex).sort();
  const env = signInventory(
    {
      type: 'ferry.inventory/v1',
      site: state.site,
      publicKey: Buffer.from(identity.key.publicKey).toString('hex'),
      created: isoUtc(Date.now()),
      active: state.active ? { sequence: state.active.sequence, digest: state.active.digest } : null,
      blobs,
    },
    identity.key,
  );
  await writeFileAtomic(out, serializeEnvelope(env), { mode: 0o644 });
  return { inventory: out, blobs: blobs.length, active: state.active?.sequence ?? null };
}
