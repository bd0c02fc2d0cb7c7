import { describe, expect, it, vi } from 'vitest';

// A platform sodium-native has no build for: loading its addon throws.
vi.mock('sodium-native', () => ({
  get default(): never {
    throw new Error('No native build was found for platform=plan9 arch=mips');
  },
}));

const ed = await import('./ed25519.js');

describe('useSodiumNative where the addon cannot load', () => {
  it('keeps node:crypto selected, says why, and still signs and verifies', async () => {
    const r = await ed.useSodiumNative();
    expect(r.ok).toBe(false);
    expect(r.ok ? '' : r.reason).toMatch(/No native build was found/);
    expect(ed.backendName()).toBe('node');
    const k = ed.generateKeyPair();
    const sig = ed.sign(k.seed, Buffer.from('still works'));
    expect(await ed.verifyAsync(k.publicKey, Buffer.from('still works'), sig)).toBe(true);
  });
});
