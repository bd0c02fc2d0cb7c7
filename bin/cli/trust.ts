import { readFile } from 'node:fs/promises';
import { serializeEnvelope } from '../../core/dsse.js';
import { inputFileError, writeFileAtomic } from '../../platform/fsx.js';
import {
  isPrivate,
  loadAnyKey,
  loadPrivateKey,
  type PrivateKey,
  type PublicKey,
} from '../../platform/keyfile.js';
import {
  buildRootPayload,
  loadPinnedRoot,
  rootFingerprint,
  signRoot,
  trustPinnedRoot,
  verifyNextRoot,
  type RootPayload,
  type TrustedRoot,
} from '../../core/root.js';
import { isoUtc, resolveExpiry } from '../../core/time.js';
import { int, jsonOption, list, printJson, str, type Command, type Io } from './common.js';

async function loadKeys(paths: string[]): Promise<(PublicKey | PrivateKey)[]> {
  return Promise.all(paths.map((p) => loadAnyKey(p)));
}

async function readRootBytes(path: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (e) {
    throw inputFileError(path, e, 'a trust root (root.json)'); // NOT_FOUND, NOT_A_FILE or IO_ERROR
  }
}

export async function readRootFile(path: string): Promise<TrustedRoot> {
  return loadPinnedRoot(await readRootBytes(path));
}

function report(io: Io, json: boolean, out: string, payload: RootPayload, signers: number): void {
  const { root, bundle } = payload.roles;
  if (json) {
    printJson(io, {
      ok: true,
      out,
      version: payload.version,
      ...(payload.created !== undefined && { created: payload.created }),
      expires: payload.expires,
      roles: payload.roles,
      signatures: signers,
    });
    return;
  }
  io.out(`wrote ${out}: root v${payload.version}, expires ${payload.expires}`);
  io.out(
    `  root role:   ${root.threshold} of ${root.keyids.length} (${root.keyids.map((k) => k.slice(0, 12)).join(', ')})`,
  );
  io.out(
    `  bundle role: ${bundle.threshold} of ${bundle.keyids.length} (${bundle.keyids.map((k) => k.slice(0, 12)).join(', ')})`,
  );
}

/** Options shared by init and rotate: the roles, thresholds, expiry and output of the new root. */
const ROOT_OPTIONS = {
  'root-key': { type: 'string', multiple: true },
  'root-threshold': { type: 'string' },
  'bundle-key': { type: 'string', multiple: true },
  'bundle-threshold': { type: 'string' },
  expires: { type: 'string' },
  out: { type: 'string' },
  ...jsonOption,
} as const;

export const trustInit: Command = {
  summary:
    'Creates version 1 of a trust root. Root keys given as private .key files sign it; it must meet\n' +
    'its own root threshold. Bundle keys may be .pub or .key files. The root records when it was made\n' +
    '(signed `created`): agents and mirrors never judge expiry by a clock earlier than that.',
  usage:
    '--root-key K... --root-threshold N --bundle-key PUB... --bundle-threshold M --expires 365d --out root.json [--json]',
  options: {
    ...ROOT_OPTIONS,
  },
  async run(p, io) {
    const rootKeys = await loadKeys(list(p, 'root-key'));
    const bundleKeys = await loadKeys(list(p, 'bundle-key'));
    const out = str(p, 'out');
    const now = Date.now();
    const payload = buildRootPayload({
      version: 1,
      created: isoUtc(now), // signed time: agents and mirrors never trust a clock earlier than this
      expires: resolveExpiry(str(p, 'expires', false) || '365d', now),
      rootKeys,
      rootThreshold: int(p, 'root-threshold', 1),
      bundleKeys,
      bundleThreshold: int(p, 'bundle-threshold', 1),
    });
    const env = signRoot(payload, rootKeys.filter(isPrivate));
    trustPinnedRoot(env); // refuses unless a threshold of its own root keys signed
    await writeFileAtomic(out, serializeEnvelope(env));
    report(io, p.json, out, payload, env.signatures.length);
    return 0;
  },
};

