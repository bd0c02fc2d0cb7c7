// Builds dist/ferry-agent: the agent as ONE executable JavaScript file, every
// dependency inside, its version stamped at build time.
//
//   node scripts/build-agent.mjs [--version X] [--dev] [--out PATH]
//
// The version is --version X, else package.json's version (with a `-dev`
// suffix under --dev). Not minified: the file stays well under 1 MiB either
// way, and an agent's stack trace from an air-gapped node is only useful when
// it names our functions and lines that can be read in the shipped file.
import { build } from 'esbuild';
import { createHash } from 'node:crypto';
import { chmod, mkdir, readFile, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({
  options: { version: { type: 'string' }, dev: { type: 'boolean' }, out: { type: 'string' } },
});
const pkg = JSON.parse(await readFile(join(REPO, 'package.json'), 'utf8'));
const version = values.version ?? `${pkg.version}${values.dev ? '-dev' : ''}`;
if (!/^[0-9A-Za-z.+-]{1,64}$/.test(version)) throw new Error(`--version ${version}: not a version string`);
const out = resolve(values.out ?? join(REPO, 'dist', 'ferry-agent'));

/**
 * Modules the agent must never carry; reaching one is a build error, not a bigger file. undici is
 * among them: the agent's HTTP goes over node:http (platform/http/transport.ts, docs/decisions.md).
 */
const FORBIDDEN = /^(koa|@koa\/|chokidar|libsodium|sodium-native|undici)/;
const VERSION_FILE = join(REPO, 'bin', 'version.ts');

const agentOnly = {
  name: 'ferry-agent',
  setup(b) {
    // bin/version.ts reads package.json next to the build; the single file has none beside it.
    b.onLoad({ filter: /[\\/]bin[\\/]version\.ts$/ }, (args) =>
      args.path === VERSION_FILE
        ? { contents: 'export const VERSION: string = FERRY_AGENT_VERSION;', loader: 'ts' }
        : undefined,
    );
    // core/ed25519.ts imports libsodium lazily for the operator's commands and sodium-native for the
    // mirror and server; the agent uses node:crypto.
    b.onResolve({ filter: FORBIDDEN }, (args) =>
      (args.path === 'libsodium-wrappers' || args.path === 'sodium-native') && args.kind === 'dynamic-import'
        ? { path: args.path, namespace: 'ferry-stub' }
        : { errors: [{ text: `${args.path} must not be bundled into the agent (from ${args.importer})` }] },
    );
    b.onLoad({ filter: /.*/, namespace: 'ferry-stub' }, () => ({
      contents: 'throw new Error("not part of the agent build");',
      loader: 'js',
    }));
  },
};

await mkdir(dirname(out), { recursive: true });
const result = await build({
  entryPoints: [join(REPO, 'bin', 'ferry-agent.ts')],
  outfile: out,
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'esm',
  minify: false,
  legalComments: 'none',
  banner: { js: '#!/usr/bin/env -S node --lite-mode --no-expose-wasm' },
  define: { FERRY_AGENT_VERSION: JSON.stringify(version) },
  plugins: [agentOnly],
  metafile: true,
  logLevel: 'warning',
});
await chmod(out, 0o755);

const bytes = await readFile(out);
const inputs = Object.keys(result.metafile.inputs);
const sha256 = createHash('sha256').update(bytes).digest('hex');
console.log(
  `${out}: ferry-agent ${version}, ${bytes.length} bytes (${(bytes.length / 1024).toFixed(1)} KiB), ` +
    `${inputs.length} modules, mode ${((await stat(out)).mode & 0o777).toString(8)}`,
);
console.log(`sha256 ${sha256}`);
