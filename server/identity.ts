/**
 * The server's own Ed25519 key (`identity/server.key` + `.pub`), made on first
 * use. It signs acks; mirrors pin the `.pub`.
 */
import { access, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { isCodedError } from '../core/errors.js';
import { generateKeyFiles, loadPrivateKey, type PrivateKey } from '../platform/keyfile.js';

export const identityPaths = (dataDir: string) => ({
  key: join(dataDir, 'identity', 'server.key'),
  pub: join(dataDir, 'identity', 'server.pub'),
});

export async function ensureIdentity(dataDir: string): Promise<PrivateKey> {
  const p = identityPaths(dataDir);
  const exists = await access(p.key).then(
    () => true,
    () => false,
  );
  if (!exists) {
    await mkdir(join(dataDir, 'identity'), { recursive: true, mode: 0o700 });
    try {
      await generateKeyFiles(join(dataDir, 'identity'), 'server');
    } catch (e) {
      // another process made it first
      if (!(isCodedError(e) && e.code === 'IO_ERROR' && /already exists/.test(e.message))) throw e;
    }
  }
  return loadPrivateKey(p.key);
}
