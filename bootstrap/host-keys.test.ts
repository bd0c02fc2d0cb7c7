import { createHmac, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { checkKnownHosts, judgeHostKey, knownHostsName, sshFingerprint } from './host-keys.js';

const key = randomBytes(51);
const other = randomBytes(51);
const b64 = (b: Buffer) => b.toString('base64');

function hashed(name: string): string {
  const salt = randomBytes(20);
  return `|1|${b64(salt)}|${createHmac('sha1', salt).update(name).digest('base64')}`;
}

describe('host key checks', () => {
  const name = knownHostsName('10.0.0.5', 2222);

  it('names hosts on other ports as [host]:port, as OpenSSH does', () => {
    expect(name).toBe('[10.0.0.5]:2222');
    expect(knownHostsName('node1', 22)).toBe('node1');
  });

  it('matches plain and hashed entries for the exact key only', () => {
    expect(checkKnownHosts(`${name} ssh-ed25519 ${b64(key)}\n`, name, key)).toBe('match');
    expect(checkKnownHosts(`${hashed(name)} ssh-ed25519 ${b64(key)}\n`, name, key)).toBe('match');
    expect(checkKnownHosts(`${hashed(name)} ssh-ed25519 ${b64(other)}\n`, name, key)).toBe('mismatch');
    expect(checkKnownHosts(`${hashed('[10.0.0.6]:2222')} ssh-ed25519 ${b64(key)}\n`, name, key)).toBe(
      'unknown',
    );
    expect(checkKnownHosts(`node1,${name} ssh-ed25519 ${b64(key)}\n`, name, key)).toBe('match');
  });

  it('a revoked key is refused even when another line lists it', () => {
    const text = `${name} ssh-ed25519 ${b64(key)}\n@revoked ${name} ssh-ed25519 ${b64(key)}\n`;
    expect(checkKnownHosts(text, name, key)).toBe('mismatch');
  });

  it('a pinned fingerprint accepts exactly that key; with pins, an unknown host is a mismatch', () => {
    const pinned = [sshFingerprint(key)];
    expect(pinned[0]).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
    expect(judgeHostKey({ knownHosts: '', pinned }, name, key)).toBe('match');
    expect(judgeHostKey({ knownHosts: '', pinned }, name, other)).toBe('mismatch');
    expect(judgeHostKey({ knownHosts: '', pinned: [] }, name, other)).toBe('unknown');
  });
});
