/**
 * Each configured mirror, asked read-only: is it reachable, does it serve a
 * root chain that extends the one this node pinned and a manifest that
 * verifies under it? Nothing learnt here is kept: the agent's own poll is what
 * adopts roots and manifests.
 */
import { parseEnvelope, verifyEnvelope, type Envelope } from '../../core/dsse.js';
import { parseJsonStrict } from '../../core/json.js';
import { decodeManifest, MANIFEST_PAYLOAD_TYPE, MAX_MANIFEST_BYTES } from '../../core/manifest.js';
import { MAX_ROOT_BYTES, MAX_ROOT_CHAIN_BYTES, trustStoredChain, walkRootChain } from '../../core/root.js';
import { request } from '../../platform/http/client.js';
import type { DoctorContext } from './context.js';
import { errText, ok, type CheckResult } from './types.js';

export interface MirrorProbe {
  url: string;
  /** How far it got: unreachable, answered with something that does not verify, or verified. */
  outcome: 'unreachable' | 'refused' | 'no-manifest' | 'verified';
  detail: string;
  /** The mirror's `Date` header (ms), when it answered. */
  dateMs?: number;
  /** Sequence of the manifest it serves, when that verified. */
  sequence?: number;
}

const DEFAULT_TIMEOUT_MS = 5_000;

async function probe(c: DoctorContext, url: string): Promise<MirrorProbe> {
  const timeoutMs = c.o.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const limits = { minDeadlineMs: timeoutMs, idleTimeoutMs: timeoutMs };
  let dateMs: number | undefined;
  const get = async (path: string, maxBytes: number) => {
    const r = await request(`${url}${path}`, { timeoutMs, maxBytes, limits });
    const d = Date.parse(String(r.headers.date ?? ''));
    if (Number.isFinite(d)) dateMs = d;
    return r;
  };
  const at = (p: Omit<MirrorProbe, 'url' | 'dateMs'>): MirrorProbe => ({
    url,
    ...p,
    ...(dateMs !== undefined && { dateMs }),
  });
  let rootRes;
  try {
    rootRes = await get('/v1/root', MAX_ROOT_CHAIN_BYTES);
  } catch (e) {
    return at({ outcome: 'unreachable', detail: errText(e) });
  }
  try {
    if (rootRes.status !== 200)
      return at({ outcome: 'refused', detail: `/v1/root answered HTTP ${rootRes.status}` });
    const served = parseJsonStrict(rootRes.body, { maxBytes: MAX_ROOT_CHAIN_BYTES, maxDepth: 4 });
    if (!Array.isArray(served)) return at({ outcome: 'refused', detail: '/v1/root is not a list' });
    const envs: Envelope[] = served.map((v) => parseEnvelope(JSON.stringify(v), 'root', MAX_ROOT_BYTES));
    const trusted = walkRootChain(trustStoredChain(c.state!.roots), envs).root;
    const res = await get('/v1/manifest', MAX_MANIFEST_BYTES);
    if (res.status === 404) return at({ outcome: 'no-manifest', detail: 'serves no manifest yet' });
    if (res.status !== 200)
      return at({ outcome: 'refused', detail: `/v1/manifest answered HTTP ${res.status}` });
    const env = parseEnvelope(res.body, 'manifest envelope');
    const checked = verifyEnvelope(env, MANIFEST_PAYLOAD_TYPE, trusted.roles.bundle, 'manifest');
    const m = decodeManifest(checked.body);
    return at({
      outcome: 'verified',
      detail: `manifest sequence ${m.sequence} verifies under root v${trusted.payload.version}`,
      sequence: m.sequence,
    });
  } catch (e) {
    if (
      (e as { code?: unknown }).code === undefined ||
      String((e as { code?: unknown }).code).startsWith('HTTP_')
    )
      return at({ outcome: 'unreachable', detail: errText(e) });
    return at({ outcome: 'refused', detail: errText(e) });
  }
}

/** Probes every configured mirror (none when the state is unusable or the caller is offline). */
export async function probeMirrors(c: DoctorContext): Promise<MirrorProbe[]> {
  if (!c.state || c.o.offline) return [];
  return Promise.all(c.state.mirrors.map((u) => probe(c, u.replace(/\/+$/, ''))));
}

export function checkMirrors(c: DoctorContext, probes: readonly MirrorProbe[]): CheckResult {
  const t = 'each mirror reachable, serving a manifest that verifies';
  if (!c.state)
    return {
      id: 'mirrors',
      title: t,
      status: 'fail',
      evidence: 'no state: no mirrors configured',
      fix: 'start the agent with --mirror',
    };
  if (c.o.offline)
    return ok(
      'mirrors',
      t,
      `not probed here; last contact ${c.state.lastContactAt === null ? 'never' : new Date(c.state.lastContactAt).toISOString()}`,
    );
  const evidence = probes
    .map(
      (p) =>
        `${p.url}: ${p.outcome === 'verified' || p.outcome === 'no-manifest' ? '' : `${p.outcome}: `}${p.detail}`,
    )
    .join('; ');
  const good = probes.filter((p) => p.outcome === 'verified' || p.outcome === 'no-manifest').length;
  if (good === probes.length) return ok('mirrors', t, evidence);
  const refused = probes.some((p) => p.outcome === 'refused');
  return {
    id: 'mirrors',
    title: t,
    status: good === 0 || refused ? 'fail' : 'warn',
    evidence,
    fix: refused
      ? "a mirror serves what does not verify under this node's root: check that mirror's import and trust root"
      : 'check the network path to the mirror and that `ferry mirror serve` runs there; the agent keeps applying its last verified state meanwhile',
  };
}
