/**
 * Registered mirrors (`mirrors.json`): which mirror key speaks for which site.
 * Written atomically under a short lock, so `register-mirror` may run while
 * the server serves; the server rereads the file when it meets a mirror it
 * does not know.
 */
import { mkdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../platform/fsx.js';
import { mirrorIdOf } from '../core/telemetry.js';
import { acquireLock } from '../platform/lock.js';
import { ServerError } from './errors.js';
import type { MirrorInfo, Registry } from './ingest.js';

export interface MirrorEntry {
  publicKey: string;
  site: string;
  registeredAt: string;
}

export interface MirrorsFile {
  mirrors: Record<string, MirrorEntry>;
}

const SITE = /^[A-Za-z0-9._-]{1,64}$/;

export const mirrorsPath = (dataDir: string) => join(dataDir, 'mirrors.json');

export async function readMirrors(dataDir: string): Promise<MirrorsFile> {
  let text: string;
  try {
    text = await readFile(mirrorsPath(dataDir), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { mirrors: {} };
    throw e;
  }
  try {
    const v = JSON.parse(text) as MirrorsFile;
    if (typeof v !== 'object' || v === null || typeof v.mirrors !== 'object' || v.mirrors === null)
      throw new Error('no mirrors object');
    return v;
  } catch (e) {
    throw new ServerError('STORE_INVALID', `${mirrorsPath(dataDir)}: ${(e as Error).message}`);
  }
}

/** Registers a mirror's key for a site; the same key for the same site again changes nothing. */
export async function registerMirror(
  dataDir: string,
  publicKey: Uint8Array,
  site: string,
  now = new Date(),
): Promise<{ mirror: string; site: string; changed: boolean }> {
  if (!SITE.test(site))
    throw new ServerError('STORE_INVALID', `site ${JSON.stringify(site)} must be 1-64 of A-Z a-z 0-9 . _ -`);
  const id = mirrorIdOf(publicKey);
  await mkdir(dataDir, { recursive: true });
  const release = await acquireLock(`${mirrorsPath(dataDir)}.lock`, { timeoutMs: 10_000 });
  try {
    const file = await readMirrors(dataDir);
    const cur = file.mirrors[id];
    if (cur) {
      if (cur.site !== site)
        throw new ServerError(
          'MIRROR_SITE_CONFLICT',
          `mirror ${id} is registered for site ${cur.site}, not ${site}`,
        );
      return { mirror: id, site, changed: false };
    }
    file.mirrors[id] = {
      publicKey: Buffer.from(publicKey).toString('hex'),
      site,
      registeredAt: now.toISOString(),
    };
    await writeFileAtomic(mirrorsPath(dataDir), JSON.stringify(file, null, 2) + '\n');
    return { mirror: id, site, changed: true };
  } finally {
    await release();
  }
}

/** The registry an ingest asks; reloads the file when it changed and a mirror is not found. */
export class MirrorRegistry implements Registry {
  private byId = new Map<string, MirrorInfo>();
  private mtimeMs = -1;

  private constructor(readonly dataDir: string) {}

  static async open(dataDir: string): Promise<MirrorRegistry> {
    const r = new MirrorRegistry(dataDir);
    await r.reload();
    return r;
  }

  async reload(): Promise<void> {
    const m = await stat(mirrorsPath(this.dataDir)).then(
      (s) => s.mtimeMs,
      () => 0,
    );
    if (m === this.mtimeMs) return;
    const file = await readMirrors(this.dataDir);
    const next = new Map<string, MirrorInfo>();
    for (const [id, e] of Object.entries(file.mirrors))
      next.set(id, { id, site: e.site, publicKey: Buffer.from(e.publicKey, 'hex') });
    this.byId = next;
    this.mtimeMs = m;
  }

  get(id: string): MirrorInfo | undefined {
    return this.byId.get(id);
  }

  list(): MirrorInfo[] {
    return [...this.byId.values()];
  }
}
