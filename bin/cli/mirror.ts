import { readFile } from 'node:fs/promises';
import { FerryError } from '../../core/errors.js';
import { createLogger } from '../../core/log.js';
import { importBundle } from '../../mirror/import.js';
import { startMirror } from '../../mirror/serve.js';
import { Store } from '../../mirror/store.js';
import { jsonOption, printJson, str, type Command, type Io } from './common.js';

/** Opens the data directory; `--trust` and `--site` set it up on first use and must agree later. */
async function openStore(dataDir: string, trust: string, site: string): Promise<Store> {
  if (Boolean(trust) !== Boolean(site)) throw new FerryError('USAGE', '--trust and --site go together');
  if (!trust) return Store.open(dataDir);
  let rootBytes: Buffer;
  try {
    rootBytes = await readFile(trust);
  } catch (e) {
    throw new FerryError('IO_ERROR', `cannot read trust root ${trust}: ${(e as Error).message}`, {
      cause: e,
    });
  }
  return Store.open(dataDir, { init: { rootBytes, site } });
}

export const mirrorImport: Command = {
  summary:
    'Imports bundle files (or volumes) into a mirror data directory: verified in one pass against the\n' +
    "mirror's pinned root and site, blobs stored by digest, the manifest activated once every blob it names\n" +
    'is held. Refusals change nothing but the quarantine record. Safe to run while the mirror serves.\n' +
    '--trust and --site set up a new data directory (otherwise the ones it recorded are used).',
  usage: 'FILE.ferry... --data DIR [--trust root.json --site S] [--json]',
  options: { data: { type: 'string' }, trust: { type: 'string' }, site: { type: 'string' }, ...jsonOption },
  positionals: { min: 1, max: 1000 },
  async run(p, io) {
    const store = await openStore(str(p, 'data'), str(p, 'trust', false), str(p, 'site', false));
    const results = [];
    for (const file of p.positionals) results.push(await importBundle(store, file));
    const refused = results.filter((r) => !r.ok).length;
    if (p.json) printJson(io, { ok: refused === 0, results });
    else {
      for (const r of results) {
        if (r.ok) {
          const what =
            r.status === 'pending' ? `pending, ${r.missing.length} blob(s) still to come` : r.status;
          io.out(
            `${r.file}: ${r.publisher} sequence ${r.sequence} ${what}${r.changed ? '' : ' (already imported)'}`,
          );
        } else io.err(`ferry: ${r.code}: ${r.file}: ${r.message}`);
      }
    }
    return refused === 0 ? 0 : 1;
  },
};

export const mirrorStatus: Command = {
  summary:
    'Shows what a mirror data directory serves: site, trust root, active and pending manifests, quarantine.',
  usage: '--data DIR [--json]',
  options: { data: { type: 'string' }, ...jsonOption },
  async run(p, io) {
    const store = await Store.open(str(p, 'data'));
    const state = await store.readState();
    const root = store.trustedRoot(state);
    if (p.json) {
      const { site, active, pending, publishers, quarantine, imports } = state;
      printJson(io, {
        ok: true,
        site,
        rootVersion: root.payload.version,
        active,
        pending,
        publishers,
        quarantine,
        imports,
      });
      return 0;
    }
    printStatus(io, state.site, root.payload.version, state);
    return 0;
  },
};

function printStatus(
  io: Io,
  site: string,
  rootVersion: number,
  state: Awaited<ReturnType<Store['readState']>>,
): void {
  io.out(`site ${site}, trust root v${rootVersion}`);
  const a = state.active;
  io.out(a ? `active: ${a.publisher} sequence ${a.sequence}, expires ${a.expires}` : 'active: none');
  for (const m of state.pending) io.out(`pending: ${m.publisher} sequence ${m.sequence} (waiting for blobs)`);
  for (const q of state.quarantine.slice(-10))
    io.out(`quarantined ${q.at}: ${q.file}: ${q.code}: ${q.message}`);
  for (const i of state.imports.slice(-5)) io.out(`imported ${i.at}: ${i.file} → ${i.status}`);
}

export const mirrorServe: Command = {
  summary:
    'Runs the site mirror: serves the verified store to agents and peer mirrors over HTTP and imports every\n' +
    'bundle or volume that appears in the drop folder once it is completely written. SIGTERM/SIGINT stop it\n' +
    'gracefully. Logs are JSON lines on stderr.',
  usage: '--data DIR --listen HOST:PORT [--trust root.json --site S] [--drop DIR]',
  options: {
    data: { type: 'string' },
    listen: { type: 'string' },
    trust: { type: 'string' },
    site: { type: 'string' },
    drop: { type: 'string' },
  },
  async run(p) {
    const { host, port } = parseListen(str(p, 'listen'));
    const log = createLogger({ component: 'mirror' });
    const trust = str(p, 'trust', false);
    const site = str(p, 'site', false);
    const drop = str(p, 'drop', false);
    const mirror = await startMirror({
      dataDir: str(p, 'data'),
      host,
      port,
      log,
      ...(trust && { trustPath: trust }),
      ...(site && { site }),
      ...(drop && { dropDir: drop }),
    });
    await new Promise<void>((resolve) => {
      const stop = (signal: string) => {
        log.info('mirror.signal', { signal });
        void mirror.close().then(resolve);
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    });
    return 0;
  },
};

function parseListen(s: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:]+)\]|([^:]+)):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535)
    throw new FerryError('USAGE', '--listen must be HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080');
  return { host: m[1] ?? m[2]!, port };
}
