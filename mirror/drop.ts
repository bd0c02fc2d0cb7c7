/**
 * The drop folder: a courier copies bundles (or volumes) in and walks away.
 * A file is imported once it is completely written (its size has been stable
 * for a while), again whenever it changes, and never modified or deleted.
 */
import { stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { watch, type FSWatcher } from 'chokidar';
import type { Logger } from '../platform/log.js';

export interface DropOptions {
  dir: string;
  /** Imports one file; must be safe to call for any file, any number of times. */
  importFile: (path: string) => Promise<unknown>;
  log: Logger;
  /** How long a file's size must stay unchanged before it is read (ms). */
  stableMs?: number;
  /** Poll instead of inotify (removable media, network shares). */
  usePolling?: boolean;
}

export interface DropWatcher {
  ready: Promise<void>;
  /** Resolves when every import started so far has finished. */
  idle(): Promise<void>;
  close(): Promise<void>;
}

const wanted = (path: string) => path.endsWith('.ferry') && !basename(path).startsWith('.');

export function watchDrop(opts: DropOptions): DropWatcher {
  const seen = new Map<string, string>(); // path → size:mtime last imported
  let chain: Promise<unknown> = Promise.resolve();
  const watcher: FSWatcher = watch(opts.dir, {
    depth: 0,
    ignoreInitial: false,
    usePolling: opts.usePolling ?? false,
    awaitWriteFinish: { stabilityThreshold: opts.stableMs ?? 2000, pollInterval: 100 },
    ignored: (path, stats) => Boolean(stats?.isFile()) && !wanted(path),
  });

  const onFile = (path: string) => {
    if (!wanted(path)) return;
    chain = chain.then(async () => {
      const st = await stat(path).catch(() => undefined);
      if (!st?.isFile()) return;
      const tag = `${st.size}:${st.mtimeMs}`;
      if (seen.get(path) === tag) return;
      seen.set(path, tag);
      opts.log.info('drop.found', { file: path, bytes: st.size });
      try {
        await opts.importFile(path);
      } catch (e) {
        seen.delete(path); // an operational failure (disk, lock): try again on the next event
        opts.log.error('drop.import_failed', { file: path, error: e });
      }
    });
  };
  watcher.on('add', onFile).on('change', onFile);
  watcher.on('error', (e) => opts.log.error('drop.watch_error', { error: e }));
  const ready = new Promise<void>((resolve) => watcher.once('ready', () => resolve()));
  return {
    ready,
    idle: async () => {
      let last: Promise<unknown>;
      do {
        last = chain;
        await last;
      } while (last !== chain);
    },
    close: async () => {
      await watcher.close();
      await chain;
    },
  };
}
