/**
 * The mirror's durable copy of the site log (mirror/site-log.ts), on real files: it survives a reopen,
 * keeps an entry heard twice once, refuses what no listed mirror signed without writing anything, and
 * stays bounded by compaction without moving a peer's cursor backwards.
 */
import { mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateKeyPair, keyIdOf } from '../core/ed25519.js';
import { signSiteEntry, SITE_LOG_TYPE, type SiteLogBody } from '../core/site-log.js';
import { mirrorIdOf } from '../core/telemetry.js';
import { mirrorIdentity } from '../mirror/identity.js';
import { SiteLog } from '../mirror/site-log.js';
import { makeWorld, snapshotDir, type World } from './helpers/fixtures.js';

let w: World;
beforeAll(async () => {
  w = await makeWorld();
});
afterAll(async () => {
  await w.cleanup();
});

const peer = generateKeyPair();
const peerId = mirrorIdOf(peer.publicKey);
const stranger = generateKeyPair();
const rollout = (n: number, action: 'halt' | 'approve' = 'halt'): SiteLogBody =>
  action === 'halt'
    ? { kind: 'rollout', rolloutId: n.toString(16).padStart(64, '0'), action, actor: 'op', reason: `r${n}` }
    : {
        kind: 'rollout',
        rolloutId: n.toString(16).padStart(64, '0'),
        action,
        actor: 'op',
        reason: '',
        wave: 1,
      };
const signedBy = (k: typeof peer, body: SiteLogBody, at = Date.now()) =>
  JSON.parse(
    JSON.stringify(
      signSiteEntry(
        { ...body, type: SITE_LOG_TYPE, site: 'plant-7', mirror: mirrorIdOf(k.publicKey), at } as never,
        {
          keyid: keyIdOf(k.publicKey),
          seed: k.seed,
        },
      ).envelope,
    ),
  ) as unknown;

async function open(dir: string, limits = {}) {
  const identity = await mirrorIdentity(dir);
  return SiteLog.open(dir, 'plant-7', identity, new Map([[peerId, peer.publicKey]]), limits);
}

describe('the site log on disk', () => {
  it('keeps its own and listed peers’ entries across a reopen, each once; refusals write nothing', async () => {
    const dir = await mkdtemp(join(w.dir, 'log-'));
    let log = await open(dir);
    const own = await log.record(rollout(1), Date.now());
    const theirs = signedBy(peer, rollout(1, 'approve'));
    expect(await log.accept(theirs)).toBe(true);
    expect(await log.accept(theirs)).toBe(false);
    const before = await snapshotDir(join(dir, 'site-log'));
    await expect(log.accept(signedBy(stranger, rollout(2)))).rejects.toMatchObject({
      code: 'SITE_LOG_UNKNOWN_MIRROR',
    });
    await expect(log.accept({ payloadType: 'x', payload: '', signatures: [] })).rejects.toMatchObject({
      code: 'SITE_LOG_INVALID',
    });
    expect(await snapshotDir(join(dir, 'site-log'))).toEqual(before);
    await log.close();
    log = await open(dir);
    expect(log.all().map((e) => e.id)).toEqual([own.id, log.all()[1]!.id]);
    expect(log.size).toBe(2);
    expect(log.after(0, 10).entries).toHaveLength(2);
    expect(log.after(1, 10)).toMatchObject({ next: 2 });
    await log.close();
  });

  it('compacts past its bound: old rollouts go, the newest stay, cursors only move forward', async () => {
    const dir = await mkdtemp(join(w.dir, 'log-'));
    const log = await open(dir, { maxEntries: 6, keepRollouts: 2 });
    for (let i = 1; i <= 5; i++) await log.record(rollout(i), Date.now() + i);
    const head = log.head;
    await log.record(rollout(6), Date.now() + 6); // the sixth: compaction
    const kept = log.all().map((e) => (e.payload.kind === 'rollout' ? e.payload.reason : ''));
    expect(kept).toEqual(['r5', 'r6']);
    expect(log.head).toBeGreaterThan(head);
    // A peer that had read everything before gets what stays again (same ids: kept once there).
    const page = log.after(head, 10);
    expect(page.entries).toHaveLength(2);
    expect(page.next).toBe(log.head);
    await log.close();
    const again = await open(dir, { maxEntries: 6, keepRollouts: 2 });
    expect(again.size).toBe(2);
    await again.close();
  });
});
