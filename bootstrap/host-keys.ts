/**
 * Host key checks for `ferry bootstrap ssh`: a host is accepted only when known_hosts (OpenSSH's format,
 * plain or hashed host names) or a fingerprint the operator pinned (`SHA256:…` as `ssh-keygen -lf` prints
 * it) names the exact key it presents; anything else is refused before authentication, so no command runs.
 */
import { createHash, createHmac } from 'node:crypto';

/** OpenSSH's fingerprint of a public key blob: `SHA256:` and unpadded base64 of its SHA-256. */
export function sshFingerprint(blob: Uint8Array): string {
  return `SHA256:${createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')}`;
}

/** How known_hosts names a host: `host` on port 22, `[host]:port` elsewhere. */
export function knownHostsName(host: string, port: number): string {
  return port === 22 ? host : `[${host}]:${port}`;
}

function nameMatches(pattern: string, name: string): boolean {
  if (pattern.startsWith('|1|')) {
    const [, , salt, hash] = pattern.split('|');
    if (!salt || !hash) return false;
    const mac = createHmac('sha1', Buffer.from(salt, 'base64')).update(name).digest('base64');
    return mac === hash;
  }
  return pattern === name;
}

export type HostKeyVerdict = 'match' | 'mismatch' | 'unknown';

/**
 * What known_hosts says of `blob` for host `name`: `match` when a line for the host has this key, `mismatch`
 * when lines for the host exist but none has it (or one revokes it), `unknown` when no line names the host.
 */
export function checkKnownHosts(text: string, name: string, blob: Uint8Array): HostKeyVerdict {
  const b64 = Buffer.from(blob).toString('base64');
  let named = false;
  let matched = false;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const fields = line.split(/\s+/);
    const marker = fields[0]?.startsWith('@') ? fields.shift() : undefined;
    const [patterns, , key] = fields;
    if (!patterns || !key || marker === '@cert-authority') continue;
    if (!patterns.split(',').some((p) => nameMatches(p, name))) continue;
    if (marker === '@revoked') {
      if (key === b64) return 'mismatch';
      continue;
    }
    named = true;
    if (key === b64) matched = true;
  }
  return matched ? 'match' : named ? 'mismatch' : 'unknown';
}

export interface HostKeyPolicy {
  /** known_hosts text (may be empty). */
  knownHosts: string;
  /** Pinned fingerprints; a key with one of them is accepted for any host. */
  pinned: string[];
}

/** The verdict for one host's key: a pinned fingerprint, else known_hosts. */
export function judgeHostKey(policy: HostKeyPolicy, name: string, blob: Uint8Array): HostKeyVerdict {
  if (policy.pinned.includes(sshFingerprint(blob))) return 'match';
  const v = checkKnownHosts(policy.knownHosts, name, blob);
  return v === 'unknown' && policy.pinned.length > 0 ? 'mismatch' : v;
}
