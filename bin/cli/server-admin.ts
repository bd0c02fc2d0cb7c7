import { userInfo } from 'node:os';
import { dirname, resolve } from 'node:path';
import { parseJsonStrict } from '../../core/json.js';
import { loadPrivateKey } from '../../platform/keyfile.js';
import { AccessStore, ROLES, type Role } from '../../server/access.js';
import { buildBundle, registerRelease, registerSite, storeArtifact, type Ctx } from '../../server/actions.js';
import { AuditLog, verifyAudit } from '../../server/audit.js';
import {
  artifactKey,
  checkArtifactConflict,
  checkArtifactMeta,
  checkName,
  FileCatalog,
  hashFile,
  readSmallFile,
} from '../../server/catalog.js';
import { ServerError } from '../../server/errors.js';
import { importSignedBundle } from '../../server/site-bundle.js';
import { checkPolicyFile, checkPolicyRefs } from '../../server/policy-check.js';
import { jsonOption, parseSize, printJson, str, type Command, type Parsed } from './common.js';

/** Who did it, in the audit log: the operating-system user running the command. */
const cliActor = () => `cli:${userInfo().username}`;

function ctxOf(p: Parsed): Ctx {
  const dataDir = str(p, 'data');
  return { dataDir, catalog: new FileCatalog(dataDir), audit: new AuditLog(dataDir), actor: cliActor() };
}

export const serverAuditVerify: Command = {
  summary:
    'Checks the audit log (audit/log.jsonl): every entry in order, linked to the one before by its hash,\n' +
    'unchanged, none missing. Exit 1 names the first entry that does not hold. Safe while the server runs.',
  usage: '--data DIR [--json]',
  options: { data: { type: 'string' }, ...jsonOption },
  async run(p, io) {
    const v = await verifyAudit(str(p, 'data'));
    if (p.json)
      printJson(
        io,
        v.ok
          ? { ok: true, entries: v.entries }
          : { ok: false, code: 'AUDIT_BROKEN', message: v.bad!.reason, entries: v.entries, bad: v.bad },
      );
    else if (v.ok) io.out(`audit log ok: ${v.entries} entr${v.entries === 1 ? 'y' : 'ies'}, chain intact`);
    else
      io.err(
        `ferry: AUDIT_BROKEN: line ${v.bad!.line} (seq ${v.bad!.seq ?? '?'}): ${v.bad!.reason}; ${v.entries} entries before it hold`,
      );
    return v.ok ? 0 : 1;
  },
};

export const serverUserAdd: Command = {
  summary:
    'Adds a user of the web UI (admin or viewer) and prints its generated password once (only its scrypt hash is kept).',
  usage: '--data DIR --name NAME --role admin|viewer [--json]',
  options: { data: { type: 'string' }, name: { type: 'string' }, role: { type: 'string' }, ...jsonOption },
  async run(p, io) {
    const role = str(p, 'role');
    if (!ROLES.includes(role as Role)) throw new ServerError('BAD_INPUT', '--role must be admin or viewer');
    const c = ctxOf(p);
    const name = str(p, 'name');
    const password = await new AccessStore(c.dataDir).addUser(name, role as Role);
    await c.audit.append(c.actor, 'user.created', { user: name, role });
    if (p.json) printJson(io, { ok: true, user: name, role, password });
    else io.out(`user ${name} (${role}) created; password (shown once): ${password}`);
    return 0;
  },
};

export const serverTokenCreate: Command = {
  summary:
    "Makes a bearer token for the API with a user's role and prints it once (only its sha256 is kept).",
  usage: '--data DIR --user NAME [--json]',
  options: { data: { type: 'string' }, user: { type: 'string' }, ...jsonOption },
  async run(p, io) {
    const c = ctxOf(p);
    const t = await new AccessStore(c.dataDir).createToken(str(p, 'user'));
    await c.audit.append(c.actor, 'token.created', { user: str(p, 'user'), id: t.id, role: t.role });
    if (p.json) printJson(io, { ok: true, ...t });
    else io.out(t.token);
    return 0;
  },
};

export const serverSiteAdd: Command = {
  summary:
    'Registers a site: its name, the publisher its manifests carry, and the last sequence it has seen\n' +
    '(its next bundle gets one more).',
  usage: '--data DIR --name SITE [--publisher NAME] [--sequence N] [--json]',
  options: {
    data: { type: 'string' },
    name: { type: 'string' },
    publisher: { type: 'string' },
    sequence: { type: 'string' },
    ...jsonOption,
  },
  async run(p, io) {
    const s = await registerSite(
      ctxOf(p),
      str(p, 'name'),
      str(p, 'publisher', false),
      str(p, 'sequence', false),
    );
    if (p.json) printJson(io, { ok: true, site: s });
    else io.out(`site ${s.name}: publisher ${s.publisher}, sequence ${s.sequence}`);
    return 0;
  },
};

