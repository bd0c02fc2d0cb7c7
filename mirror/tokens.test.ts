/**
 * The token store on real files: what it keeps (a hash, never the secret), how a
 * token is parsed, and how it makes room when full without ever dropping a token
 * that can still admit an agent.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseToken, TokenStore } from './tokens.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ferry-tokens-'));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

describe('TokenStore', () => {
  it('keeps the SHA-256 of the secret in a 0600 file, never the secret', async () => {
    const d = await mkdtemp(join(dir, 'a-'));
    const store = new TokenStore(d);
    const { token, record } = await store.create({ site: 'plant-7', ttlMs: 60_000, groups: ['web', 'web'] });
    const { site, id, secret } = parseToken(token);
    expect({ site, id }).toEqual({ site: 'plant-7', id: record.id });
    expect(record.groups).toEqual(['web']);
    const text = await readFile(store.path, 'utf8');
    expect(text).not.toContain(secret);
    expect(text).toContain(record.id);
    const { stat } = await import('node:fs/promises');
    expect((await stat(store.path)).mode & 0o777).toBe(0o600);
    expect(() => parseToken(`${token}x`)).toThrow(expect.objectContaining({ code: 'TOKEN_MALFORMED' }));
  });

  it('when full, drops the oldest token that can no longer admit anyone, and refuses when all still can', async () => {
    const d = await mkdtemp(join(dir, 'b-'));
    let now = Date.parse('2026-11-29T08:00:00Z');
    const store = new TokenStore(d, () => now, { maxTokens: 3 });
    const spent = await store.create({ site: 'plant-7', ttlMs: 1_000 });
    const a = await store.create({ site: 'plant-7', ttlMs: 3_600_000 });
    const b = await store.create({ site: 'plant-7', ttlMs: 3_600_000 });
    now += 2_000; // `spent` has expired
    const c = await store.create({ site: 'plant-7', ttlMs: 3_600_000 });
    expect((await store.list()).map((t) => t.id).sort()).toEqual([a, b, c].map((x) => x.record.id).sort());
    const before = await readFile(store.path, 'utf8');
    await expect(store.create({ site: 'plant-7', ttlMs: 3_600_000 })).rejects.toMatchObject({
      code: 'TOKEN_LIMIT',
    });
    expect(await readFile(store.path, 'utf8')).toBe(before);
    expect(spent.record.id).not.toBe(a.record.id);
  });
});
