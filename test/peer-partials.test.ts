/**
 * Stale files in a mirror's peer-pulls/: cleaned when the peer sync starts
 * and when a transfer is abandoned, while a partial that a transfer will
 * still resume — even one from a peer that is down right now — is kept.
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readdir, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHandler } from '../mirror/http/app.js';
import type { ImportResult } from '../mirror/import.js';
import { PeerSync } from '../mirror/peers.js';
import { nodeTransport } from '../platform/http/transport.js';
import { createLogger } from '../platform/log.js';
import { buildBundle, makeWorld, SAMPLE_ARTIFACTS, type World } from './helpers/fixtures.js';
import { sha256, sha256File } from './helpers/mirror-proc.js';
import { Servers, storeWith } from './helpers/peer-stores.js';

let w: World;
const servers = new Servers();
const quiet = createLogger({ component: 'test', write: () => undefined });
const transport = nodeTransport({ maxSockets: 8 });
const BIG = randomBytes(3 * 1024 * 1024);
const EXTRA = randomBytes(100_000);
let seq1 = '';
let seq2 = '';

beforeAll(async () => {
  w = await makeWorld();
  await buildBundle(w, (seq1 = join(w.dir, 'seq1.ferry')), { spec: { sequence: 1 } });
  await buildBundle(w, (seq2 = join(w.dir, 'seq2.ferry')), {
    spec: { sequence: 2 },
    artifacts: [
      ...SAMPLE_ARTIFACTS,
      { name: 'big', kind: 'file', content: BIG },
      { name: 'extra', kind: 'file', content: EXTRA },
    ],
  });
}, 60_000);

afterAll(async () => {
  await servers.close();
  await transport.close();
  await w.cleanup();
});

const newStore = (...bundles: string[]) => storeWith(w, ...bundles);
const honestPeer = async (...bundles: string[]) =>
  servers.listen(createHandler({ store: await newStore(...bundles) }));

/** A URL where nothing listens (a peer that is down). */
async function downPeer(): Promise<string> {
  const s = createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return `http://127.0.0.1:${port}`;
}

const hex = () => randomBytes(32).toString('hex');

describe('stale partials in peer-pulls/', () => {
  it('at start and after the round: stale files go, and the partial of a wanted blob is resumed', async () => {
    const url = await honestPeer(seq2);
    const mine = await newStore(seq1);
    const dir = mine.paths.peerPulls;
    const prefix = 1024 * 1024;
    const held = (await readdir(mine.paths.blobs))[0]!;
    await writeFile(join(dir, `${sha256(BIG)}.part`), BIG.subarray(0, prefix)); // still wanted
    await writeFile(join(dir, `${hex()}.part`), randomBytes(1000)); // named by no offer
    await writeFile(join(dir, `${hex()}.ranges.part`), randomBytes(1000)); // its range list is gone
    await writeFile(join(dir, `${held}.part`), randomBytes(10)); // the store holds it already
    await writeFile(join(dir, 'leftover.tmp'), 'x'); // not a name this directory uses
    let adopted!: (r: ImportResult) => void;
    const done = new Promise<ImportResult>((r) => (adopted = r));
    const s = new PeerSync({
      store: mine,
      peers: () => Promise.resolve([url]),
      transport,
      log: quiet,
      intervalMs: 60_000,
      onAdopted: (r) => adopted(r),
    });
    s.start();
    expect(await done).toMatchObject({ ok: true, sequence: 2, status: 'active' });
    await s.stop();
    expect(await readdir(dir)).toEqual([]);
    expect(await sha256File(mine.blobPath(sha256(BIG)))).toBe(sha256(BIG));
    // The kept prefix was not asked for again.
    expect(s.status()[0]!.received).toBe(BIG.length - prefix + EXTRA.length);
  }, 60_000);

  it('keeps the partial of a peer that is down, and drops it once no peer offers that blob', async () => {
    const down = await downPeer();
    const current = await honestPeer(seq1); // answers: nothing new
    const mine = await newStore(seq1);
    const part = `${sha256(BIG)}.part`;
    await writeFile(join(mine.paths.peerPulls, part), BIG.subarray(0, 4096));
    let list = [down, current];
    const s = new PeerSync({
      store: mine,
      peers: () => Promise.resolve(list),
      transport,
      log: quiet,
      backoffBaseMs: 1,
      backoffMaxMs: 1,
    });
    expect(await s.round()).toBeUndefined();
    expect(s.status().map((p) => p.link)).toEqual(['down', 'up']);
    // The down peer never said what it offers: the transfer may be its, and resumes when it is back.
    expect(await readdir(mine.paths.peerPulls)).toEqual([part]);
    list = [current]; // taken off the peer list: nothing names that blob any more
    expect(await s.round()).toBeUndefined();
    expect(await readdir(mine.paths.peerPulls)).toEqual([]);
  }, 30_000);
});
