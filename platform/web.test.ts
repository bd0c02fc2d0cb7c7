/** The web kit: every interpolation is escaped unless it is markup made by the kit. */
import { describe, expect, it } from 'vitest';
import { escapeHtml, html, Html, layout, PAGE_CSP, PAGE_CSP_SCRIPTS, table, trusted } from './web.js';

const HOSTILE = `<script>alert("x")</script>' onmouseover='steal()' & \`tick\``;

describe('escapeHtml', () => {
  it('escapes the characters that end text or a quoted attribute', () => {
    expect(escapeHtml(`<>&"'\``)).toBe('&lt;&gt;&amp;&quot;&#39;&#96;');
    expect(escapeHtml('plain text 1.2.3')).toBe('plain text 1.2.3');
    expect(escapeHtml(42)).toBe('42');
  });
});

describe('html', () => {
  it('escapes a script tag in element content', () => {
    const out = html`<td>${HOSTILE}</td>`.toString();
    expect(out).not.toContain('<script>');
    expect(out).toBe(
      '<td>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#39; onmouseover=&#39;steal()&#39; &amp; &#96;tick&#96;</td>',
    );
  });

  it('keeps a hostile value inside its quoted attribute, whichever quote it uses', () => {
    for (const v of ['" onerror="alert(1)', "' onerror='alert(1)", '"><script>alert(1)</script>']) {
      const dq = html`<a title="${v}">x</a>`.toString();
      const sq = html`<a title="${v}">x</a>`.toString();
      for (const out of [dq, sq]) {
        expect(out).not.toMatch(/["'] ?onerror=/);
        expect(out).not.toContain('<script>');
        // one element, one attribute: the value did not end it
        expect(out.match(/=/g)).toHaveLength(1 + (v.match(/=/g)?.length ?? 0));
      }
    }
  });

  it('places kit markup as is, lists item by item, and nothing for null, undefined and false', () => {
    const inner = html`<b>${'<i>'}</b>`;
    expect(html`<p>${inner}</p>`.toString()).toBe('<p><b>&lt;i&gt;</b></p>');
    // prettier-ignore
    const list = html`<ul>${['<a>', html`<li>ok</li>`]}</ul>`;
    expect(list.toString()).toBe('<ul>&lt;a&gt;<li>ok</li></ul>');
    expect(html`[${null}${undefined}${false}${0}]`.toString()).toBe('[0]');
    expect(html`${trusted('<hr>')}`.toString()).toBe('<hr>');
  });

  it('cannot be handed markup that did not come from the kit', () => {
    const fake = { toString: () => '<script>alert(1)</script>' };
    expect(html`${fake}`.toString()).toBe('&lt;script&gt;alert(1)&lt;/script&gt;');
    expect(() => new Html(Symbol('web.ts'), '<script>')).toThrow(TypeError);
  });
});

describe('table', () => {
  const columns = [
    { head: 'file', cell: (r: { file: string; n: number }) => r.file },
    { head: 'n', cell: (r: { file: string; n: number }) => r.n },
  ];

  it('renders a head row and one escaped row per item', () => {
    const out = table({ columns, rows: [{ file: '<img src=x onerror=alert(1)>', n: 3 }] }).toString();
    expect(out).toContain('<thead><tr><th>file</th><th>n</th></tr></thead>');
    expect(out).toContain('<tr><td>&lt;img src=x onerror=alert(1)&gt;</td><td>3</td></tr>');
    expect(out).not.toContain('<img');
  });

  it('shows the empty text instead of an empty table', () => {
    expect(table({ columns, rows: [], empty: 'nothing <yet>' }).toString()).toBe(
      '<p class="none">nothing &lt;yet&gt;</p>',
    );
    expect(table({ columns, rows: [] }).toString()).toBe('<p class="none">none</p>');
  });
});

describe('layout', () => {
  it('is a whole page with an escaped title, inline styles, a no-script policy and nothing from elsewhere', () => {
    const page = layout({
      title: '</title><script>x</script>',
      body: html`<p>${'<b>'}</p>`,
      css: '.x{color:red}',
    });
    expect(page.startsWith('<!doctype html>')).toBe(true);
    expect(page).toContain('<title>&lt;/title&gt;&lt;script&gt;x&lt;/script&gt;</title>');
    expect(page).toContain('<p>&lt;b&gt;</p>');
    expect(page).toContain('.x{color:red}');
    expect(page).toContain(`content="${escapeHtml(PAGE_CSP)}"`);
    expect(PAGE_CSP).toMatch(/default-src 'none'/);
    expect(page).not.toMatch(/<script|<link|src=|https?:\/\//);
  });

  it('lets a page load its own same-origin scripts and nothing inline or from elsewhere', () => {
    const page = layout({ title: 't', body: html`<p>x</p>`, scripts: ['/ui/live.js'] });
    expect(page).toContain('<script src="/ui/live.js" defer></script>');
    expect(page).toContain(`content="${escapeHtml(PAGE_CSP_SCRIPTS)}"`);
    expect(PAGE_CSP_SCRIPTS).toMatch(/script-src 'self'; connect-src 'self'$/);
    expect(PAGE_CSP_SCRIPTS).not.toMatch(/unsafe-inline'[^;]*script|script-src[^;]*(unsafe|https?:|\*)/);
    expect(layout({ title: 't', body: html`` })).not.toContain('script-src');
  });
});
