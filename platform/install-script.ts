/**
 * The node install script (assets/install.sh) with the agent's unit and boot counter filled in: the mirror
 * serves it as `GET /install.sh`, `ferry bootstrap` sends it over SSH, and the kit ships it. The files live
 * outside the code, in assets/ and systemd/ at the top of the source tree (and of the installed kit), so
 * every component reads the same text without importing another; this module only finds and fills them.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PlatformError } from './errors.js';

/**
 * The directory holding assets/ and systemd/: FERRY_ASSET_DIR when set, else the nearest ancestor of this
 * module that has both (the source tree from dist/platform/, the kit's prefix from its lib/).
 */
export function assetRoot(): string {
  const env = process.env.FERRY_ASSET_DIR;
  if (env) return resolve(env);
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    if (existsSync(join(dir, 'assets', 'install.sh')) && existsSync(join(dir, 'systemd'))) return dir;
    dir = dirname(dir);
  }
  throw new PlatformError('NOT_FOUND', 'assets/install.sh not found beside ferry (set FERRY_ASSET_DIR)');
}

/**
 * The programs assets/install.sh (and the verify-lib.sh it sources) runs on a node. `node` is not among
 * them: the runtime it installs runs the agent. Demos and tests build a node's PATH from this list.
 */
export const INSTALL_SCRIPT_TOOLS: readonly string[] = [
  'sh',
  'comm',
  'dash',
  'curl',
  'openssl',
  'gzip',
  'sha256sum',
  'mktemp',
  'rm',
  'cat',
  'tr',
  'grep',
  'sed',
  'head',
  'tail',
  'wc',
  'cut',
  'date',
  'sort',
  'uname',
  'chmod',
  'mkdir',
  'cp',
  'mv',
  'ln',
  'env',
  'ls',
  'tar',
  'id',
  'dirname',
  'basename',
  'readlink',
  'sync',
  'stat',
  'printf',
  'true',
  'false',
  'install',
  'find',
];

export interface InstallScriptDefaults {
  /** The mirror URL the script uses unless given --mirror. */
  mirror: string;
  /** The site the script uses unless given --site. */
  site: string;
}

const URL_SAFE = /^https?:\/\/[A-Za-z0-9.:[\]_-]+(\/[A-Za-z0-9._~/-]*)?$/;
const NAME_SAFE = /^[A-Za-z0-9._-]{1,128}$/;

/** Inside a quoted here-document, a line equal to its delimiter would end it early. */
function heredocSafe(text: string, delimiter: string, what: string): string {
  if (text.split('\n').includes(delimiter))
    throw new PlatformError('IO_ERROR', `${what} contains ${delimiter}`);
  return text.replace(/\n$/, '');
}

/**
 * The script with its defaults filled in. A value that could break out of the shell quoting (a Host
 * header is the client's to choose) is left out: the script then asks for --mirror or --site.
 */
export async function renderInstallScript(d: InstallScriptDefaults): Promise<string> {
  const root = assetRoot();
  const [script, lib, unit, prestart] = await Promise.all([
    readFile(join(root, 'assets', 'install.sh'), 'utf8'),
    readFile(join(root, 'assets', 'verify-lib.sh'), 'utf8'),
    readFile(join(root, 'systemd', 'ferry-agent.service'), 'utf8'),
    readFile(join(root, 'systemd', 'ferry-agent-prestart.sh'), 'utf8'),
  ]);
  const fill: Record<string, string> = {
    '@@FERRY_MIRROR@@': URL_SAFE.test(d.mirror) ? d.mirror : '',
    '@@FERRY_SITE@@': NAME_SAFE.test(d.site) ? d.site : '',
    '@@FERRY_VERIFY_LIB@@': lib.replace(/\n$/, ''),
    '@@FERRY_AGENT_UNIT@@': heredocSafe(unit, 'FERRY_UNIT_EOF', 'the agent unit'),
    '@@FERRY_PRESTART@@': heredocSafe(prestart, 'FERRY_PRESTART_EOF', 'the prestart script'),
  };
  return script.replace(/@@FERRY_[A-Z_]+@@/g, (m) => fill[m] ?? m);
}
