/**
 * The forwarder relays through the peers a peers file lists (mirror/peer-list.ts), re-read as it
 * changes: a peer added there takes the backlog while the upstream is down, one removed is no longer
 * asked. Real files, real loopback HTTP, in process.
 */
import { once } from 'node:events';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOrCreateIdentity } from '../agent/identity.js';
import { signHeartbeat } from '../core/heartbeat.js';
import { verifyBatch, type CarriedBatch } from '../core/telemetry.js';
import { createLogger } from '../platform/log.js';
import { AgentsStore } from '../mirror/agents.js';
import { Forwarder } from '../mirror/forward.js';
import { mirrorIdentity } from '../mirror/identity.js';
import { peerList } from '../mirror/peer-list.js';
import { Store } from '../mirror/store.js';
import { makeWorld, type World } from './helpers/fixtures.js';
import { testHeartbeat } from './helpers/heartbeats.js';

let w: World;
const servers: Server[] = [];
const quiet = createLogger({ component: 'test', write: () => undefined });

beforeAll(async () => {
  w = await makeWorld();
});
afterAll(async () => {
  for (const s of servers) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
  await w.cleanup();
});

/** A receiver answering `status`, recording what it took. */
async function receiver(status: number) {
  const got: { headers: IncomingMessage['headers']; batches: CarriedBatch[] }[] = [];
  const s = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (status === 202)
        got.push({
          headers: req.headers,
          batches: (JSON.parse(Buffer.concat(chunks).toString()) as { batches: CarriedBatch[] }).batches,
        });
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(status === 202 ? { results: [] } : { code: 'DOWN', message: 'down' }));
    });
  });
  servers.push(s);
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  return { url: `http://127.0.0.1:${(s.address() as AddressInfo).port}`, got };
}

const until = async (ok: () => boolean, what: string, ms = 20_000) => {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

describe('forwarder and the peers file', () => {
  it('relays through a peer added to the file while the upstream is down, and stops asking one removed', async () => {
    const dir = await mkdtemp(join(w.dir, 'data-'));
    const store = await Store.open(dir, { init: { rootBytes: await readFile(w.rootPath), site: 'plant-7' } });
    const agents = new AgentsStore(store.dir, store.now);
    const a = await loadOrCreateIdentity(await mkdtemp(join(w.dir, 'agent-')));
    await agents.enroll({
      type: 'ferry.enroll/v1',
      publicKey: Buffer.from(a.publicKey).toString('hex'),
      hostname: 'n1',
      platform: 'linux/amd64',
      groups: [],
      at: new Date().toISOString(),
    });
    const beat = (c: number) =>
      agents.commit([
        {
          heartbeat: testHeartbeat(a.agentId, c),
          envelope: signHeartbeat(testHeartbeat(a.agentId, c), a.key),
        },
      ]);
    await beat(1);
    const outbox = await agents.outbox();
    const identity = await mirrorIdentity(store.dir);
    const up = await receiver(503);
    const first = await receiver(202);
    const second = await receiver(202);
    const file = join(w.dir, 'peers.txt');
    await writeFile(file, '# no peers yet\n');
    const f = new Forwarder({
      outbox,
      identity,
      site: 'plant-7',
      upstream: up.url,
      peerList: peerList([], file, quiet),
      log: quiet,
      retryBaseMs: 50,
      retryMaxMs: 200,
      lingerMs: 10,
    });
    f.start();
    await until(() => f.status().targets[0]!.failures > 0, 'the upstream to fail');
    expect(outbox.depth).toBeGreaterThan(0);
    expect(f.status().targets.map((t) => t.kind)).toEqual(['upstream']);

    await writeFile(file, `${first.url}\n`);
    await until(() => outbox.depth === 0, 'the first peer to take the backlog');
    expect(first.got[0]!.headers['ferry-relay']).toBe('peer');
    expect(verifyBatch(first.got[0]!.batches[0]!.envelope, identity.key.publicKey).records.length).toBe(2);

    // The file now names another peer: new records go there, and the first is not asked again.
    await writeFile(file, `# moved\n${second.url}\n`);
    await until(() => f.status().targets.some((t) => t.url === second.url), 'the file to be re-read');
    const firstCount = first.got.length;
    await beat(2);
    await until(
      () => outbox.depth === 0 && second.got.length === 1,
      'the second peer to take the new record',
    );
    expect(first.got.length).toBe(firstCount);
    expect(f.status().targets.map((t) => t.url)).toEqual([up.url, second.url]);
    await f.stop();
    await agents.close();
  });
});
