/**
 * What a fresh node needs to install itself from this mirror (docs/install.md):
 *   GET /install.sh          the install script, defaulting to this mirror and its site
 *   GET /install/root.json   the newest trust root, as its exact bytes (the fingerprint is over them)
 * The agent and the runtime are blobs of the active manifest, served by /v1/blobs like any other. The
 * script checks all of it against the root fingerprint the operator types, so nothing here is trusted.
 */
import Router from '@koa/router';
import { decodeBase64Strict } from '../../core/encoding.js';
import { renderInstallScript } from '../../platform/install-script.js';
import type { StateView } from '../snapshot.js';

export function installRouter(view: StateView): Router {
  const router = new Router();
  router.get('/install.sh', async (ctx) => {
    const { state } = await view.current();
    ctx.set('Cache-Control', 'no-cache');
    ctx.type = 'text/x-shellscript; charset=utf-8';
    ctx.body = await renderInstallScript({ mirror: `${ctx.protocol}://${ctx.host}`, site: state.site });
  });
  router.get('/install/root.json', async (ctx) => {
    const { roots } = (await view.current()).state;
    const newest = roots.length - 1;
    ctx.set('Cache-Control', 'no-cache');
    ctx.type = 'application/json';
    ctx.body = Buffer.from(decodeBase64Strict(roots[newest]!, `roots[${newest}]`));
  });
  return router;
}
