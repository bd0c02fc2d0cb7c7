/**
 * A site's next bundle: the release's artifacts, the site's next sequence, the rollout plan of the
 * chosen strategy, the site's pins plus its "update now" marks. Signed with the key the server holds,
 * or left unsigned for an offline signing station (`ferry bundle sign` there, then
 * `ferry server bundle import` records the signed file). The catalog changes only once the file is
 * in place; a refusal changes nothing.
 */
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { mkdir } from 'node:fs/promises';
import { serializeEnvelope, signEnvelope, type Signer } from '../core/dsse.js';
import { decodeBase64Strict } from '../core/encoding.js';
import { MANIFEST_ENTRY } from '../core/bundle/reader.js';
import { BLOCK, decodeHeader } from '../core/bundle/tar.js';
import { FerryError } from '../core/errors.js';
import {
  assertManifest,
  MANIFEST_PAYLOAD_TYPE,
  parseManifestEnvelope,
  MAX_MANIFEST_BYTES,
  type Manifest,
  type Rollout,
} from '../core/manifest.js';
import { rolloutIdOf } from '../core/rollout/plan.js';
import { isoUtc, resolveExpiry } from '../core/time.js';
import { checkBundleFile } from '../platform/bundle-file.js';
import { bundleSize, writeBundleFromStore } from '../platform/bundle-write.js';
import type { AuditLog } from './audit.js';
import { releaseOf, siteOf, type BundleRecord, type Catalog, type Strategy } from './catalog.js';
import { ServerError } from './errors.js';

/** The canary plan a staggered or manual rollout gets when the site has none of its own. */
export const DEFAULT_WAVES = [
  { percent: 5, soakMinutes: 30 },
  { percent: 25, soakMinutes: 60 },
  { percent: 100 },
];
export const DEFAULT_MAX_FAILURE_RATE = 0.1;

export function planFor(strategy: Strategy, agent: string, prev: Rollout | null): Rollout {
  if (strategy === 'immediate') return { agent, strategy, waves: [{ percent: 100 }] };
  const waves = prev && prev.waves.length > 1 ? prev.waves : DEFAULT_WAVES;
  return {
    agent,
    strategy,
    waves: waves.map((w) => ({ ...w })),
    maxFailureRate: prev?.maxFailureRate ?? DEFAULT_MAX_FAILURE_RATE,
    ...(prev?.window && { window: prev.window }),
  };
}

export interface BuildOptions {
  site: string;
  release: string;
  strategy: Strategy;
  /** Where to write; default `bundles/<site>-<sequence>.ferry` in the data directory. */
  out?: string;
  /** null: unsigned, for an offline signing station. */
  signer: Signer | null;
  expires?: string;
  actor: string;
  now?: Date;
  /** Pins written into the site's record before the bundle is built, in the same change (a rollback's). */
  setPins?: Record<string, string>;
  /** Blobs the site already holds (from an inventory): left out of the bundle. */
  have?: { blobs: ReadonlySet<string>; from: 'file' | 'last'; mirror: string; created: string };
  /** Split into volumes of at most this many bytes each. */
  volumeSize?: number;
}