export const trustRotate: Command = {
  summary:
    'Creates root v(N+1) from v(N). It must be signed by a threshold of the old root keys AND a\n' +
    'threshold of its own; give every private key that signs with --sign-key. Keys and thresholds not\n' +
    'given are carried over. A --bundle-key list without a stolen key is the way back from its compromise:\n' +
    'what that key alone signed stops binding once sites adopt the new root (carry it with bundle create --root).',
  usage:
    '--from root.json --sign-key K... [--root-key K...] [--root-threshold N] [--bundle-key K...] [--bundle-threshold M] [--expires 365d] --out root2.json [--json]',
  options: {
    from: { type: 'string' },
    'sign-key': { type: 'string', multiple: true },
    ...ROOT_OPTIONS,
  },
  async run(p, io) {
    const old = await readRootFile(str(p, 'from'));
    const out = str(p, 'out');
    const signers = await Promise.all(list(p, 'sign-key').map((k) => loadPrivateKey(k)));
    const carried = (role: 'root' | 'bundle'): PublicKey[] =>
      old.payload.roles[role].keyids.map((keyid) => ({
        keyid,
        publicKey: Buffer.from(old.payload.keys[keyid]!.public, 'hex'),
      }));
    const rootPaths = list(p, 'root-key', false);
    const bundlePaths = list(p, 'bundle-key', false);
    const now = Date.now();
    const payload = buildRootPayload({
      version: old.payload.version + 1,
      created: isoUtc(now), // signed time: agents and mirrors never trust a clock earlier than this
      expires: resolveExpiry(str(p, 'expires', false) || '365d', now),
      rootKeys: rootPaths.length ? await loadKeys(rootPaths) : carried('root'),
      rootThreshold: int(p, 'root-threshold', old.payload.roles.root.threshold),
      bundleKeys: bundlePaths.length ? await loadKeys(bundlePaths) : carried('bundle'),
      bundleThreshold: int(p, 'bundle-threshold', old.payload.roles.bundle.threshold),
    });
    const env = signRoot(payload, signers);
    verifyNextRoot(old, env); // refuses unless both thresholds are met
    await writeFileAtomic(out, serializeEnvelope(env));
    report(io, p.json, out, payload, env.signatures.length);
    return 0;
  },
};

export const trustShow: Command = {
  summary:
    "Prints the fingerprint of a trust root that operators hand out: the SHA-256 of the root file's exact\n" +
    'bytes (the same as `sha256sum root.json`), after checking that the root is signed by a threshold of\n' +
    'its own root keys. A node installed with `install.sh --root-sha256 F` trusts only the root with this\n' +
    'fingerprint. Also shows the version, expiry and roles.',
  usage: 'root.json [--json]',
  options: { ...jsonOption },
  positionals: { min: 1, max: 1 },
  async run(p, io) {
    const path = p.positionals[0]!;
    const bytes = await readRootBytes(path);
    const { payload } = loadPinnedRoot(bytes); // refuses a root that is not signed by its own threshold
    const fingerprint = rootFingerprint(bytes);
    const { root, bundle } = payload.roles;
    if (p.json) {
      printJson(io, {
        ok: true,
        path,
        fingerprint,
        version: payload.version,
        ...(payload.created !== undefined && { created: payload.created }),
        expires: payload.expires,
        roles: payload.roles,
      });
      return 0;
    }
    io.out(`root-sha256 ${fingerprint}`);
    io.out(`  ${path}: root v${payload.version}, expires ${payload.expires}`);
    io.out(
      `  root role:   ${root.threshold} of ${root.keyids.length} (${root.keyids.map((k) => k.slice(0, 12)).join(', ')})`,
    );
    io.out(
      `  bundle role: ${bundle.threshold} of ${bundle.keyids.length} (${bundle.keyids.map((k) => k.slice(0, 12)).join(', ')})`,
    );
    return 0;
  },
};
