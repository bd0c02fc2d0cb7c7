/**
 * Mirror stores and loopback servers for in-process peer tests: a store made
 * from bundle files, and HTTP servers that are all closed at the end.
 */
import { once } from 'node:events';
import { mkdir, mkdtemp, readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { expect } from 'vitest';
import { importBundle } from '../../mirror/import.js';
import { Store } from '../../mirror/store.js';
import type { World } from './fixtures.js';

/** A new data dir for site plant-7 under `w`, with `bundles` imported (each must be accepted). */
export async function storeWith(w: World, ...bundles: string[]): Promise<Store> {
  const dir = await mkdtemp(join(w.dir, 'data-'));
  const store = await Store.open(dir, { init: { rootBytes: await readFile(w.rootPath), site: 'plant-7' } });
  for (const f of bundles) expect((await importBundle(store, f)).ok).toBe(true);
  await mkdir(store.paths.peerPulls, { recursive: true });
  return store;
}

/** Loopback HTTP servers, closed together by close(). */
export class Servers {
  private readonly all: Server[] = [];

  async listen(handler?: (req: IncomingMessage, res: ServerResponse) => void): Promise<string> {
    const s = createServer(handler);
    this.all.push(s);
    s.listen(0, '127.0.0.1');
    await once(s, 'listening');
    return `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
  }

  async close(): Promise<void> {
    for (const s of this.all.splice(0)) {
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    }
  }
}
