/**
 * The peers a mirror syncs with: the `--peer` URLs plus a peers file (one URL
 * a line, `#` starts a comment), re-read whenever its modification time or
 * size changes, so an operator adds or removes a peer without a restart. A
 * line that is not an http(s) URL is skipped and logged once per change; a
 * file that cannot be read keeps the last list that could.
 */
import { readFile, stat } from 'node:fs/promises';
import type { Logger } from '../platform/log.js';

export function isPeerUrl(s: string): boolean {
  try {
    const u = new URL(s);
    return (u.protocol === 'http:' || u.protocol === 'https:') && u.search === '' && u.hash === '';
  } catch {
    return false;
  }
}

export function parsePeersFile(text: string): { urls: string[]; bad: string[] } {
  const urls: string[] = [];
  const bad: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    if (line === '') continue;
    if (isPeerUrl(line)) urls.push(line.replace(/\/+$/, ''));
    else bad.push(line);
  }
  return { urls, bad };
}

/** A function giving the current peer list (fixed URLs first, then the file's). */
export function peerList(
  fixed: readonly string[],
  file: string | undefined,
  log: Logger,
): () => Promise<string[]> {
  let seen = '';
  let fromFile: string[] = [];
  return async () => {
    if (file) {
      const st = await stat(file).catch(() => undefined);
      const tag = st ? `${st.mtimeMs}:${st.size}:${st.ino}` : 'missing';
      if (tag !== seen) {
        seen = tag;
        try {
          const { urls, bad } = parsePeersFile(await readFile(file, 'utf8'));
          fromFile = urls;
          log.info('peer.list', { file, peers: urls, ...(bad.length > 0 && { skipped: bad }) });
        } catch (e) {
          log.warn('peer.list_unreadable', { file, error: (e as Error).message, keeping: fromFile });
        }
      }
    }
    return [...new Set([...fixed.map((u) => u.replace(/\/+$/, '')), ...fromFile])];
  };
}
