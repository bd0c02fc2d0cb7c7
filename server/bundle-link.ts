/**
 * A site mirror's link to the server (`ferry mirror serve --upstream URL`): the mirror asks for its
 * site's newest signed bundle newer than the sequence it holds, then downloads it (Range resumes).
 *
 *   GET /v1/link/bundles?after=N   → {bundle: {id, sequence, bytes, sha256} | null}
 *   GET /v1/link/bundles/:id       → the bundle file (ETag "<sha256>", Range, If-Range)
 *
 * Every request carries the mirror's signed `Ferry-Link-Auth` header (core/link-auth.ts): answered
 * only for a registered mirror, for its own site, once per nonce, within the time window. Only
 * bundles that are signed are offered (never one still waiting for the signing station), and only
 * one-file bundles (volumes are for the courier). A completed download is recorded on the bundle
 * ("fetched by mirror M at T") and in the audit log.
 */
import Router from '@koa/router';
import type { Context } from 'koa';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import {
  LINK_AUTH_HEADER,
  LINK_AUTH_STATUS,
  LinkAuthError,
  LinkNonces,
  verifyLinkRequest,
} from '../core/link-auth.js';
import { parseRange } from '../platform/http/range.js';
import { HttpError } from '../platform/http/server-errors.js';
import type { Logger } from '../platform/log.js';
import type { AuditLog } from './audit.js';
import type { BundleRecord, Catalog } from './catalog.js';
import type { MirrorRegistry } from './mirrors.js';

/** Fetch records kept per bundle (the newest). */
const MAX_FETCHES = 50;

export interface LinkDeps {
  catalog: Catalog;
  audit: AuditLog;
  mirrors: MirrorRegistry;
  log: Logger;
  now?: () => number;
}

/** sha256 of a bundle file, computed once per (path, size, mtime). */
class FileDigests {
  private cache = new Map<string, { key: string; sha256: string }>();

  async of(path: string): Promise<{ size: number; sha256: string }> {
    const st = await stat(path);
    const key = `${st.size}:${st.mtimeMs}`;
    const hit = this.cache.get(path);
    if (hit?.key === key) return { size: st.size, sha256: hit.sha256 };
    const h = createHash('sha256');
    for await (const chunk of createReadStream(path, { highWaterMark: 1024 * 1024 }) as AsyncIterable<Buffer>)
      h.update(chunk);
    const sha256 = h.digest('hex');
    this.cache.set(path, { key, sha256 });
    return { size: st.size, sha256 };
  }
}

const offered = (b: BundleRecord, site: string) =>
  b.site === site && b.status !== 'unsigned' && b.signatures > 0 && !b.volumes;

export function linkRouter(d: LinkDeps): Router {
  const r = new Router({ prefix: '/v1/link' });
  const nonces = new LinkNonces();
  const digests = new FileDigests();
  const now = d.now ?? Date.now;

  r.use(async (ctx, next) => {
    const header = ctx.get(LINK_AUTH_HEADER) || undefined;
    try {
      const probe = (id: string) => d.mirrors.get(id);
      let p;
      try {
        p = verifyLinkRequest(header, { method: ctx.method, path: ctx.url, now: now() }, probe);
      } catch (e) {
        if (!(e instanceof LinkAuthError) || e.code !== 'UNKNOWN_MIRROR') throw e;
        await d.mirrors.reload(); // registered since the registry was read
        p = verifyLinkRequest(header, { method: ctx.method, path: ctx.url, now: now() }, probe);
      }
      if (!nonces.take(p.nonce, now()))
        throw new LinkAuthError('REPLAY', `link request nonce ${p.nonce} was used before`);
      ctx.state.linkMirror = { id: p.mirror, site: p.site };
    } catch (e) {
      if (e instanceof LinkAuthError) {
        d.log.warn('link.refused', { code: e.code, reason: e.message, from: ctx.ip });
        throw new HttpError(LINK_AUTH_STATUS[e.code], e.code, e.message);
      }
      throw e;
    }
    await next();
  });

  const mirrorOf = (ctx: Context) => ctx.state.linkMirror as { id: string; site: string };

  r.get('/bundles', async (ctx) => {
    const { site } = mirrorOf(ctx);
    const q = ctx.query.after;
    if (q !== undefined && (typeof q !== 'string' || !/^\d{1,15}$/.test(q)))
      throw new HttpError(400, 'BAD_REQUEST', 'after must be a sequence number');
    const after = q === undefined ? 0 : Number(q);
    const bundles = (await d.catalog.read()).bundles.filter((b) => offered(b, site) && b.sequence > after);
    const newest = bundles.reduce<BundleRecord | undefined>(
      (best, b) => (!best || b.sequence > best.sequence ? b : best),
      undefined,
    );
    if (!newest) {
      ctx.body = { bundle: null };
      return;
    }
    const f = await digests.of(newest.file);
    ctx.body = { bundle: { id: newest.id, sequence: newest.sequence, bytes: f.size, sha256: f.sha256 } };
  });

  r.get('/bundles/:id', async (ctx) => {
    const mirror = mirrorOf(ctx);
    const id = ctx.params.id ?? '';
    const b = (await d.catalog.read()).bundles.find((x) => x.id === id && offered(x, mirror.site));
    if (!b) throw new HttpError(404, 'UNKNOWN_BUNDLE', `no signed bundle ${id} for site ${mirror.site}`);
    const { size, sha256 } = await digests.of(b.file);
    const etag = `"${sha256}"`;
    ctx.set('ETag', etag);
    ctx.set('Accept-Ranges', 'bytes');
    const ifRange = ctx.get('If-Range');
    const range =
      ifRange && ifRange !== etag ? { kind: 'none' as const } : parseRange(ctx.get('Range'), size);
    if (range.kind === 'unsatisfiable')
      throw new HttpError(416, 'RANGE_NOT_SATISFIABLE', `bundle is ${size} bytes`, {
        headers: { 'Content-Range': `bytes */${size}`, 'Accept-Ranges': 'bytes' },
      });
    const { start, end } = range.kind === 'partial' ? range : { start: 0, end: size - 1 };
    if (range.kind === 'partial') {
      ctx.status = 206;
      ctx.set('Content-Range', `bytes ${start}-${end}/${size}`);
    }
    ctx.type = 'application/octet-stream';
    ctx.body = createReadStream(b.file, { start, end, highWaterMark: 1024 * 1024 });
    ctx.length = end - start + 1;
    if (end === size - 1)
      ctx.res.once('finish', () => {
        recordFetch(d, b.id, mirror.id, new Date(now())).catch((e: unknown) =>
          d.log.warn('link.record_failed', {
            bundle: b.id,
            error: e instanceof Error ? e.message : String(e),
          }),
        );
      });
  });
  return r;
}

/** "Fetched by mirror M at T": on the bundle record and in the audit log. */
async function recordFetch(d: LinkDeps, id: string, mirror: string, at: Date): Promise<void> {
  const rec = await d.catalog.update((c) => {
    const b = c.bundles.find((x) => x.id === id);
    if (!b) return undefined;
    b.fetches = [...(b.fetches ?? []), { mirror, at: at.toISOString() }].slice(-MAX_FETCHES);
    return { site: b.site, sequence: b.sequence };
  });
  if (rec) await d.audit.append(`mirror:${mirror}`, 'bundle.fetched', { bundle: id, ...rec, mirror });
  d.log.info('link.fetched', { bundle: id, mirror });
}
