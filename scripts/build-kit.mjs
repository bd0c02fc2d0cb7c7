// Builds the offline kit a courier carries to a site with no registry and no Node.js (docs/install.md):
//
//   npm run kit [-- --key BUNDLE.key --root root.json] [--out-dir DIR] [--no-deb]
//
// dist/kit/ferry-kit-<version>-linux-x64.tar.gz holds the CLI with mirror and server (one esbuild bundle,
// lib/ferry.mjs, plus sodium-native's prebuilt linux-x64 addon), the agent (scripts/build-agent.mjs), this
// machine's Node.js gzipped as the runtime artifact, the systemd units, the install scripts and the docs;
// kit.dsse.json lists every file with its sha256, size and mode, signed with --key under --root, and
// install.sh checks it before installing. dist/kit/ferry_<version>_amd64.deb is the same install as a
// Debian package (dpkg-deb). Nothing is downloaded. Run `npm run build` first (`npm run kit` does).
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import {
  chmod,
  copyFile,
  cp,
  mkdir,
  readdir,
  readFile,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { createGzip } from 'node:zlib';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const dist = (p) => import(pathToFileURL(join(REPO, 'dist', p)).href);
const { values } = parseArgs({
  options: {
    key: { type: 'string' },
    root: { type: 'string' },
    'out-dir': { type: 'string' },
    'no-deb': { type: 'boolean' },
  },
});
if (!existsSync(join(REPO, 'dist/core/dsse.js')))
  throw new Error('run `npm run build` first (npm run kit does)');
const { signEnvelope, serializeEnvelope } = await dist('core/dsse.js');
const { buildRootPayload, signRoot, loadPinnedRoot, rootFingerprint } = await dist('core/root.js');
const { generateKeyFiles, loadPrivateKey } = await dist('platform/keyfile.js');
const { isoUtc } = await dist('core/time.js');

const pkg = JSON.parse(await readFile(join(REPO, 'package.json'), 'utf8'));
const version = pkg.version;
const PLATFORM = 'linux-x64';
const outDir = resolve(values['out-dir'] ?? join(REPO, 'dist', 'kit'));
const name = `ferry-kit-${version}-${PLATFORM}`;
const stage = join(outDir, 'stage', name);
const t0 = Date.now();
const log = (s) => console.log(`kit: ${s}`);

if (process.platform !== 'linux' || process.arch !== 'x64')
  throw new Error(
    `the kit is built for linux-x64 from a linux-x64 machine; this is ${process.platform}-${process.arch}`,
  );
log(
  'linux-arm64: not produced. Its runtime would be an arm64 Node.js, and this machine has only its own ' +
    'x64 one (nothing is downloaded); build the arm64 kit on an arm64 machine.',
);

// --- signing: the operator's bundle key under their root, or a loud development key ---------------------
let signer;
let rootBytes;
if (values.key) {
  if (!values.root)
    throw new Error('--key needs --root: the root.json that names the key in its bundle role');
  signer = await loadPrivateKey(values.key);
  rootBytes = await readFile(values.root);
  const root = loadPinnedRoot(rootBytes);
  if (!root.payload.roles.bundle.keyids.includes(signer.keyid))
    throw new Error(`--key ${values.key} is not a bundle key of --root ${values.root}`);
} else {
  const devDir = join(outDir, 'dev-signing');
  const keyPath = join(devDir, 'kit-dev.key');
  if (!existsSync(keyPath)) {
    await mkdir(devDir, { recursive: true });
    await generateKeyFiles(devDir, 'kit-dev');
  }
  signer = await loadPrivateKey(keyPath);
  const rootPath = join(devDir, 'root.json');
  if (!existsSync(rootPath)) {
    const now = Date.now();
    const payload = buildRootPayload({
      version: 1,
      created: isoUtc(now),
      expires: isoUtc(now + 365 * 86_400_000),
      rootKeys: [signer],
      rootThreshold: 1,
      bundleKeys: [signer],
      bundleThreshold: 1,
    });
    await writeFile(rootPath, serializeEnvelope(signRoot(payload, [signer])));
  }
  rootBytes = await readFile(rootPath);
  console.warn(
    [
      '',
      '!!! DEVELOPMENT KIT: signed with a key generated on this machine (dist/kit/dev-signing/), not with',
      '!!! a release key. Do not carry it to a site. For a release: npm run kit -- --key BUNDLE.key --root root.json',
      '',
    ].join('\n'),
  );
}

await rm(join(outDir, 'stage'), { recursive: true, force: true });
await mkdir(stage, { recursive: true });
const at = (...p) => join(stage, ...p);

// --- the CLI (mirror and server inside) as one bundle ------------------------------------------------------
const VERSION_FILE = join(REPO, 'bin', 'version.ts');
const cliBuild = await build({
  entryPoints: [join(REPO, 'bin', 'ferry.ts')],
  outfile: at('lib', 'ferry.mjs'),
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'esm',
  minify: false,
  legalComments: 'none',
  // sodium-native loads its prebuilt addon from its own package directory: shipped beside the bundle.
  // ssh2 (under node-ssh, for `ferry bootstrap ssh`) tries optional native helpers inside try/catch and
  // falls back to its JavaScript crypto; the kit ships none of them.
  external: ['sodium-native', '*.node'],
  // CommonJS dependencies (koa) call require() for Node's own modules.
  banner: {
    js: "import { createRequire as __ferryRequire } from 'node:module'; const require = __ferryRequire(import.meta.url);",
  },
  define: { FERRY_VERSION: JSON.stringify(version) },
  plugins: [
    {
      name: 'ferry-version',
      setup(b) {
        b.onLoad({ filter: /[\\/]bin[\\/]version\.ts$/ }, (args) =>
          args.path === VERSION_FILE
            ? { contents: 'export const VERSION: string = FERRY_VERSION;', loader: 'ts' }
            : undefined,
        );
      },
    },
  ],
  metafile: true,
  logLevel: 'warning',
});
log(`lib/ferry.mjs: ${Object.keys(cliBuild.metafile.inputs).length} modules`);

// sodium-native and what it requires at run time, with only the linux-x64 prebuild.
async function copyPackage(pkgName, seen = new Set()) {
  if (seen.has(pkgName)) return;
  seen.add(pkgName);
  const from = join(REPO, 'node_modules', pkgName);
  const to = at('lib', 'node_modules', pkgName);
  const meta = JSON.parse(await readFile(join(from, 'package.json'), 'utf8'));
  await cp(from, to, {
    recursive: true,
    filter: (src) => {
      const rel = relative(from, src);
      if (rel.startsWith('prebuilds') && rel !== 'prebuilds' && !rel.startsWith(join('prebuilds', PLATFORM)))
        return false;
      if (rel.endsWith('.bare')) return false; // the Bare runtime's build; Node loads the .node
      return !/^(test|tests|deps|src|extensions|CMakeLists\.txt|binding\.cc)$/.test(rel.split('/')[0] ?? '');
    },
  });
  for (const dep of Object.keys(meta.dependencies ?? {})) await copyPackage(dep, seen);
}
await copyPackage('sodium-native');

// --- the agent, the runtime, the wrapper -------------------------------------------------------------------
await mkdir(at('agent'), { recursive: true });
execFileSync(
  process.execPath,
  [join(REPO, 'scripts/build-agent.mjs'), '--version', version, '--out', at('agent', 'ferry-agent')],
  {
    stdio: ['ignore', 'ignore', 'inherit'],
  },
);
await writeFile(at('agent', 'VERSION'), `${version}\n`);

await mkdir(at('runtime'), { recursive: true });
const runtimeGz = at('runtime', `ferry-runtime-${PLATFORM}.gz`);
await pipeline(createReadStream(process.execPath), createGzip({ level: 6 }), createWriteStream(runtimeGz));
const sha256File = async (p) => {
  const h = createHash('sha256');
  for await (const c of createReadStream(p)) h.update(c);
  return h.digest('hex');
};
const nodeSha = await sha256File(process.execPath);
const runtime = {
  node: process.version,
  binarySha256: nodeSha,
  binarySize: (await stat(process.execPath)).size,
  artifact: `ferry-runtime-${PLATFORM}`,
  artifactSha256: await sha256File(runtimeGz),
  artifactSize: (await stat(runtimeGz)).size,
};
await writeFile(at('runtime', 'RUNTIME.json'), JSON.stringify(runtime, null, 2) + '\n');
log(
  `runtime: node ${runtime.node} from ${process.execPath}, sha256 ${nodeSha} (${runtime.binarySize} bytes, ${runtime.artifactSize} gzipped)`,
);

await mkdir(at('bin'), { recursive: true });
await writeFile(
  at('bin', 'ferry'),
  `#!/bin/sh
# ferry's command, run by the private Node.js runtime installed beside it (no system Node.js needed).
here=$(dirname "$(readlink -f "$0")")
exec "$here/../runtime/current/bin/node" "$here/../lib/ferry.mjs" "$@"
`,
);
await chmod(at('bin', 'ferry'), 0o755);

// --- units, scripts, docs ----------------------------------------------------------------------------------
await cp(join(REPO, 'systemd'), at('systemd'), { recursive: true });
await mkdir(at('assets'), { recursive: true });
for (const f of ['install.sh', 'verify-lib.sh', 'kit-install.sh'])
  await copyFile(join(REPO, 'assets', f), at('assets', f));
await mkdir(at('docs'), { recursive: true });
for (const f of await readdir(join(REPO, 'docs')))
  if (f.endsWith('.md')) await copyFile(join(REPO, 'docs', f), at('docs', f));
const lib = (await readFile(join(REPO, 'assets', 'verify-lib.sh'), 'utf8')).replace(/\n$/, '');
const kitInstall = (await readFile(join(REPO, 'assets', 'kit-install.sh'), 'utf8')).replace(
  '@@FERRY_VERIFY_LIB@@',
  lib,
);
await writeFile(at('install.sh'), kitInstall, { mode: 0o755 });
await writeFile(at('root.json'), rootBytes);

// --- the signed list of every file -------------------------------------------------------------------------
async function walk(dir, links = false) {
  const out = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await walk(p, links)));
    else if (e.isFile()) out.push(p);
    else if (!(links && e.isSymbolicLink())) throw new Error(`${p}: the kit holds regular files only`);
  }
  return out;
}
const SELF = new Set(['install.sh', 'root.json', 'kit.dsse.json']); // checked by other means (docs/install.md)
const files = [];
for (const p of (await walk(stage)).sort()) {
  const rel = relative(stage, p);
  if (SELF.has(rel)) continue;
  const st = await stat(p);
  files.push({
    path: rel,
    sha256: await sha256File(p),
    size: st.size,
    mode: (st.mode & 0o777).toString(8).padStart(4, '0'),
  });
}
const list = {
  type: 'ferry.kit/v1',
  version,
  platform: PLATFORM,
  created: isoUtc(Date.now()),
  runtime,
  files,
};
const KIT_TYPE = 'application/vnd.ferry.kit+json';
await writeFile(
  at('kit.dsse.json'),
  serializeEnvelope(signEnvelope(KIT_TYPE, Buffer.from(JSON.stringify(list)), [signer])),
);
log(`kit.dsse.json: ${files.length} files, signed by ${signer.keyid.slice(0, 16)}…`);