export const serverSiteList: Command = {
  summary:
    "Lists the registered sites: sequence, publisher, and the site's last known inventory (which mirror\n" +
    'signed it, when, how many blobs, its active sequence). Safe while the server runs.',
  usage: '--data DIR [--name SITE] [--json]',
  options: { data: { type: 'string' }, name: { type: 'string' }, ...jsonOption },
  async run(p, io) {
    const c = await ctxOf(p).catalog.read();
    const name = str(p, 'name', false);
    if (name && !Object.hasOwn(c.sites, name))
      throw new ServerError('UNKNOWN_SITE', `no site ${name} (ferry server site add)`);
    const sites = Object.values(c.sites).filter((s) => !name || s.name === name);
    if (p.json) printJson(io, { ok: true, sites });
    else if (sites.length === 0) io.out('no sites');
    else
      for (const s of sites) {
        const inv = s.inventory
          ? `inventory ${s.inventory.created} by mirror ${s.inventory.mirror.slice(0, 16)}…: ${s.inventory.blobs} blob(s), active ${s.inventory.active ?? 'none'} (${s.inventory.via})`
          : 'no inventory yet';
        io.out(`${s.name}: publisher ${s.publisher}, sequence ${s.sequence}; ${inv}`);
      }
    return 0;
  },
};

const SPEC_FIELDS = ['name', 'version', 'artifacts'];
const ARTIFACT_FIELDS = ['name', 'kind', 'version', 'platform', 'interpreter', 'path'];

export const serverReleaseAdd: Command = {
  summary:
    'Registers a release from a spec {name, version, artifacts:[{name, kind, version, platform?, interpreter?, path}]}\n' +
    '(paths relative to the spec): each file is stored by digest, then the release, which never changes.',
  usage: '--data DIR --spec RELEASE.json [--json]',
  options: { data: { type: 'string' }, spec: { type: 'string' }, ...jsonOption },
  async run(p, io) {
    const c = ctxOf(p);
    const specPath = str(p, 'spec');
    const bad = (m: string) => new ServerError('BAD_INPUT', `${specPath}: ${m}`);
    let spec: unknown;
    try {
      spec = parseJsonStrict(await readSmallFile(specPath, 1024 * 1024));
    } catch (e) {
      if (e instanceof ServerError) throw e;
      throw bad(`not strict JSON: ${(e as Error).message}`);
    }
    if (typeof spec !== 'object' || spec === null || Array.isArray(spec)) throw bad('not a JSON object');
    const s = spec as Record<string, unknown>;
    for (const k of Object.keys(s))
      if (!SPEC_FIELDS.includes(k)) throw bad(`unknown field ${JSON.stringify(k)}`);
    if (!Array.isArray(s.artifacts) || s.artifacts.length === 0)
      throw bad('artifacts must be a non-empty list');
    // every entry is checked before any byte is stored
    const entries = (s.artifacts as unknown[]).map((a, i) => {
      if (typeof a !== 'object' || a === null || Array.isArray(a))
        throw bad(`artifacts[${i}] is not an object`);
      const o = a as Record<string, unknown>;
      for (const k of Object.keys(o))
        if (!ARTIFACT_FIELDS.includes(k)) throw bad(`artifacts[${i}] has unknown field ${JSON.stringify(k)}`);
      if (typeof o.path !== 'string' || o.path === '') throw bad(`artifacts[${i}].path must name a file`);
      const { path, ...meta } = o;
      return {
        meta,
        checked: checkArtifactMeta(meta, `artifacts[${i}]`),
        path: resolve(dirname(resolve(specPath)), path),
      };
    });
    checkName(s.name, 'release name');
    if (typeof s.version !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(s.version))
      throw bad('version must be a version name');
    const current = await c.catalog.read();
    if (Object.hasOwn(current.releases, `${s.name as string}@${s.version}`))
      throw new ServerError(
        'RELEASE_EXISTS',
        `release ${s.name as string}@${s.version} already exists; releases never change`,
      );
    // every file read and checked against what is registered before any byte is stored
    for (const e of entries) checkArtifactConflict(current, e.checked, (await hashFile(e.path)).sha256);
    // every policy checked as the agents will check it, and against what the release carries
    for (const e of entries)
      if (e.checked.kind === 'policy') {
        const what = `policy ${e.checked.name}@${e.checked.version}`;
        checkPolicyRefs(
          await checkPolicyFile(e.path, what),
          entries.map((x) => x.checked),
          what,
        );
      }
    const keys: string[] = [];
    for (const e of entries) keys.push(artifactKey(await storeArtifact(c, e.meta, e.path)));
    const r = await registerRelease(c, s.name, s.version, keys);
    if (p.json) printJson(io, { ok: true, release: r });
    else {
      io.out(`release ${r.name}@${r.version} registered:`);
      for (const a of r.artifacts)
        io.out(`  ${a.kind} ${a.name} ${a.version} ${a.size} bytes sha256:${a.sha256}`);
    }
    return 0;
  },
};

