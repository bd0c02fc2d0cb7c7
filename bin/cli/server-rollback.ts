import { userInfo } from 'node:os';
import { isCodedError } from '../../core/errors.js';
import { loadPrivateKey } from '../../platform/keyfile.js';
import { AuditLog } from '../../server/audit.js';
import { FileCatalog } from '../../server/catalog.js';
import { ServerError } from '../../server/errors.js';
import { emptyState } from '../../server/fleet-state.js';
import { rollbackSite } from '../../server/rollback.js';
import { readStateOffline } from '../../server/store.js';
import { jsonOption, printJson, str, type Command } from './common.js';

export const serverRollback: Command = {
  summary:
    'Rolls a site back: writes its next bundle with an older release, pinned so that agents that already\n' +
    'committed the newer version accept it (every group the server has seen at the site, and any pin naming\n' +
    'a newer version, is pinned to the older agent). The pins stay in the site record until removed.\n' +
    'Approve, halt, resume and abort stay with the site (ferry mirror rollout …). Safe while the server runs.',
  usage:
    '--data DIR --site S --to-release NAME@VERSION [--key K | --unsigned] [--expires 90d] [--out FILE] [--json]',
  options: {
    data: { type: 'string' },
    site: { type: 'string' },
    'to-release': { type: 'string' },
    key: { type: 'string' },
    unsigned: { type: 'boolean' },
    expires: { type: 'string' },
    out: { type: 'string' },
    ...jsonOption,
  },
  async run(p, io) {
    const dataDir = str(p, 'data');
    const keyPath = str(p, 'key', false);
    if (keyPath && p.values.unsigned)
      throw new ServerError('BAD_INPUT', '--key and --unsigned exclude each other');
    const key = keyPath ? await loadPrivateKey(keyPath) : undefined;
    const out = str(p, 'out', false);
    const expires = str(p, 'expires', false);
    // a server that never ran has heard from no agent: only the site's own pins are lowered
    const state = await readStateOffline(dataDir).catch((e: unknown) => {
      if (isCodedError(e) && e.code === 'STORE_INVALID') return emptyState();
      throw e;
    });
    const c = {
      dataDir,
      catalog: new FileCatalog(dataDir),
      audit: new AuditLog(dataDir),
      actor: `cli:${userInfo().username}`,
    };
    const r = await rollbackSite(c, state, str(p, 'site'), str(p, 'to-release'), {
      signed: !p.values.unsigned,
      ...(key && { key }),
      ...(out && { out }),
      ...(expires && { expires }),
    });
    if (p.json) printJson(io, { ok: true, bundle: r.record, rollback: r.rollback });
    else {
      io.out(
        `${r.record.file}: site ${r.record.site} sequence ${r.record.sequence} rolls back ${r.rollback.from} → ${r.rollback.to} (release ${r.record.release}), ${r.record.status}`,
      );
      io.out(
        `pins: ${
          Object.entries(r.rollback.pins)
            .map(([k, v]) => `${k}=${v}`)
            .join(', ') || 'none'
        }`,
      );
      if (r.record.status === 'unsigned')
        io.out(
          'next: ferry bundle sign FILE --key K at the signing station, then ferry server bundle import FILE',
        );
    }
    return 0;
  },
};
