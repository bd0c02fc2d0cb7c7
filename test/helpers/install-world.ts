/**
 * A site ready for node installs, built by code: the agent built as its single file, this machine's Node.js
 * gzipped as the `ferry-runtime-linux-x64` artifact, both in a signed bundle imported into a real mirror;
 * and a toolbox directory that is a node's PATH without `node` (the tools install.sh needs, and a
 * `systemctl` stand-in that records what it was asked in `<toolbox>/systemctl.log`).
 */
import { execFileSync, spawn } from 'node:child_process';
import { chmod, mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { INSTALL_SCRIPT_TOOLS } from '../../platform/install-script.js';
import { buildBundle, REPO, type World } from './fixtures.js';
import { importInto, makeToken, startMirrorAt, type MirrorAt } from './agent-proc.js';

export const AGENT_VERSION = '0.1.0';
export const PLATFORM = 'linux-x64';

/** `<dir>/bin`: symlinks to the system's tools except node, and the systemctl stand-in. */
export async function makeToolbox(dir: string): Promise<{ bin: string; systemctlLog: string }> {
  const bin = join(dir, 'bin');
  await mkdir(bin, { recursive: true });
  for (const t of INSTALL_SCRIPT_TOOLS) {
    let at: string;
    try {
      at = execFileSync('sh', ['-c', `command -v ${t}`], { encoding: 'utf8' }).trim();
    } catch {
      continue;
    }
    if (at.startsWith('/')) await symlink(at, join(bin, t));
  }
  const systemctlLog = join(dir, 'systemctl.log');
  await writeFile(
    join(bin, 'systemctl'),
    `#!/bin/sh\n# stands in for systemd's systemctl: records each call, one a line\nprintf '%s\\n' "$*" >>'${systemctlLog}'\n`,
  );
  await chmod(join(bin, 'systemctl'), 0o755);
  return { bin, systemctlLog };
}

function run(cmd: string, args: string[], out?: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { stdio: ['ignore', out ? 'pipe' : 'ignore', 'inherit'] });
    const chunks: Buffer[] = [];
    c.stdout?.on('data', (d: Buffer) => chunks.push(d));
    c.on('error', reject);
    c.on('close', (code) => {
      if (code !== 0) return reject(new Error(`${cmd} ${args.join(' ')} exited ${code}`));
      if (out) writeFile(out, Buffer.concat(chunks)).then(resolve, reject);
      else resolve();
    });
  });
}

/** dist/ferry-agent-style single file at `<dir>/ferry-agent`, and node gzipped at `<dir>/runtime.gz`. */
export async function buildNodeArtifacts(dir: string): Promise<{ agent: string; runtime: string }> {
  const agent = join(dir, 'ferry-agent');
  const runtime = join(dir, 'runtime.gz');
  await Promise.all([
    run(process.execPath, [
      join(REPO, 'scripts/build-agent.mjs'),
      '--version',
      AGENT_VERSION,
      '--out',
      agent,
    ]),
    run('gzip', ['-1', '-c', process.execPath], runtime),
  ]);
  return { agent, runtime };
}

export interface InstallSite {
  mirror: MirrorAt;
  data: string;
  bundle: string;
  token: () => Promise<string>;
}

/** A bundle carrying the agent and the runtime, imported into a real mirror that then serves it. */
export async function startInstallSite(
  w: World,
  art: { agent: string; runtime: string },
): Promise<InstallSite> {
  const bundle = join(w.dir, 'node-install.ferry');
  await buildBundle(w, bundle, {
    artifacts: [
      {
        name: 'ferry-agent',
        kind: 'agent',
        version: AGENT_VERSION,
        platform: PLATFORM,
        content: await readFile(art.agent),
      },
      {
        name: `ferry-runtime-${PLATFORM}`,
        kind: 'file',
        version: process.versions.node,
        platform: PLATFORM,
        content: await readFile(art.runtime),
      },
    ],
  });
  const data = join(w.dir, 'mirror-data');
  await importInto(data, bundle, w.rootPath);
  const mirror = await startMirrorAt(data);
  return { mirror, data, bundle, token: async () => (await makeToken(data)).token };
}
