/**
 * The catalog's pages: releases and their artifacts (with the upload and register forms for admins),
 * the bundles built for sites, and the audit log. Forms that change something are drawn only for
 * admins; the routes refuse viewers whatever they post.
 */
import { html, table } from '../../platform/web.js';
import type { AuditEntry } from '../audit.js';
import type { ArtifactRecord, BundleRecord, ReleaseRecord } from '../catalog.js';
import { csrfField, isAdmin as admin, page, type Viewer } from './layout.js';

export function releasesPage(
  v: Viewer,
  artifacts: ArtifactRecord[],
  releases: ReleaseRecord[],
  history: Map<string, { committed: number; failed: number }>,
): string {
  const key = (a: ArtifactRecord) => `${a.kind}:${a.name}@${a.version}${a.platform ? `/${a.platform}` : ''}`;
  const forms = admin(v)
    ? html`<form method="post" action="/releases/artifacts" enctype="multipart/form-data" id="upload">
          ${csrfField(v)}
          <fieldset>
            <legend>Upload an artifact</legend>
            <label
              >kind
              <select name="kind">
                <option>agent</option>
                <option>script</option>
                <option>policy</option>
                <option>file</option>
              </select></label
            >
            <label>name <input name="name" size="12" /></label>
            <label>version <input name="version" size="8" /></label>
            <label>platform <input name="platform" size="10" placeholder="linux-x64" /></label>
            <label>interpreter <input name="interpreter" size="5" placeholder="sh" /></label>
            <input type="file" name="file" />
            <button type="submit">Upload</button>
          </fieldset>
        </form>
        <form method="post" action="/releases" id="register">
          ${csrfField(v)}
          <fieldset>
            <legend>Register a release</legend>
            <label>name <input name="name" size="12" /></label>
            <label>version <input name="version" size="8" /></label>
            ${artifacts.map((a) => html`<label><input type="checkbox" name="artifact" value="${key(a)}" /> ${key(a)}</label>`)}
            <button type="submit">Register</button>
          </fieldset>
        </form>`
    : html``;
  const body = html`${forms}
    <h2>Releases</h2>
    ${table<ReleaseRecord>({
      id: 'releases',
      columns: [
        { head: 'release', cell: (r) => `${r.name}@${r.version}` },
        {
          head: 'artifacts',
          cell: (r) => r.artifacts.map((a) => `${a.kind}:${a.name}@${a.version}`).join(', '),
        },
        {
          head: 'agent outcomes (reported)',
          cell: (r) => {
            const agent = r.artifacts.find((a) => a.kind === 'agent');
            const h = agent && history.get(agent.version);
            if (!h) return '—';
            const n = h.committed + h.failed;
            return `${h.committed} committed, ${h.failed} failed (${n ? Math.round((100 * h.committed) / n) : 0}% success)`;
          },
        },
        { head: 'created', cell: (r) => `${r.createdAt} by ${r.createdBy}` },
      ],
      rows: releases,
      empty: 'no releases yet',
    })}
    <h2>Artifacts (stored by digest)</h2>
    ${table<ArtifactRecord>({
      id: 'artifacts',
      columns: [
        { head: 'artifact', cell: key },
        { head: 'size', cell: (a) => a.size },
        { head: 'sha256', cell: (a) => a.sha256 },
        { head: 'uploaded', cell: (a) => `${a.uploadedAt} by ${a.uploadedBy}` },
      ],
      rows: artifacts,
    })}`;
  return page({ title: 'Releases', viewer: v, body });
}

export function bundlesPage(v: Viewer, bundles: BundleRecord[]): string {
  const body = html`<p>
      Bundles built for sites, newest first. An unsigned one is signed at the offline station (<code
        >ferry bundle sign</code
      >) and recorded with <code>ferry server bundle import</code>.
    </p>
    ${table<BundleRecord>({
      id: 'bundles',
      columns: [
        { head: 'bundle', cell: (b) => b.id },
        { head: 'site', cell: (b) => b.site },
        { head: 'release', cell: (b) => b.release },
        { head: 'sequence', cell: (b) => b.sequence },
        { head: 'strategy', cell: (b) => b.strategy },
        { head: 'status', cell: (b) => `${b.status} (${b.signatures} signature(s))` },
        { head: 'size', cell: (b) => b.bytes },
        { head: 'built', cell: (b) => `${b.builtAt} by ${b.builtBy}` },
        { head: 'file', cell: (b) => html`<a href="/bundles/${encodeURIComponent(b.id)}/file">download</a>` },
      ],
      rows: [...bundles].reverse(),
      empty: 'no bundles built yet',
    })}`;
  return page({ title: 'Bundles', viewer: v, body });
}

export function auditPage(
  v: Viewer,
  total: number,
  offset: number,
  size: number,
  entries: AuditEntry[],
): string {
  const at = Math.floor(offset / size) + 1;
  const pages = Math.max(1, Math.ceil(total / size));
  const body = html`<p class="pager">
      ${total} entr${total === 1 ? 'y' : 'ies'} · page ${at} of ${pages}
      ${at > 1 ? html`<a href="/audit?page=${at - 1}">newer</a>` : ''}
      ${at < pages ? html`<a href="/audit?page=${at + 1}">older</a>` : ''}
    </p>
    ${table<AuditEntry>({
      id: 'audit',
      columns: [
        { head: '#', cell: (e) => e.seq },
        { head: 'time', cell: (e) => e.at },
        { head: 'actor', cell: (e) => e.actor },
        { head: 'action', cell: (e) => e.action },
        {
          head: 'detail',
          cell: (e) =>
            Object.entries(e.detail)
              .map(([k, x]) => `${k}=${Array.isArray(x) ? x.join(',') : String(x)}`)
              .join(' '),
        },
        { head: 'hash', cell: (e) => `${e.hash.slice(0, 12)}…` },
      ],
      rows: entries,
    })}`;
  return page({ title: 'Audit log', viewer: v, body });
}
