/**
 * The mirror's own Ed25519 key, made on first use in `<data>/identity/`
 * (mirror.key 0600, mirror.pub). It signs the batches and exports the mirror
 * sends home; the operator registers mirror.pub with the server once. The
 * mirror id is the first 32 hex of the key's keyid.
 */
import { mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { generateKeyFiles, loadPrivateKey, type PrivateKey } from '../platform/keyfile.js';
import { fsyncDir } from '../platform/fsx.js';
import { mirrorIdOf } from '../core/telemetry.js';

export interface MirrorIdentity {
  id: string;
  key: PrivateKey;
  keyPath: string;
  pubPath: string;
}

const byDir = new Map<string, Promise<MirrorIdentity>>();

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return false;
      throw e;
    },
  );
}

/** Loads the mirror's key, making it on first use. */
export function mirrorIdentity(dataDir: string): Promise<MirrorIdentity> {
  let p = byDir.get(dataDir);
  if (!p) {
    p = (async () => {
      const dir = join(dataDir, 'identity');
      const keyPath = join(dir, 'mirror.key');
      const pubPath = join(dir, 'mirror.pub');
      if (!(await exists(keyPath))) {
        const made = await mkdir(dir, { recursive: true, mode: 0o700 });
        if (made !== undefined) await fsyncDir(dataDir);
        try {
          await generateKeyFiles(dir, 'mirror');
        } catch (e) {
          // another process made it first (exclusive writes): use theirs
          if (!(await exists(keyPath))) throw e;
        }
      }
      const key = await loadPrivateKey(keyPath);
      return { id: mirrorIdOf(key.publicKey), key, keyPath, pubPath };
    })();
    byDir.set(dataDir, p);
    p.catch(() => byDir.delete(dataDir));
  }
  return p;
}
