/**
 * The JSON API beyond telemetry: releases, sites, pins, bundles, bulk actions, rollouts and the audit
 * log. Reads need a viewer, changes an admin (bearer token, or a browser session with its CSRF token
 * in `X-CSRF-Token`). Bodies are strict JSON (platform/http/server-body.ts); bad input is a coded
 * 400 and changes nothing.
 */
import Router from '@koa/router';
import type { Context } from 'koa';
import { readJsonBody } from '../platform/http/server-body.js';
import { HttpError } from '../platform/http/server-errors.js';
import {
  bulk,
  buildBundle,
  registerRelease,
  registerSite,
  setPin,
  storeArtifact,
  type Ctx,
} from './actions.js';
import type { AuditLog } from './audit.js';
import { checkCsrf, need } from './auth-http.js';
import type { Catalog } from './catalog.js';
import { queryAgents, rolloutsOf, siteHealth } from './fleet-query.js';
import type { ServerStore } from './store.js';
import { readUploadRaw } from './upload-raw.js';
import { rollbackSite } from './rollback.js';

const BODY = 256 * 1024;

export interface ApiDeps {
  store: ServerStore;
  catalog: Catalog;
  audit: AuditLog;
  maxUploadBytes?: number;
}

function obj(v: unknown): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new HttpError(400, 'BAD_INPUT', 'body must be a JSON object');
  return v as Record<string, unknown>;
}

function onlyKeys(o: Record<string, unknown>, keys: string[]): void {
  for (const k of Object.keys(o))
    if (!keys.includes(k)) throw new HttpError(400, 'BAD_INPUT', `unknown field ${JSON.stringify(k)}`);
}

