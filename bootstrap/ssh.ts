/**
 * `ferry bootstrap ssh`: installs the agent on many nodes over SSH with the same install.sh a node fetches
 * from its mirror (platform/install-script.ts), so the checks are the same: the root by its fingerprint,
 * the manifest by its signatures, agent and runtime by their signed digests. The script travels on the
 * session's stdin, with its arguments (the token among them) set by its first line, so the token appears on
 * no command line. install.sh enrols the node with the mirror before it reports success: a host is `ok`
 * only once the mirror has answered its enrolment with an agent id.
 */
import { readFile } from 'node:fs/promises';
import { NodeSSH } from 'node-ssh';
import { parseJsonStrict } from '../core/json.js';
import { request } from '../platform/http/client.js';
import { renderInstallScript } from '../platform/install-script.js';
import { BootstrapError } from './errors.js';
import { judgeHostKey, knownHostsName, sshFingerprint, type HostKeyPolicy } from './host-keys.js';

export interface Target {
  user: string;
  host: string;
  port: number;
}

/** `USER@HOST[:PORT]` (or `[v6]:PORT`), the port defaulting to `defaultPort`. */
export function parseTarget(s: string, defaultPort: number): Target {
  const m = /^([A-Za-z0-9._-]+)@(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?$/.exec(s.trim());
  if (!m) throw new BootstrapError('SSH_FAILED', `${s}: not USER@HOST[:PORT]`);
  const port = m[3] ? Number(m[3]) : defaultPort;
  if (port < 1 || port > 65535) throw new BootstrapError('SSH_FAILED', `${s}: port out of range`);
  return { user: m[1]!, host: m[2]!.replace(/^\[|\]$/g, ''), port };
}

export interface BootstrapOptions {
  mirror: string;
  token: string;
  rootSha256: string;
  site?: string;
  groups: string[];
  /** Install under this directory on the host instead of / (images, tests). */
  installRoot?: string;
  privateKey: string;
  hostKeys: HostKeyPolicy;
  readyTimeoutMs?: number;
}

export type Outcome = 'installed' | 'unchanged' | 'refused' | 'failed';

export interface HostResult {
  target: string;
  ok: boolean;
  outcome: Outcome;
  /** A BootstrapErrorCode, or the code install.sh refused with (ROOT_MISMATCH, ARTIFACT_MISMATCH …). */
  code?: string;
  message: string;
  hostKey?: string;
  platform?: string;
  agentVersion?: string;
}

const PLATFORMS: Record<string, string> = {
  'Linux x86_64': 'linux-x64',
  'Linux amd64': 'linux-x64',
  'Linux aarch64': 'linux-arm64',
  'Linux arm64': 'linux-arm64',
};

const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/**
 * The mirror's site, from its inventory: only a default for install.sh's --site, which the agent checks
 * against every signed manifest anyway.
 */
export async function mirrorSite(mirror: string): Promise<string> {
  const res = await request(new URL('/v1/inventory', mirror).href, {
    timeoutMs: 15_000,
    maxBytes: 16 * 1024 * 1024,
  });
  const v = res.status === 200 ? parseJsonStrict(res.body.toString('utf8')) : undefined;
  const site = typeof v === 'object' && v !== null ? (v as Record<string, unknown>).site : undefined;
  if (typeof site !== 'string' || !/^[A-Za-z0-9._-]{1,128}$/.test(site))
    throw new BootstrapError('MIRROR_UNREACHABLE', `${mirror}/v1/inventory names no site (give --site)`);
  return site;
}

/** install.sh with its arguments set by its first line, for `sh -s` on the host. */
export async function scriptFor(o: BootstrapOptions): Promise<string> {
  const site = o.site ?? (await mirrorSite(o.mirror));
  const script = await renderInstallScript({ mirror: o.mirror, site });
  const args = [
    '--mirror',
    o.mirror,
    '--token',
    o.token,
    '--root-sha256',
    o.rootSha256,
    '--site',
    site,
    ...o.groups.flatMap((g) => ['--group', g]),
    ...(o.installRoot ? ['--root', o.installRoot] : []),
  ];
  return `set -- ${args.map(quote).join(' ')}\n${script}`;
}

function label(t: Target): string {
  return `${t.user}@${t.host}${t.port === 22 ? '' : `:${t.port}`}`;
}

/** One host: host key, platform, install.sh; never throws. */
export async function bootstrapHost(t: Target, o: BootstrapOptions, script: string): Promise<HostResult> {
  const target = label(t);
  const ssh = new NodeSSH();
  let seen: { fingerprint: string; verdict: string } | undefined;
  try {
    try {
      await ssh.connect({
        host: t.host,
        port: t.port,
        username: t.user,
        privateKey: o.privateKey,
        readyTimeout: o.readyTimeoutMs ?? 20_000,
        hostVerifier: (key: Buffer) => {
          const verdict = judgeHostKey(o.hostKeys, knownHostsName(t.host, t.port), key);
          seen = { fingerprint: sshFingerprint(key), verdict };
          return verdict === 'match';
        },
      });
    } catch (e) {
      if (seen && seen.verdict !== 'match') {
        const code = seen.verdict === 'unknown' ? 'HOST_KEY_UNKNOWN' : 'HOST_KEY_MISMATCH';
        const why =
          seen.verdict === 'unknown'
            ? 'is not in known_hosts and no fingerprint was pinned (never accepted blindly)'
            : 'is not the key known_hosts or the pinned fingerprint names';
        return {
          target,
          ok: false,
          outcome: 'refused',
          code,
          message: `host key ${seen.fingerprint} ${why}; nothing was run`,
          hostKey: seen.fingerprint,
        };
      }
      return { target, ok: false, outcome: 'failed', code: 'SSH_FAILED', message: (e as Error).message };
    }
    const hostKey = seen?.fingerprint;
    const uname = await ssh.execCommand('uname -sm');
    const platform = PLATFORMS[uname.stdout.trim()];
    if (uname.code !== 0 || !platform)
      return {
        target,
        ok: false,
        outcome: 'refused',
        code: 'PLATFORM_UNSUPPORTED',
        message: `${uname.stdout.trim() || uname.stderr.trim()}: ferry ships agents for linux-x64 and linux-arm64`,
        ...(hostKey && { hostKey }),
      };
    const r = await ssh.execCommand('sh -s', { stdin: script });
    const last = r.stdout.trim().split('\n').pop() ?? '';
    const version = /^ferry agent (\S+) (installed|unchanged)/.exec(last);
    if (r.code === 0 && version)
      return {
        target,
        ok: true,
        outcome: version[2] as 'installed' | 'unchanged',
        message: last,
        ...(hostKey && { hostKey }),
        platform,
        agentVersion: version[1]!,
      };
    const refused = /REFUSED (\w+): (.*)/.exec(r.stderr);
    return {
      target,
      ok: false,
      outcome: refused ? 'refused' : 'failed',
      code: refused ? refused[1]! : 'INSTALL_REFUSED',
      message: refused
        ? refused[2]!
        : `install.sh exited ${r.code}: ${r.stderr.trim().split('\n').pop() ?? ''}`,
      ...(hostKey && { hostKey }),
      platform,
    };
  } catch (e) {
    return { target, ok: false, outcome: 'failed', code: 'SSH_FAILED', message: (e as Error).message };
  } finally {
    ssh.dispose();
  }
}

/** Every host, at most `parallel` at a time; results in the order of `targets`. */
export async function bootstrapAll(
  targets: Target[],
  o: BootstrapOptions,
  parallel: number,
  onResult: (r: HostResult, done: number) => void = () => {},
): Promise<HostResult[]> {
  const script = await scriptFor(o);
  const results: HostResult[] = new Array<HostResult>(targets.length);
  let next = 0;
  let done = 0;
  const worker = async () => {
    while (next < targets.length) {
      const i = next++;
      results[i] = await bootstrapHost(targets[i]!, o, script);
      onResult(results[i], ++done);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(parallel, targets.length)) }, worker));
  return results;
}

/** Targets from a hosts file: one USER@HOST[:PORT] a line; blank lines and # comments are skipped. */
export async function readHostsFile(path: string, defaultPort: number): Promise<Target[]> {
  const text = await readFile(path, 'utf8');
  return text
    .split('\n')
    .map((l) => l.replace(/#.*/, '').trim())
    .filter(Boolean)
    .map((l) => parseTarget(l, defaultPort));
}
