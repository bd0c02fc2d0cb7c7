/**
 * The mirror's status page shows what arrives from outside (file names in the
 * drop folder, refusal reasons) as text. The attack: a bundle file whose name
 * is markup, dropped on a real `ferry mirror serve`; it is quarantined and the
 * page shows its name escaped, with no element made from it.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { useWorld } from './helpers/world.js';
import { startMirrorProc } from './helpers/mirror-proc.js';

const w = useWorld();

const HOSTILE = `<img src=x onerror=alert(1)>"'&.ferry`;

describe('mirror status page', () => {
  it('shows a quarantined file with a hostile name escaped, in the quarantine table', async () => {
    const drop = join(w.dir, 'drop');
    await mkdir(drop, { recursive: true });
    const m = await startMirrorProc({
      data: join(w.dir, 'data'),
      trust: w.rootPath,
      site: 'plant-7',
      drop,
    });
    await writeFile(join(drop, HOSTILE), 'not a bundle at all');
    const refused = await m.waitForLog((l) => l.event === 'import.refused', 20_000);
    expect(String(refused.file)).toContain('<img src=x');

    const res = await fetch(`${m.url}/`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/html/);
    expect(res.headers.get('content-security-policy')).toMatch(/default-src 'none'/);
    const page = await res.text();
    const start = page.indexOf('<div id="quarantine">');
    expect(start).toBeGreaterThan(0);
    const quarantine = page.slice(start, page.indexOf('</div>', start));
    expect(quarantine).toContain('&lt;img src=x onerror=alert(1)&gt;&quot;&#39;&amp;.ferry');
    expect(quarantine).toContain('<th>file</th>');
    expect(page).not.toContain('<img');
    expect(page).not.toMatch(/<script/i);
    expect(await m.stop()).toEqual({ code: 0, signal: null });
  }, 40_000);
});