export function apiRouter(d: ApiDeps): Router {
  const r = new Router({ prefix: '/v1' });
  const admin = async (ctx: Context, keys: string[]) => {
    const p = need(ctx, 'admin');
    checkCsrf(ctx, undefined);
    const body = obj(await readJsonBody(ctx, BODY));
    onlyKeys(body, keys);
    const c: Ctx = { dataDir: d.store.dir, catalog: d.catalog, audit: d.audit, actor: p.user };
    return { c, body };
  };
  const int = (ctx: Context, k: string, dflt: number, max: number) => {
    const v = ctx.query[k];
    if (v === undefined) return dflt;
    if (typeof v !== 'string' || !/^\d{1,7}$/.test(v) || Number(v) > max)
      throw new HttpError(400, 'BAD_INPUT', `${k} must be a number up to ${max}`);
    return Number(v);
  };

  r.get('/fleet', async (ctx) => {
    need(ctx, 'viewer');
    const catalog = await d.catalog.read();
    const f: Record<string, string | boolean> = {};
    for (const k of ['site', 'version'] as const) if (typeof ctx.query[k] === 'string') f[k] = ctx.query[k];
    for (const k of ['behind', 'failing', 'silent'] as const) if (ctx.query[k] === '1') f[k] = true;
    const page = queryAgents(
      d.store.state,
      catalog,
      f,
      int(ctx, 'offset', 0, 10_000_000),
      int(ctx, 'limit', 100, 1000),
      Date.now(),
    );
    ctx.body = {
      total: page.total,
      offset: page.offset,
      agents: page.rows.map((a) => ({
        id: a.id,
        site: a.site,
        hostname: a.hostname,
        groups: a.groups,
        version: a.latest?.version ?? null,
        lastSeen: a.latest?.sentAt ?? null,
        via: a.latest?.via ?? null,
      })),
    };
  });
  r.get('/sites', async (ctx) => {
    need(ctx, 'viewer');
    const c = await d.catalog.read();
    ctx.body = { sites: Object.values(c.sites), health: siteHealth(d.store.state, c, Date.now()) };
  });
  r.get('/sites/:site/rollouts', (ctx) => {
    need(ctx, 'viewer');
    ctx.body = { rollouts: rolloutsOf(d.store.state, ctx.params.site ?? '') };
  });
  r.get('/releases', async (ctx) => {
    need(ctx, 'viewer');
    const c = await d.catalog.read();
    ctx.body = { releases: Object.values(c.releases), artifacts: Object.values(c.artifacts) };
  });
  r.get('/bundles', async (ctx) => {
    need(ctx, 'viewer');
    ctx.body = { bundles: (await d.catalog.read()).bundles };
  });
  r.get('/audit', async (ctx) => {
    need(ctx, 'viewer');
    ctx.body = await d.audit.page(int(ctx, 'offset', 0, 100_000_000), int(ctx, 'limit', 100, 1000));
  });

  r.post('/artifacts', async (ctx) => {
    const p = need(ctx, 'admin');
    checkCsrf(ctx, undefined);
    const meta: Record<string, unknown> = {};
    for (const k of ['name', 'kind', 'version', 'platform', 'interpreter'])
      if (typeof ctx.query[k] === 'string') meta[k] = ctx.query[k];
    const up = await readUploadRaw(ctx, d.store.dir, d.maxUploadBytes ?? 4 * 1024 ** 3);
    try {
      ctx.body = {
        artifact: await storeArtifact(
          { dataDir: d.store.dir, catalog: d.catalog, audit: d.audit, actor: p.user },
          meta,
          up.file,
        ),
      };
      ctx.status = 201;
    } finally {
      await up.cleanup();
    }
  });
  r.post('/releases', async (ctx) => {
    const { c, body } = await admin(ctx, ['name', 'version', 'artifacts']);
    ctx.body = { release: await registerRelease(c, body.name, body.version, body.artifacts) };
    ctx.status = 201;
  });
  r.post('/sites', async (ctx) => {
    const { c, body } = await admin(ctx, ['name', 'publisher', 'sequence']);
    const seq =
      body.sequence === undefined
        ? undefined
        : typeof body.sequence === 'number'
          ? String(body.sequence)
          : body.sequence;
    ctx.body = { site: await registerSite(c, body.name, body.publisher, seq) };
    ctx.status = 201;
  });
  r.post('/sites/:site/pins', async (ctx) => {
    const { c, body } = await admin(ctx, ['target', 'version']);
    await setPin(c, ctx.params.site ?? '', body.target, body.version);
    ctx.body = { ok: true };
  });
  r.post('/agents/bulk', async (ctx) => {
    const { c, body } = await admin(ctx, ['action', 'agents', 'value']);
    ctx.body = { ok: true, agents: await bulk(c, d.store.state, body.action, body.agents, body.value) };
  });
  r.post('/bundles', async (ctx) => {
    const { c, body } = await admin(ctx, ['site', 'release', 'strategy', 'signed', 'full', 'volumeSize']);
    for (const k of ['signed', 'full'])
      if (body[k] !== undefined && typeof body[k] !== 'boolean')
        throw new HttpError(400, 'BAD_INPUT', `${k} must be true or false`);
    if (body.volumeSize !== undefined && !Number.isSafeInteger(body.volumeSize))
      throw new HttpError(400, 'BAD_INPUT', 'volumeSize must be a whole number of bytes');
    const { record } = await buildBundle(c, body.site, body.release, body.strategy, {
      signed: body.signed !== false,
      full: body.full === true,
      ...(body.volumeSize !== undefined && { volumeSize: body.volumeSize as number }),
    });
    ctx.body = { bundle: record };
    ctx.status = 201;
  });

  // Roll a site back to an older release (server/rollback.ts): its next bundle, pinned so agents accept it.
  r.post('/sites/:site/rollback', async (ctx) => {
    const { c, body } = await admin(ctx, ['release', 'signed']);
    if (body.signed !== undefined && typeof body.signed !== 'boolean')
      throw new HttpError(400, 'BAD_INPUT', 'signed must be true or false');
    const out = await rollbackSite(c, d.store.state, ctx.params.site ?? '', body.release, {
      signed: body.signed !== false,
    });
    ctx.body = { bundle: out.record, rollback: out.rollback };
    ctx.status = 201;
  });
  return r;
}
