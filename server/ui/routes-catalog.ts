/**
 * The catalog's routes: releases and artifact uploads, sites and pins, bundles (build, download)
 * and the audit log.
 */
import { createReadStream } from 'node:fs';
import { join } from 'node:path';
import { HttpError } from '../../platform/http/server-errors.js';
import { checkCsrf } from '../auth-http.js';
import { buildBundle, registerRelease, registerSite, setPin, storeArtifact } from '../actions.js';
import { mirrorOf } from '../fleet-state.js';
import { auditPage, bundlesPage, releasesPage } from './pages-releases.js';
import { sitesPage } from './pages-sites.js';
import { readUpload } from './upload.js';
import { pageNumber, send, viewer, type AreaRoutes } from './routes-kit.js';

export const catalogRoutes: AreaRoutes = (r, d, k) => {
  const { act, adminForm, done, size } = k;
  r.get('/releases', async (ctx) => {
    const v = viewer(ctx);
    const c = await d.catalog.read();
    const history = new Map<string, { committed: number; failed: number }>();
    for (const list of Object.values(d.store.state.rollouts ?? {})) {
      const latest = new Map<string, { version: string; committed: number; failed: number }>();
      for (const e of list)
        if (e.rollout.counts)
          latest.set(`${e.rollout.rolloutId}/${e.rollout.wave}`, {
            version: e.rollout.version,
            committed: e.rollout.counts.committed,
            failed: e.rollout.counts.failed + e.rollout.counts.rolledBack,
          });
      for (const x of latest.values()) {
        const h = history.get(x.version) ?? { committed: 0, failed: 0 };
        h.committed += x.committed;
        h.failed += x.failed;
        history.set(x.version, h);
      }
    }
    send(ctx, releasesPage(v, Object.values(c.artifacts), Object.values(c.releases), history));
  });

  r.post('/releases/artifacts', async (ctx) => {
    const v = viewer(ctx, 'admin');
    const up = await readUpload(ctx, join(d.store.dir, 'tmp'), d.maxUploadBytes ?? 4 * 1024 ** 3);
    try {
      checkCsrf(ctx, up.fields.csrf);
      if (!up.file) throw new HttpError(400, 'BAD_INPUT', 'choose a file to upload');
      const meta: Record<string, string> = { ...up.fields };
      delete meta.csrf;
      await storeArtifact(act(ctx, v), meta, up.file);
    } finally {
      await up.cleanup();
    }
    done(ctx, '/releases');
  });

  r.post('/releases', async (ctx) => {
    const { v, form } = await adminForm(ctx, ['artifact']);
    await registerRelease(act(ctx, v), form.name, form.version, form.artifact);
    done(ctx, '/releases');
  });

  r.get('/sites', async (ctx) => {
    const v = viewer(ctx);
    const c = await d.catalog.read();
    const mirrors = d.store.mirrors.list().map((m) => ({
      id: m.id,
      site: m.site,
      lastExportAt: mirrorOf(d.store.state, m.id)?.lastExportAt ?? null,
    }));
    send(ctx, sitesPage(v, Object.values(c.sites), mirrors, Object.keys(c.releases)));
  });

  r.post('/sites', async (ctx) => {
    const { v, form } = await adminForm(ctx);
    await registerSite(act(ctx, v), form.name, form.publisher, form.sequence);
    done(ctx, '/sites');
  });

  r.post('/sites/:site/pins', async (ctx) => {
    const { v, form } = await adminForm(ctx);
    await setPin(act(ctx, v), ctx.params.site ?? '', form.target, form.version ?? '');
    done(ctx, '/sites');
  });

  r.get('/bundles', async (ctx) => {
    const v = viewer(ctx);
    send(ctx, bundlesPage(v, (await d.catalog.read()).bundles));
  });

  r.post('/bundles', async (ctx) => {
    const { v, form } = await adminForm(ctx);
    await buildBundle(act(ctx, v), form.site, form.release, form.strategy, {
      signed: form.unsigned !== '1',
      full: form.full === '1',
    });
    done(ctx, '/bundles');
  });

  r.get('/bundles/:id/file', async (ctx) => {
    viewer(ctx);
    const b = (await d.catalog.read()).bundles.find((x) => x.id === ctx.params.id);
    if (!b) throw new HttpError(404, 'UNKNOWN_BUNDLE', 'no such bundle');
    ctx.type = 'application/octet-stream';
    ctx.attachment(`${b.id}.ferry`);
    ctx.body = createReadStream(b.file);
  });

  r.get('/audit', async (ctx) => {
    const v = viewer(ctx);
    const n = pageNumber(ctx);
    const { total, entries } = await d.audit.page((n - 1) * size, size);
    send(ctx, auditPage(v, total, (n - 1) * size, size, entries));
  });
};
