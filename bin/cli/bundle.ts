import { readFile, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { FerryError } from '../../core/errors.js';
import { loadAnyKey, loadPrivateKey } from '../../platform/keyfile.js';
import { readInventory } from '../../core/inventory.js';
import { peekRootPayload } from '../../core/root.js';
import { parseEnvelope } from '../../core/dsse.js';
import { createBundle } from '../../bundler/create.js';
import { blobDigestsIn } from '../../bundler/entries.js';
import { readBundle, type BundleContents } from '../../core/bundle/reader.js';
import { checkBundleFile } from '../../platform/bundle-file.js';
import { fileSource, inputFileError } from '../../platform/fsx.js';
import { PlatformError } from '../../platform/errors.js';
import { signBundle } from '../../bundler/sign.js';
import { loadSpec } from '../../bundler/spec.js';
import { readRootFile } from './trust.js';
import {
  humanBytes,
  jsonOption,
  list,
  parseSize,
  printJson,
  progressBar,
  str,
  withProgress,
  type Command,
  type Io,
} from './common.js';

export const bundleCreate: Command = {
  summary:
    'Builds a signed bundle from a spec (paths relative to the spec file). Each --key signs the manifest.\n' +
    '--volume-size splits the bundle into self-verifying volumes; --base omits blobs an older bundle carries;\n' +
    '--root adds a root envelope so that sites can walk a rotation. Every policy is checked as agents check\n' +
    'it, and must name only scripts and files the spec carries: otherwise POLICY_INVALID (or POLICY_TOO_LARGE)\n' +
    'names the policy, field and reason, and nothing is written. Spec format: docs/spec-format.md.\n' +
    "--have INVENTORY (a site's signed inventory, carried home beside its telemetry export) omits every blob\n" +
    'the site already holds and says how many bytes the courier saves; --mirror-key MIRROR.pub checks it was\n' +
    "that site's mirror that signed it. An inventory for a site the spec does not name is refused.",
  usage:
    '--spec SPEC.json --key K... --out FILE.ferry [--volume-size 4G] [--base OLD.ferry]... [--have INVENTORY [--mirror-key MIRROR.pub]] [--root ROOT.json]... [--json]',
  options: {
    spec: { type: 'string' },
    key: { type: 'string', multiple: true },
    out: { type: 'string' },
    'volume-size': { type: 'string' },
    base: { type: 'string', multiple: true },
    have: { type: 'string' },
    'mirror-key': { type: 'string' },
    root: { type: 'string', multiple: true },
    ...jsonOption,
  },
  async run(p, io) {
    const out = str(p, 'out');
    const volumeSize = p.values['volume-size'] ? parseSize(str(p, 'volume-size'), 'volume-size') : undefined;
    const bases = list(p, 'base', false);
    // where the bundle goes and what it is based on are checked before any key or spec is read
    await checkOutPath(out);
    for (const b of bases) await checkBundleFile(b);
    const signers = await Promise.all(list(p, 'key').map((k) => loadPrivateKey(k)));
    const roots = await Promise.all(
      list(p, 'root', false).map(async (path) => {
        const bytes = await readFile(path);
        return { version: peekRootPayload(parseEnvelope(bytes, path)).version, bytes };
      }),
    );
    const spec = await loadSpec(str(p, 'spec'), Date.now());
    const have = await haveDigests(str(p, 'have', false), str(p, 'mirror-key', false), spec.manifest.sites);
    const baseBlobs =
      bases.length > 0 || have ? new Set([...(await baseDigests(bases)), ...(have ?? [])]) : undefined;
    const bar = progressBar(io, 'bundling', { quiet: p.json });
    const r = await withProgress(bar, () =>
      createBundle(spec, out, {
        signers,
        roots,
        ...(volumeSize !== undefined && { volumeSize }),
        ...(baseBlobs && { baseBlobs }),
        onProgress: (done, total) => bar.update(done, total),
      }),
    );
    if (p.json) {
      printJson(io, {
        ok: true,
        publisher: r.manifest.publisher,
        sequence: r.manifest.sequence,
        expires: r.manifest.expires,
        signers: signers.map((s) => s.keyid),
        artifacts: r.manifest.artifacts,
        volumes: r.volumes,
        omitted: r.omitted,
        ...(have && { saved: savedBytes(r) }),
      });
      return 0;
    }
    io.out(
      `${r.manifest.publisher} sequence ${r.manifest.sequence}, ${r.manifest.artifacts.length} artifact(s), expires ${r.manifest.expires}`,
    );
    for (const v of r.volumes)
      io.out(`  wrote ${v.path} (${humanBytes(v.bytes)}, ${v.blobs.length} blob(s))`);
    if (r.omitted.length) io.out(`  omitted ${r.omitted.length} blob(s) the site already has`);
    if (have) {
      const s = savedBytes(r);
      io.out(
        `  the courier saves ${humanBytes(s.bytes)} (${s.bytes} bytes): ${humanBytes(s.written)} to carry instead of ${humanBytes(s.full)}`,
      );
    }
    return 0;
  },
};

/** Blob bytes the delta leaves out, against the blob bytes a full bundle would carry. */
function savedBytes(r: Awaited<ReturnType<typeof createBundle>>): {
  bytes: number;
  written: number;
  full: number;
} {
  const sizes = new Map(r.manifest.artifacts.map((a) => [a.sha256, a.size]));
  const full = [...sizes.values()].reduce((n, x) => n + x, 0);
  const bytes = r.omitted.reduce((n, d) => n + (sizes.get(d) ?? 0), 0);
  return { bytes, written: full - bytes, full };
}

/** The digests a site's signed inventory says it holds (checked: signature, key, site). */
async function haveDigests(
  path: string,
  keyPath: string,
  sites: readonly string[],
): Promise<string[] | undefined> {
  if (!path) {
    if (keyPath) throw new FerryError('USAGE', '--mirror-key goes with --have');
    return undefined;
  }
  const key = keyPath ? (await loadAnyKey(keyPath)).publicKey : undefined;
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (e) {
    throw inputFileError(path, e);
  }
  const inv = readInventory(bytes, key);
  if (!sites.includes('*') && !sites.includes(inv.site))
    throw new FerryError(
      'SITE_MISMATCH',
      `${path} is the inventory of site ${inv.site}; this bundle is for ${sites.join(', ')}`,
    );
  return inv.blobs;
}

/** Blobs the site already has: every blob any base file (a bundle or any of its volumes) carries. */
async function baseDigests(paths: string[]): Promise<Set<string>> {
  const all = new Set<string>();
  for (const path of paths) for (const d of await blobDigestsIn(path)) all.add(d);
  return all;
}

/** --out names a file to create in a directory that exists: refused before any work is done. */
async function checkOutPath(out: string): Promise<void> {
  const st = await stat(out).catch(() => undefined);
  if (st?.isDirectory())
    throw new PlatformError(
      'NOT_A_FILE',
      `--out ${out} is a directory; expected a .ferry file path to write`,
    );
  const dir = dirname(resolve(out));
  const d = await stat(dir).catch((e: unknown) => {
    throw inputFileError(dir, e, 'a directory');
  });
  if (!d.isDirectory()) throw new PlatformError('NOT_A_FILE', `--out ${out}: ${dir} is not a directory`);
}

export const bundleSign: Command = {
  summary:
    'Adds one signature to a bundle (for thresholds held by different people). Everything after the manifest is copied unchanged.',
  usage: 'FILE.ferry --key K [--json]',
  options: { key: { type: 'string' }, ...jsonOption },
  positionals: { min: 1, max: 1 },
  async run(p, io) {
    const file = p.positionals[0]!;
    const r = await signBundle(file, await loadPrivateKey(str(p, 'key')));
    if (p.json) printJson(io, { ok: true, file, ...r });
    else io.out(`signed ${file} with ${r.keyid} (${r.signatures} signature(s) now)`);
    return 0;
  },
};

function reportJson(file: string, c: BundleContents): Record<string, unknown> {
  const held = new Set(c.blobs);
  const m = c.manifest;
  return {
    file,
    verified: c.verified,
    ...(c.verified
      ? {
          signers: c.signers,
          threshold: c.threshold,
          rootVersion: c.root?.payload.version,
          adoptedRoots: c.adoptedRoots,
        }
      : { claimedKeyids: c.envelope.signatures.map((s) => s.keyid ?? null) }),
    publisher: m.publisher,
    sequence: m.sequence,
    created: m.created,
    expires: m.expires,
    sites: m.sites,
    artifacts: m.artifacts.map((a) => ({ ...a, inThisFile: held.has(a.sha256) })),
    rollout: m.rollout ?? null,
    pins: m.pins ?? {},
    minAgentVersion: m.minAgentVersion ?? null,
    rootEntries: c.rootEntries.map((r) => r.version),
    blobs: c.blobs,
    missing: c.missing,
    complete: c.complete,
    bytes: c.bytes,
  };
}

function printHuman(io: Io, file: string, c: BundleContents): void {
  const m = c.manifest;
  const held = new Set(c.blobs);
  io.out(`${file}: ${m.publisher} sequence ${m.sequence}`);
  io.out(`  created ${m.created}, expires ${m.expires}, sites ${m.sites.join(', ')}`);
  if (c.verified) {
    io.out(
      `  signed by ${c.signers.length} of threshold ${c.threshold} under root v${c.root?.payload.version}: ${c.signers.join(', ')}`,
    );
    if (c.adoptedRoots.length) io.out(`  root rotated through v${c.adoptedRoots.join(', v')}`);
  } else {
    io.out(
      `  ${c.envelope.signatures.length} signature(s), NOT verified (use ferry bundle verify --trust root.json)`,
    );
  }
  for (const a of m.artifacts) {
    const what = [a.kind, a.version, a.platform, a.interpreter].filter(Boolean).join(' ');
    io.out(
      `  ${held.has(a.sha256) ? '+' : '-'} ${a.name} (${what}) ${humanBytes(a.size)} sha256:${a.sha256}`,
    );
  }
  if (m.rollout)
    io.out(
      `  rollout: agent ${m.rollout.agent} in waves ${m.rollout.waves.map((w) => `${w.percent}%`).join(' → ')}`,
    );
  io.out(
    c.complete
      ? `  complete: holds all ${c.blobs.length} blob(s)`
      : `  partial (volume or delta): holds ${c.blobs.length} blob(s), ${c.missing.length} travel separately`,
  );
}

export const bundleInspect: Command = {
  summary: 'Shows what a bundle contains, checking its structure and blob digests but NOT its signatures.',
  usage: 'FILE.ferry [--json]',
  options: { ...jsonOption },
  positionals: { min: 1, max: 1 },
  async run(p, io) {
    const file = p.positionals[0]!;
    const size = await checkBundleFile(file);
    const bar = progressBar(io, 'reading', { quiet: p.json });
    const c = await withProgress(bar, () =>
      readBundle(fileSource(file), { onProgress: (bytes) => bar.update(bytes, size) }),
    );
    if (p.json) printJson(io, { ok: true, ...reportJson(file, c) });
    else printHuman(io, file, c);
    return 0;
  },
};

export const bundleVerify: Command = {
  summary:
    'Verifies a bundle offline against a pinned trust root: signatures meet the bundle threshold (following\n' +
    'any root rotation the bundle carries), the manifest is valid and unexpired (and for --site, if given),\n' +
    'every blob present matches its digest and size, and nothing else is in the file. Exit 0 only if valid.',
  usage: 'FILE.ferry --trust root.json [--site S] [--json]',
  options: { trust: { type: 'string' }, site: { type: 'string' }, ...jsonOption },
  positionals: { min: 1, max: 1 },
  async run(p, io) {
    const file = p.positionals[0]!;
    const trusted = await readRootFile(str(p, 'trust'));
    const site = str(p, 'site', false) || undefined;
    const size = await checkBundleFile(file);
    const bar = progressBar(io, 'verifying', { quiet: p.json });
    let c: BundleContents;
    try {
      c = await withProgress(bar, () =>
        readBundle(fileSource(file), {
          trusted,
          ...(site && { site }),
          onProgress: (bytes) => bar.update(bytes, size),
        }),
      );
    } catch (e) {
      if (e instanceof FerryError) throw new FerryError(e.code, `${file}: ${e.message}`, { cause: e });
      throw e;
    }
    if (p.json) printJson(io, { ok: true, ...reportJson(file, c) });
    else {
      printHuman(io, file, c);
      io.out('OK: bundle verified');
    }
    return 0;
  },
};