/** Builds, writes, then records the bundle and the site's new sequence; audited. */
export async function buildSiteBundle(
  catalog: Catalog,
  audit: AuditLog,
  dataDir: string,
  o: BuildOptions,
): Promise<{ record: BundleRecord; manifest: Manifest }> {
  const now = o.now ?? new Date();
  const record = await catalog.update(async (c) => {
    const site = siteOf(c, o.site);
    const release = releaseOf(c, o.release);
    const agent = release.artifacts.find((a) => a.kind === 'agent');
    const sequence = site.sequence + 1;
    if (o.setPins) Object.assign(site.pins, o.setPins);
    const pins: Record<string, string> = { ...site.pins };
    if (agent) for (const id of site.updateNow) pins[`agent:${id}`] = agent.version;
    const manifest: Manifest = {
      type: 'ferry.manifest/v1',
      publisher: site.publisher,
      sequence,
      created: isoUtc(now.getTime()),
      expires: resolveExpiry(o.expires ?? '90d', now.getTime(), 'expires'),
      sites: [site.name],
      artifacts: release.artifacts.map((a) => ({ ...a })),
    };
    const plan = agent ? planFor(o.strategy, agent.version, site.plan) : null;
    if (plan) manifest.rollout = plan;
    if (Object.keys(pins).length) manifest.pins = pins;
    try {
      assertManifest(manifest);
    } catch (e) {
      throw new ServerError('BAD_INPUT', `the bundle would not be valid: ${(e as Error).message}`);
    }
    const payload = Buffer.from(JSON.stringify(manifest));
    const envelope = signEnvelope(MANIFEST_PAYLOAD_TYPE, payload, o.signer ? [o.signer] : []);
    const out = o.out ? resolve(o.out) : join(dataDir, 'bundles', `${site.name}-${sequence}.ferry`);
    if (!o.out) await mkdir(join(dataDir, 'bundles'), { recursive: true });
    const all = manifest.artifacts.map((a) => ({
      sha256: a.sha256,
      size: a.size,
      path: catalog.blobPath(a.sha256),
    }));
    const blobs = o.have ? all.filter((b) => !o.have!.blobs.has(b.sha256)) : all;
    const envelopeBytes = Buffer.from(serializeEnvelope(envelope));
    const written = await writeBundleFromStore(
      out,
      envelopeBytes,
      blobs,
      Math.floor(now.getTime() / 1000),
      o.volumeSize !== undefined ? { volumeSize: o.volumeSize } : {},
    );
    const omitted = new Set(all.filter((b) => o.have?.blobs.has(b.sha256)).map((b) => b.sha256));
    const rec: BundleRecord = {
      id: `${site.name}-${sequence}`,
      site: site.name,
      release: o.release,
      sequence,
      strategy: o.strategy,
      file: out,
      bytes: written.bytes,
      payloadSha256: createHash('sha256').update(payload).digest('hex'),
      signatures: envelope.signatures.length,
      status: o.signer ? 'signed' : 'unsigned',
      builtAt: now.toISOString(),
      builtBy: o.actor,
      ...(plan && { plan, rolloutId: rolloutIdOf(manifest) }),
      ...(written.volumes.length > 1 && { volumes: written.volumes.map((v) => v.path) }),
      ...(o.have && {
        delta: {
          from: o.have.from,
          mirror: o.have.mirror,
          created: o.have.created,
          omitted: omitted.size,
          fullBytes: bundleSize(envelopeBytes, all),
        },
      }),
    };
    site.sequence = sequence;
    if (plan) site.plan = plan;
    site.updateNow = [];
    c.bundles.push(rec);
    return { rec, manifest };
  });
  await audit.append(o.actor, 'bundle.built', {
    bundle: record.rec.id,
    site: o.site,
    release: o.release,
    sequence: record.rec.sequence,
    strategy: o.strategy,
    signed: o.signer !== null,
    ...(o.signer && { keyid: o.signer.keyid }),
    bytes: record.rec.bytes,
    ...(record.rec.delta && {
      delta: `${record.rec.delta.omitted} blob(s) left out (inventory of ${record.rec.delta.created}); full ${record.rec.delta.fullBytes} bytes`,
    }),
    ...(record.rec.volumes && { volumes: record.rec.volumes.length }),
  });
  return { record: record.rec, manifest: record.manifest };
}

/** The manifest envelope of a bundle file: the first entry, read without reading the rest. */
async function readEnvelope(path: string) {
  await checkBundleFile(path);
  const fh = await open(path, 'r');
  try {
    const head = Buffer.alloc(BLOCK);
    await fh.read(head, 0, BLOCK, 0);
    const h = decodeHeader(head);
    if (h.name !== MANIFEST_ENTRY || h.size > MAX_MANIFEST_BYTES)
      throw new FerryError('ENTRY_ORDER', `${path} does not start with a manifest`);
    const bytes = Buffer.alloc(h.size);
    const { bytesRead } = await fh.read(bytes, 0, h.size, BLOCK);
    if (bytesRead !== h.size) throw new FerryError('TAR_TRUNCATED', `${path} ends inside the manifest`);
    return parseManifestEnvelope(bytes);
  } finally {
    await fh.close();
  }
}

/**
 * Records a bundle signed elsewhere: its manifest payload must be byte for byte the one the server
 * built (BUNDLE_MISMATCH otherwise), and it must carry at least one signature. Audited.
 */
export async function importSignedBundle(
  catalog: Catalog,
  audit: AuditLog,
  path: string,
  actor: string,
  now = new Date(),
): Promise<BundleRecord> {
  const env = await readEnvelope(path);
  const payload = decodeBase64Strict(env.payload, 'manifest payload');
  const digest = createHash('sha256').update(payload).digest('hex');
  const rec = await catalog.update((c) => {
    const b = c.bundles.find((x) => x.payloadSha256 === digest);
    if (!b)
      throw new ServerError(
        'BUNDLE_MISMATCH',
        `${path} is not a bundle this server built (its manifest differs from every one)`,
      );
    if (env.signatures.length === 0)
      throw new ServerError('BUNDLE_MISMATCH', `${path} carries no signature yet (ferry bundle sign)`);
    b.signatures = env.signatures.length;
    b.status = 'imported';
    b.file = resolve(path);
    b.importedAt = now.toISOString();
    return { ...b };
  });
  await audit.append(actor, 'bundle.imported', {
    bundle: rec.id,
    site: rec.site,
    signatures: rec.signatures,
    file: rec.file,
  });
  return rec;
}
