import { userInfo } from 'node:os';
import { writeFileAtomic } from '../../platform/fsx.js';
import { AuditLog } from '../../server/audit.js';
import { registerSite } from '../../server/actions.js';
import { FileCatalog } from '../../server/catalog.js';
import { loadPublicKey } from '../../platform/keyfile.js';
import { createLogger } from '../../platform/log.js';
import { importExport, type ImportReport } from '../../server/exports.js';
import { ensureIdentity } from '../../server/identity.js';
import { registerMirror } from '../../server/mirrors.js';
import { checkInventory, recordInventory, type InventoryOutcome } from '../../server/site-inventory.js';
import { ServerError } from '../../server/errors.js';
import { readFile } from 'node:fs/promises';
import { startServer } from '../../server/serve.js';
import { fleetView, type AgentView } from '../../server/fleet-state.js';
import { readStateOffline, ServerStore } from '../../server/store.js';
import { httpHelp, httpLimits, httpOptions, httpUsage } from './http-options.js';
import { usage } from '../../core/errors.js';
import {
  int,
  jsonOption,
  parseListen,
  printJson,
  str,
  untilSignal,
  type Command,
  type Io,
} from './common.js';

export const serverStart: Command = {
  crypto: 'service',
  summary:
    'Runs the connected-side server: takes telemetry batches from mirrors over HTTP (POST /v1/telemetry,\n' +
    '202 once durable), serves the web UI and the API (sign-in or bearer token; the first start creates\n' +
    'the admin and prints its one-time password). The rollout pages update every --ui-refresh seconds (5).\n' +
    'With --tls-cert and --tls-key (PEM) it serves HTTPS and marks its cookies Secure; behind a proxy that\n' +
    'terminates TLS, --cookie-secure marks them Secure over plain HTTP. ' +
    httpHelp +
    '\nSIGTERM/SIGINT stop it gracefully. Logs are JSON lines on stderr.',
  usage: `--data DIR --listen HOST:PORT [--ui-refresh SEC] [--tls-cert FILE --tls-key FILE | --cookie-secure] ${httpUsage}`,
  options: {
    data: { type: 'string' },
    listen: { type: 'string' },
    'ui-refresh': { type: 'string' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    'cookie-secure': { type: 'boolean' },
    ...httpOptions,
  },
  async run(p, io) {
    const { host, port } = parseListen(str(p, 'listen'));
    const log = createLogger({ component: 'server' });
    const limits = httpLimits(p);
    const refreshSec = int(p, 'ui-refresh', 5);
    if (refreshSec < 1 || refreshSec > 3600) throw usage('--ui-refresh must be 1-3600 seconds');
    const certPath = str(p, 'tls-cert', false);
    const keyPath = str(p, 'tls-key', false);
    if ((certPath === '') !== (keyPath === '')) throw usage('--tls-cert and --tls-key go together');
    const server = await startServer({
      dataDir: str(p, 'data'),
      host,
      port,
      log,
      limits,
      refreshSec,
      ...(certPath && keyPath && { tls: { certPath, keyPath } }),
      ...(p.values['cookie-secure'] === true && { cookieSecure: true }),
    });
    if (server.firstAdminPassword)
      io.out(
        `first start: created user admin; one-time password (shown only now, stored only as a hash): ${server.firstAdminPassword}\n` +
          `sign in at ${server.url}/login (ferry server user add makes more users)`,
      );
    else io.out(`web UI: ${server.url}/`);
    await untilSignal(log, 'server.signal', () => server.close());
    return 0;
  },
};

function printReport(io: Io, r: ImportReport): void {
  const chain =
    r.chain.status === 'gap'
      ? `gap: ${r.chain.message}`
      : r.chain.status === 'already imported'
        ? 'already imported'
        : 'ok';
  io.out(
    `${r.file}: mirror ${r.mirror} (site ${r.site}) export ${r.number}, seq ${r.from}..${r.to}: ${chain}`,
  );
  if (r.chain.status === 'already imported') return;
  io.out(
    `stored ${r.stored} heartbeat(s), ${r.enrolments} enrolment(s); ${r.duplicates} duplicate(s), ${r.parked} parked, ${r.rejected} rejected`,
  );
  for (const [code, n] of Object.entries(r.rejectedByCode)) io.out(`  rejected ${code}: ${n}`);
  if (r.batches.total)
    io.out(
      `relayed batches: ${r.batches.total} (${r.batches.stored} stored, ${r.batches.duplicate} duplicate, ${r.batches.rejected} rejected)`,
    );
  for (const [m, gaps] of Object.entries(r.coverageGaps))
    io.out(`mirror ${m}: seq ${gaps.join(', ')} not received`);
  if (r.counterGaps.missing) {
    io.out(
      `counter gaps: ${r.counterGaps.missing} heartbeat(s) missing across ${r.counterGaps.agents} agent(s)`,
    );
    for (const g of r.counterGaps.first) io.out(`  agent ${g.agentId}: ${g.gaps.join(', ')}`);
  }
  if (r.ack) io.out(`ack written to ${r.ack}`);
}

/** The inventory that travels beside an export: `--inventory PATH`, else `FILE.inventory.json` if present. */
async function inventoryBeside(
  file: string,
  given: string,
): Promise<{ path: string; bytes: Buffer } | undefined> {
  const path = given || `${file}.inventory.json`;
  try {
    return { path, bytes: await readFile(path) };
  } catch (e) {
    if (!given && (e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new ServerError(
      'BAD_INPUT',
      `${path} cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
    );
  }
}

function printInventory(io: Io, path: string, i: InventoryOutcome): void {
  const what =
    i.status === 'kept'
      ? "kept as the site's last known inventory"
      : i.status === 'same'
        ? 'already kept'
        : 'older than the one kept (ignored)';
  io.out(
    `${path}: inventory of site ${i.site} by mirror ${i.mirror}, ${i.blobs} blob(s), active sequence ${i.active ?? 'none'}, made ${i.created}: ${what}`,
  );
}

export const serverImportTelemetry: Command = {
  crypto: 'service',
  summary:
    'Imports a telemetry export a courier carried from a mirror: checks the signed header, hash and order of\n' +
    'every line before storing anything, ingests idempotently, reports chain, coverage and counter gaps.\n' +
    '--ack-out writes the signed acknowledgement for the courier to carry back (ferry mirror import-ack).\n' +
    "The site's signed inventory beside it (FILE.inventory.json, or --inventory PATH) is checked against the\n" +
    "registered mirror's key and site first (BAD_INVENTORY, UNKNOWN_MIRROR, WRONG_SITE refuse the whole\n" +
    "import); the newest per site is kept for the site's next bundle (ferry server bundle leaves out its blobs).",
  usage: 'FILE --data DIR [--ack-out ACK] [--inventory PATH] [--json]',
  options: {
    data: { type: 'string' },
    'ack-out': { type: 'string' },
    inventory: { type: 'string' },
    ...jsonOption,
  },
  positionals: { min: 1, max: 1 },
  async run(p, io) {
    const file = p.positionals[0]!;
    const inv = await inventoryBeside(file, str(p, 'inventory', false));
    const store = await ServerStore.open(str(p, 'data'));
    try {
      const dataDir = str(p, 'data');
      const catalog = new FileCatalog(dataDir);
      if (inv) {
        // checked before the export is read: a bad inventory refuses the whole import
        await store.mirrors.reload();
        const { inventory } = checkInventory(inv.bytes, store.mirrors);
        if (!Object.hasOwn((await catalog.read()).sites, inventory.site))
          throw new ServerError('UNKNOWN_SITE', `no site ${inventory.site} (ferry server site add)`);
      }
      const ackOut = str(p, 'ack-out', false);
      const r = await importExport(store, file, ackOut ? { ackOut } : {});
      const inventory = inv
        ? await recordInventory(catalog, new AuditLog(dataDir), dataDir, inv.bytes, store.mirrors, {
            actor: `cli:${userInfo().username}`,
            via: 'courier',
          })
        : undefined;
      if (r.chain.status !== 'already imported')
        await new AuditLog(store.dir).append(`cli:${userInfo().username}`, 'telemetry.imported', {
          mirror: r.mirror,
          site: r.site,
          export: r.number,
          stored: r.stored,
          rejected: r.rejected,
        });
      if (p.json) printJson(io, { ...r, inventory: inventory ?? null });
      else {
        printReport(io, r);
        if (inv && inventory) printInventory(io, inv.path, inventory);
      }
      return 0;
    } finally {
      await store.close();
    }
  },
};

export const serverRegisterMirror: Command = {
  summary:
    "Registers a site mirror's public key (its identity/mirror.pub) so the server accepts its telemetry.",
  usage: '--data DIR --site S --pub MIRROR.pub [--json]',
  options: { data: { type: 'string' }, site: { type: 'string' }, pub: { type: 'string' }, ...jsonOption },
  async run(p, io) {
    const key = await loadPublicKey(str(p, 'pub'));
    const r = await registerMirror(str(p, 'data'), key.publicKey, str(p, 'site'));
    if (r.changed) {
      const actor = `cli:${userInfo().username}`;
      const dataDir = str(p, 'data');
      const audit = new AuditLog(dataDir);
      await audit.append(actor, 'mirror.registered', { mirror: r.mirror, site: r.site });
      // the site is known from now on (its bundles start after sequence 0 unless `site add` said otherwise)
      await registerSite(
        { dataDir, catalog: new FileCatalog(dataDir), audit, actor },
        r.site,
        undefined,
        undefined,
      );
    }
    if (p.json) printJson(io, { ok: true, ...r });
    else io.out(`${r.mirror} site ${r.site}${r.changed ? ' registered' : ' (already registered)'}`);
    return 0;
  },
};

export const serverIdentity: Command = {
  summary: "Prints the server's key id (made on first use); --out copies server.pub for mirrors to pin.",
  usage: '--data DIR [--out FILE] [--json]',
  options: { data: { type: 'string' }, out: { type: 'string' }, ...jsonOption },
  async run(p, io) {
    const key = await ensureIdentity(str(p, 'data'));
    const out = str(p, 'out', false);
    if (out) {
      const pub = {
        type: 'ferry.pub/v1',
        keytype: 'ed25519',
        keyid: key.keyid,
        public: Buffer.from(key.publicKey).toString('hex'),
      };
      await writeFileAtomic(out, JSON.stringify(pub, null, 2) + '\n');
    }
    if (p.json) printJson(io, { ok: true, keyid: key.keyid, ...(out && { out }) });
    else io.out(key.keyid);
    return 0;
  },
};

function printFleet(io: Io, agents: AgentView[]): void {
  if (agents.length === 0) io.out('no agents');
  for (const a of agents) {
    const gaps = a.counterGaps.missing
      ? `, ${a.counterGaps.missing} missing (${a.counterGaps.first.join(', ')})`
      : '';
    io.out(
      `${a.id} ${a.site} ${a.hostname} [${a.groups.join(',')}] version ${a.version ?? '-'} manifest ${a.manifestSequence ?? '-'} last seen ${a.lastSeen ?? 'never'}, ${a.heartbeats} heartbeat(s)${gaps}` +
        (a.revoked
          ? ` REVOKED ${a.revoked.at} by mirror ${a.revoked.by}${a.revoked.reason ? ` (${a.revoked.reason})` : ''}`
          : ''),
    );
  }
}

export const serverAgents: Command = {
  summary: 'Shows the fleet as the server knows it, from the data directory (safe while the server runs).',
  usage: '--data DIR [--json]',
  options: { data: { type: 'string' }, ...jsonOption },
  async run(p, io) {
    const state = await readStateOffline(str(p, 'data'));
    const agents = fleetView(state);
    if (p.json) printJson(io, { ok: true, journalSeq: state.journalSeq, agents });
    else printFleet(io, agents);
    return 0;
  },
};