export const serverBundle: Command = {
  summary:
    "Writes a site's next bundle from a release: the site's next sequence, the rollout plan of the strategy\n" +
    '(default staggered: a canary wave first), the site\'s pins and "update now" marks. Signed with --key, or\n' +
    'the key at signing/bundle.key in the data directory; --unsigned leaves it for an offline signing\n' +
    'station (ferry bundle sign there, then ferry server bundle import).\n' +
    "It leaves out every blob the site already holds: those of --have INVENTORY (a mirror's signed inventory),\n" +
    "or by default those of the site's last known inventory (came home beside a telemetry export); --full\n" +
    'writes them all. It prints the bytes written against the full bundle. --volume-size splits it.',
  usage:
    '--data DIR --site S --release NAME@VERSION [--strategy immediate|staggered|manual] [--key K | --unsigned] [--have INVENTORY | --full] [--volume-size 4G] [--expires 90d] [--out FILE] [--json]',
  options: {
    data: { type: 'string' },
    site: { type: 'string' },
    release: { type: 'string' },
    strategy: { type: 'string' },
    key: { type: 'string' },
    unsigned: { type: 'boolean' },
    expires: { type: 'string' },
    out: { type: 'string' },
    have: { type: 'string' },
    full: { type: 'boolean' },
    'volume-size': { type: 'string' },
    ...jsonOption,
  },
  async run(p, io) {
    const c = ctxOf(p);
    const have = str(p, 'have', false);
    const volumeSize = p.values['volume-size'] ? parseSize(str(p, 'volume-size'), 'volume-size') : undefined;
    const keyPath = str(p, 'key', false);
    if (keyPath && p.values.unsigned)
      throw new ServerError('BAD_INPUT', '--key and --unsigned exclude each other');
    const key = keyPath ? await loadPrivateKey(keyPath) : undefined;
    const out = str(p, 'out', false);
    const expires = str(p, 'expires', false);
    const { record, manifest } = await buildBundle(
      c,
      str(p, 'site'),
      str(p, 'release'),
      str(p, 'strategy', false),
      {
        signed: !p.values.unsigned,
        ...(key && { key }),
        ...(out && { out }),
        ...(expires && { expires }),
        ...(have && { have }),
        ...(p.values.full && { full: true }),
        ...(volumeSize !== undefined && { volumeSize }),
      },
    );
    const size = {
      written: record.bytes,
      full: record.delta?.fullBytes ?? record.bytes,
      saved: record.delta ? record.delta.fullBytes - record.bytes : 0,
    };
    if (p.json) printJson(io, { ok: true, bundle: record, manifest, bytes: size });
    else {
      io.out(
        `${record.file}: site ${record.site} sequence ${record.sequence}, release ${record.release}, ${record.strategy}, ${record.bytes} bytes, ${record.status}`,
      );
      for (const v of record.volumes ?? []) io.out(`  volume ${v}`);
      if (record.delta)
        io.out(
          `delta: ${record.delta.omitted} blob(s) the site holds left out (inventory of ${record.delta.created}): ${size.written} bytes written instead of ${size.full} (${size.saved} saved)`,
        );
      if (manifest.rollout)
        io.out(
          `plan: waves ${manifest.rollout.waves.map((w) => `${w.percent}%`).join(' → ')} to ${manifest.rollout.agent}`,
        );
      if (record.status === 'unsigned')
        io.out(
          'next: ferry bundle sign FILE --key K at the signing station, then ferry server bundle import FILE',
        );
    }
    return 0;
  },
};

export const serverBundleImport: Command = {
  summary:
    'Records a bundle signed at an offline station: its manifest must be byte for byte one this server built\n' +
    '(BUNDLE_MISMATCH otherwise) and carry at least one signature.',
  usage: 'FILE --data DIR [--json]',
  options: { data: { type: 'string' }, ...jsonOption },
  positionals: { min: 1, max: 1 },
  async run(p, io) {
    const c = ctxOf(p);
    const rec = await importSignedBundle(c.catalog, c.audit, p.positionals[0]!, c.actor);
    if (p.json) printJson(io, { ok: true, bundle: rec });
    else
      io.out(
        `bundle ${rec.id} (site ${rec.site}, sequence ${rec.sequence}) recorded with ${rec.signatures} signature(s)`,
      );
    return 0;
  },
};