// --- the archive -------------------------------------------------------------------------------------------
const tarball = join(outDir, `${name}.tar.gz`);
const tarFlags = ['--owner=0', '--group=0', '--numeric-owner', '--sort=name', '--mtime=@0'];
execFileSync('tar', ['-czf', tarball, ...tarFlags, '-C', join(outDir, 'stage'), name]);
log(`${relative(REPO, tarball)}: ${(await stat(tarball)).size} bytes`);

// --- the Debian package: the installed layout of install.sh, built by dpkg-deb --------------------------
if (!values['no-deb']) {
  const deb = join(outDir, 'stage', 'deb');
  const opt = join(deb, 'opt', 'ferry');
  const rt = runtime.artifactSha256;
  await mkdir(join(opt, 'runtime', rt, 'bin'), { recursive: true });
  await copyFile(process.execPath, join(opt, 'runtime', rt, 'bin', 'node'));
  await chmod(join(opt, 'runtime', rt, 'bin', 'node'), 0o755);
  await symlink(rt, join(opt, 'runtime', 'current'));
  for (const d of ['lib', 'bin', 'assets', 'systemd', 'docs'])
    await cp(at(d), join(opt, d), { recursive: true });
  await mkdir(join(opt, 'versions', version), { recursive: true });
  await copyFile(at('agent', 'ferry-agent'), join(opt, 'versions', version, 'ferry-agent'));
  await chmod(join(opt, 'versions', version, 'ferry-agent'), 0o755);
  await symlink(join('versions', version), join(opt, 'current'));
  await copyFile(join(REPO, 'systemd', 'ferry-agent-prestart.sh'), join(opt, 'prestart.sh'));
  await chmod(join(opt, 'prestart.sh'), 0o755);
  await mkdir(join(deb, 'etc', 'systemd', 'system'), { recursive: true });
  for (const u of ['mirror', 'server', 'agent'])
    await copyFile(
      join(REPO, 'systemd', `ferry-${u}.service`),
      join(deb, 'etc', 'systemd', 'system', `ferry-${u}.service`),
    );
  await mkdir(join(deb, 'etc', 'ferry'), { recursive: true });
  await writeFile(join(deb, 'etc', 'ferry', 'root.json'), rootBytes);
  await mkdir(join(deb, 'DEBIAN'), { recursive: true });
  const installedKb = Math.ceil(
    (await Promise.all((await walk(deb, true)).map(async (p) => (await stat(p)).size))).reduce(
      (a, b) => a + b,
      0,
    ) / 1024,
  );
  await writeFile(
    join(deb, 'DEBIAN', 'control'),
    [
      'Package: ferry',
      `Version: ${version}`,
      'Architecture: amd64',
      'Maintainer: ferry maintainers <ferry@localhost>',
      `Installed-Size: ${installedKb}`,
      'Section: admin',
      'Priority: optional',
      'Depends: openssl',
      'Description: signed software delivery into air-gapped networks',
      ' The ferry CLI with site mirror and connected server, the node agent, a private',
      ` Node.js ${process.version} runtime (no system Node.js needed) and systemd units.`,
      '',
    ].join('\n'),
  );
  await writeFile(
    join(deb, 'DEBIAN', 'conffiles'),
    [
      '/etc/ferry/root.json',
      ...['mirror', 'server', 'agent'].map((u) => `/etc/systemd/system/ferry-${u}.service`),
      '',
    ].join('\n'),
  );
  const debFile = join(outDir, `ferry_${version}_amd64.deb`);
  execFileSync('dpkg-deb', ['--root-owner-group', '-Zgzip', '--build', deb, debFile], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  log(`${relative(REPO, debFile)}: ${(await stat(debFile)).size} bytes`);
}

await writeFile(
  join(outDir, 'KIT.json'),
  JSON.stringify(
    {
      version,
      platform: PLATFORM,
      tarball,
      rootSha256: rootFingerprint(rootBytes),
      runtime,
      dev: !values.key,
    },
    null,
    2,
  ) + '\n',
);
log(`root-sha256 ${rootFingerprint(rootBytes)} (give it to install.sh --root-sha256)`);
log(`done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
