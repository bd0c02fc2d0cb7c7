/**
 * The frame every page of the server's UI shares: the web kit's layout (platform/web.ts: escaping,
 * strict CSP, no inline scripts; a live page loads the server's own ./live.ts), a navigation bar,
 * who is signed in, and forms that always carry the session's CSRF token.
 */
import { html, layout, trusted, type Html } from '../../platform/web.js';
import type { Role } from '../access.js';

export interface Viewer {
  user: string;
  role: Role;
  csrf: string;
}

const CSS = `nav{margin-bottom:1em;padding-bottom:.5em;border-bottom:1px solid #ccc}nav a{margin-right:1em}
nav form{display:inline;float:right}.chip{display:inline-block;padding:0 6px;border-radius:8px;font-size:11px;background:#eee}
.chip.behind{background:#fde2b8}.chip.failing{background:#f8c7c7}.chip.silent{background:#ddd}.chip.ok{background:#cdeccd}
.bar{display:flex;width:320px;height:14px;border:1px solid #999;background:#f4f4f4}.bar span{display:block;height:100%}
.c-committed{background:#3a3}.c-updating{background:#39c}.c-failed{background:#c33}.c-rolledBack{background:#c93}.c-pending{background:#ccc}.c-silent{background:#888}
form.inline{display:inline}fieldset{margin:1em 0;border:1px solid #ccc}label{margin-right:1em}
.msg{padding:4px 8px;background:#eef;border:1px solid #99c}.err{padding:4px 8px;background:#fee;border:1px solid #c99}
.halt{border:2px solid #c33;padding:4px 8px;margin:4px 0}.pager a{margin-right:1em}`;

export const isAdmin = (v: Viewer): boolean => v.role === 'admin';

export function csrfField(v: Viewer): Html {
  return html`<input type="hidden" name="csrf" value="${v.csrf}" />`;
}

export interface PageOptions {
  title: string;
  viewer: Viewer;
  body: Html;
  /** A same-origin script the page loads (./live.ts). */
  script?: string;
  notice?: string;
}

export function page(o: PageOptions): string {
  const nav = html`<nav>
    <a href="/">Dashboard</a><a href="/agents">Agents</a><a href="/releases">Releases</a
    ><a href="/sites">Sites</a><a href="/bundles">Bundles</a><a href="/audit">Audit log</a>
    <form method="post" action="/logout">
      ${csrfField(o.viewer)}<span id="who">${o.viewer.user} (${o.viewer.role})</span>
      <button type="submit">Sign out</button>
    </form>
  </nav>`;
  const notice = o.notice ? html`<p class="msg" id="notice">${o.notice}</p>` : html``;
  return layout({
    title: `ferry server — ${o.title}`,
    css: CSS,
    ...(o.script && { scripts: [o.script] }),
    body: html`${nav}
      <h1>${o.title}</h1>
      ${notice}${o.body}`,
  });
}

export function loginPage(token: string, error?: string): string {
  const err = error ? html`<p class="err" id="error">${error}</p>` : html``;
  return layout({
    title: 'ferry server — sign in',
    css: CSS,
    body: html`<h1>ferry server — sign in</h1>
      ${err}
      <form method="post" action="/login">
        <input type="hidden" name="login" value="${token}" />
        <p>
          <label>User <input name="user" autocomplete="username" required /></label>
        </p>
        <p>
          <label
            >Password <input name="password" type="password" autocomplete="current-password" required
          /></label>
        </p>
        <button type="submit">Sign in</button>
      </form>`,
  });
}

export function errorPage(viewer: Viewer | undefined, status: number, code: string, message: string): string {
  const body = html`<p class="err" id="error"><b>${code}</b>: ${message}</p>
    <p><a href="/">${trusted('&larr;')} dashboard</a></p>`;
  if (!viewer)
    return layout({
      title: `ferry server — ${status}`,
      css: CSS,
      body: html`<h1>${status}</h1>
        ${body}`,
    });
  return page({ title: `${status}`, viewer, body });
}
