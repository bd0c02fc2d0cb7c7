/**
 * The web kit for server-rendered pages: one escaping helper, a layout and
 * tables. Pages are built only with the `html` tag, which escapes every
 * interpolated value unless it is already `Html` (made by this tag, `table`,
 * or `trusted` for markup written in the source). A page fetches nothing from
 * elsewhere: styles are inline, and the page's own Content-Security-Policy
 * forbids inline scripts, so escaped text can never run even where it lands. A
 * page may load scripts served by its own origin (`scripts`); nothing else runs.
 */

const MINT = Symbol('web.ts');

/** Markup that is safe to place in a page as is. Only this module makes it (`html`, `table`, `trusted`). */
export class Html {
  readonly #text: string;

  constructor(mint: symbol, text: string) {
    if (mint !== MINT) throw new TypeError('Html is made by html`…` or trusted(), not constructed');
    this.#text = text;
  }

  toString(): string {
    return this.#text;
  }
}

const ENTITIES: Record<string, string> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&#39;',
  '`': '&#96;',
};

/** Text as HTML: safe in element content and in quoted attribute values. */
export function escapeHtml(value: unknown): string {
  return String(value).replace(/[&<>"'`]/g, (c) => ENTITIES[c]!);
}

/** One interpolated value: Html as is, a list item by item, nothing for null, undefined and false. */
function render(v: unknown): string {
  if (v instanceof Html) return v.toString();
  if (v === null || v === undefined || v === false) return '';
  if (Array.isArray(v)) return v.map(render).join('');
  return escapeHtml(v);
}

/** The tagged template every page is written with: each `${value}` is escaped unless it is Html. */
export function html(strings: TemplateStringsArray, ...values: unknown[]): Html {
  let out = strings[0]!;
  values.forEach((v, i) => {
    out += render(v) + strings[i + 1]!;
  });
  return new Html(MINT, out);
}

/**
 * Markup written in the source, placed as is. Never pass it anything that came from a request, a
 * file or a bundle: that is what `html` is for.
 */
export function trusted(markup: string): Html {
  return new Html(MINT, markup);
}

export interface Column<T> {
  head: string;
  cell: (row: T) => unknown;
}

export interface TableOptions<T> {
  columns: Column<T>[];
  rows: readonly T[];
  /** Shown instead of the table when there are no rows. */
  empty?: string;
  id?: string;
}

/** A table with a header row; an empty list shows the `empty` text instead. */
export function table<T>(o: TableOptions<T>): Html {
  const id = o.id === undefined ? '' : html` id="${o.id}"`;
  // prettier-ignore
  if (o.rows.length === 0) return html`<p class="none"${id}>${o.empty ?? 'none'}</p>`;
  const head = o.columns.map((c) => html`<th>${c.head}</th>`);
  // prettier-ignore
  const body = o.rows.map((r) => html`<tr>${o.columns.map((c) => html`<td>${c.cell(r)}</td>`)}</tr>\n`);
  // prettier-ignore
  return html`<table${id}><thead><tr>${head}</tr></thead><tbody>\n${body}</tbody></table>`;
}

const BASE_CSS = `body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}h1{font-size:20px}h2{font-size:16px;margin-top:1.5em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;font-family:monospace;font-size:12px}
.none{color:#888}.bad{color:#b00;font-weight:bold}`;

/** No scripts, no frames, nothing from elsewhere; inline styles and same-origin images only. */
export const PAGE_CSP =
  "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; form-action 'self'";

/** For a page that loads its own scripts: scripts and fetches from the page's origin only, nothing inline. */
export const PAGE_CSP_SCRIPTS = `${PAGE_CSP}; script-src 'self'; connect-src 'self'`;

export interface LayoutOptions {
  title: string;
  body: Html;
  /** More inline CSS for this page (written in the source). */
  css?: string;
  /** Reload the page every so many seconds (a meta refresh: no script needed). */
  refreshSec?: number;
  /** Same-origin paths of scripts the page loads (deferred); the CSP then allows scripts from 'self'. */
  scripts?: string[];
}

/** A whole page: head with charset, title, CSP and inline styles; the body as given. */
export function layout(o: LayoutOptions): string {
  const css = trusted(o.css ? `${BASE_CSS}\n${o.css}` : BASE_CSS);
  const page = html`<!doctype html>
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta
          http-equiv="Content-Security-Policy"
          content="${o.scripts?.length ? PAGE_CSP_SCRIPTS : PAGE_CSP}"
        />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        ${o.refreshSec !== undefined && html`<meta http-equiv="refresh" content="${Math.max(1, Math.round(o.refreshSec))}" />`}
        <title>${o.title}</title>
        ${(o.scripts ?? []).map((src) => html`<script src="${src}" defer></script>`)}
        <style>
          ${css}
        </style>
      </head>
      <body>
        ${o.body}
      </body>
    </html>`;
  return `${page.toString()}\n`;
}
