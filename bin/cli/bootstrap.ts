import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { FerryError } from '../../core/errors.js';
import {
  bootstrapAll,
  parseTarget,
  readHostsFile,
  type HostResult,
  type Target,
} from '../../bootstrap/ssh.js';
import { tokenFrom } from './agent.js';
import { int, jsonOption, list, printJson, str, type Command, type Io } from './common.js';

async function readOptional(path: string, fallback: boolean): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    if (fallback && (e as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw new FerryError('USAGE', `${path}: ${(e as NodeJS.ErrnoException).code ?? 'unreadable'}`);
  }
}

function table(io: Io, results: HostResult[]): void {
  const rows = results.map((r) => [
    r.target,
    r.ok ? r.outcome : `${r.outcome} ${r.code ?? ''}`.trim(),
    r.agentVersion ?? '-',
    r.message,
  ]);
  const head = ['HOST', 'RESULT', 'AGENT', 'DETAIL'];
  const width = [0, 1, 2].map((i) => Math.max(head[i]!.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((c, i) => (i < 3 ? c.padEnd(width[i]!) : c)).join('  ');
  io.out(line(head));
  for (const r of rows) io.out(line(r));
}

export const bootstrapSsh: Command = {
  summary:
    "Installs the agent on nodes over SSH with the mirror's own install.sh (docs/install.md): checks each\n" +
    "host's key against known_hosts or a pinned fingerprint (never accepted blindly; a wrong key is refused\n" +
    'before anything runs), checks the platform, then runs install.sh, which verifies root, manifest, agent\n' +
    'and runtime, installs, enrols with the token and starts the unit. A host already running that agent,\n' +
    'enrolled, is left unchanged; an older install is upgraded. Prints one line per host (--json too).',
  usage:
    'USER@HOST[:PORT]... | --hosts FILE  --mirror URL (--token T | --token-file F) --root-sha256 F [--site S] [--group G]... [--parallel N] [--port P] [--identity KEY] [--known-hosts FILE] [--host-key SHA256:...]... [--install-root DIR] [--json]',
  positionals: { min: 0, max: 10_000 },
  options: {
    hosts: { type: 'string' },
    mirror: { type: 'string' },
    token: { type: 'string' },
    'token-file': { type: 'string' },
    'root-sha256': { type: 'string' },
    site: { type: 'string' },
    group: { type: 'string', multiple: true },
    parallel: { type: 'string' },
    port: { type: 'string' },
    identity: { type: 'string' },
    'known-hosts': { type: 'string' },
    'host-key': { type: 'string', multiple: true },
    'install-root': { type: 'string' },
    ...jsonOption,
  },
  async run(p, io) {
    const port = int(p, 'port', 22);
    const targets: Target[] = p.positionals.map((s) => parseTarget(s, port));
    if (str(p, 'hosts', false)) targets.push(...(await readHostsFile(str(p, 'hosts'), port)));
    if (targets.length === 0)
      throw new FerryError('USAGE', 'name hosts as USER@HOST arguments or with --hosts FILE');
    const rootSha256 = str(p, 'root-sha256').toLowerCase();
    if (!/^[0-9a-f]{64}$/.test(rootSha256))
      throw new FerryError('USAGE', '--root-sha256 must be 64 hex digits (`ferry trust show root.json`)');
    const mirror = str(p, 'mirror');
    if (!/^https?:\/\/[^\s'"]+$/.test(mirror))
      throw new FerryError('USAGE', '--mirror must be an http(s) URL');
    const token = await tokenFrom(p);
    if (!token) throw new FerryError('USAGE', '--token or --token-file is required');
    const pinned = list(p, 'host-key', false);
    for (const f of pinned)
      if (!/^SHA256:[A-Za-z0-9+/]{43}$/.test(f))
        throw new FerryError(
          'USAGE',
          `--host-key ${f}: a fingerprint as ssh-keygen -lf prints it (SHA256:…)`,
        );
    const knownHostsPath = str(p, 'known-hosts', false) || join(homedir(), '.ssh', 'known_hosts');
    const knownHosts = await readOptional(knownHostsPath, !str(p, 'known-hosts', false));
    const identity = str(p, 'identity', false) || join(homedir(), '.ssh', 'id_ed25519');
    const privateKey = await readOptional(identity, false);
    const installRoot = str(p, 'install-root', false);
    const site = str(p, 'site', false);
    const results = await bootstrapAll(
      targets,
      {
        mirror,
        token,
        rootSha256,
        ...(site && { site }),
        groups: list(p, 'group', false),
        ...(installRoot && { installRoot }),
        privateKey,
        hostKeys: { knownHosts, pinned },
      },
      int(p, 'parallel', 8),
      (r, done) => {
        if (!p.json)
          io.err(`[${done}/${targets.length}] ${r.target}: ${r.ok ? r.outcome : `${r.code}: ${r.message}`}`);
      },
    );
    const ok = results.every((r) => r.ok);
    if (p.json) printJson(io, { ok, hosts: results });
    else table(io, results);
    return ok ? 0 : 1;
  },
};
