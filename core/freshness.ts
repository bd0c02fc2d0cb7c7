/**
 * The one freshness rule: whether a manifest whose signatures already verified
 * under the trusted root may be accepted. The bundle verifier, the mirror and
 * the agent all ask this function; where they differ, the difference is a
 * parameter (see docs/bundle-format.md, "Freshness").
 *
 * Pure: (what was accepted before, the candidate, the trusted root, the local
 * clock) → accept | same | refuse. Nothing here reads a file or a clock.
 *
 *   - one sequence space: a single mark for everything the site's root
 *     authorises; `publisher` is a label and is not consulted;
 *   - trusted time = max(local clock, latest signed time seen); a clock
 *     reading is never folded into what the caller persists;
 *   - the mark records which bundle keys signed it, and stops binding once the
 *     trusted root's bundle role no longer counts those keys to its threshold
 *     (fast-forward recovery after a bundle-key compromise).
 */
import type { FerryErrorCode } from './errors.js';
import type { Manifest } from './manifest.js';
import { parseIsoUtc } from './time.js';

/** Every refusal this rule makes. */
export type FreshnessCode = Extract<
  FerryErrorCode,
  'ROOT_EXPIRED' | 'SITE_MISMATCH' | 'SEQUENCE_ROLLBACK' | 'EQUIVOCATION' | 'MANIFEST_EXPIRED'
>;

/** The highest manifest accepted, in the one sequence space. */
export interface SequenceMark {
  sequence: number;
  /** SHA-256 of the signed payload bytes: what "the same content" means. */
  payloadDigest: string;
  /**
   * Keyids of the bundle keys whose signatures verified on that manifest.
   * `null` for a mark carried over from a state file that did not record
   * them: such a mark always binds, until the next accepted manifest replaces it.
   */
  signers: string[] | null;
}

/** What a verifier remembers between decisions. */
export interface Freshness {
  mark: SequenceMark | null;
  /** Latest signed time seen (manifest and root `created`), ms since the epoch; 0 when none. */
  signedTime: number;
}

export const initialFreshness = (): Freshness => ({ mark: null, signedTime: 0 });

/** The parts of a verified manifest this rule reads. */
export type FreshnessManifest = Pick<Manifest, 'sequence' | 'created' | 'expires' | 'sites'>;

export interface Candidate {
  manifest: FreshnessManifest;
  payloadDigest: string;
  /** Keyids whose signatures verified under the trusted root's bundle role. */
  signers: readonly string[];
}

/** The trusted root as this rule needs it (the fields of core/root.ts RootPayload it reads). */
export interface FreshnessRoot {
  version: number;
  expires: string;
  created?: string;
  roles: Record<'root' | 'bundle', { keyids: string[]; threshold: number }>;
}

export interface FreshnessPolicy {
  /** The verifier's site; absent (bundle verify without --site) means any site. */
  site?: string;
  /** The local clock now, ms since the epoch. Never persisted by this rule. */
  clock: number;
  /**
   * The manifest already accepted (the mark, same content) has since expired:
   * `keep` answers `same` with `expired: true` (last-known-good keeps running
   * and the expiry is reported: the agent); `refuse` answers MANIFEST_EXPIRED
   * (nothing expired is taken in again: the mirror's import).
   */
  acceptedExpired: 'keep' | 'refuse';
}

export type FreshnessVerdict =
  /** A new mark; `next` is what to persist once the manifest is taken in. */
  | { kind: 'accept'; next: Freshness }
  /** The manifest the mark already names. */
  | { kind: 'same'; expired: boolean; next: Freshness }
  /** Nothing changes. */
  | { kind: 'refuse'; code: FreshnessCode; reason: string };

const at = (iso: string | undefined): number => (iso === undefined ? 0 : (parseIsoUtc(iso) ?? 0));

/**
 * What of `f` still holds under `root`: while the mark binds, everything, plus
 * the root's `created`. Once the mark no longer binds, neither the mark nor
 * the signed time seen with it counts any more (a stolen key that signed a
 * `created` far in the future must not keep the site's time there after
 * recovery): signed time restarts from the root's own `created`.
 */
export function underRoot(f: Freshness, root: Pick<FreshnessRoot, 'created' | 'roles'>): Freshness {
  if (f.mark !== null && !markBinds(f.mark, root)) return { mark: null, signedTime: at(root.created) };
  return observeRoot(f, root);
}

/** Folds a root's signed `created` time into what was seen (after the root is adopted). */
export function observeRoot(f: Freshness, root: Pick<FreshnessRoot, 'created'>): Freshness {
  const t = at(root.created);
  return t > f.signedTime ? { ...f, signedTime: t } : f;
}

/** max(local clock, latest signed time seen, the trusted root's own `created`). */
export function trustedTime(f: Freshness, clock: number, root?: Pick<FreshnessRoot, 'created'>): number {
  return Math.max(clock, f.signedTime, at(root?.created));
}

/** Whether the mark's signers still meet the bundle threshold of `root`. */
export function markBinds(mark: SequenceMark, root: Pick<FreshnessRoot, 'roles'>): boolean {
  if (mark.signers === null) return true;
  const role = root.roles.bundle;
  const allowed = new Set(role.keyids);
  return new Set(mark.signers.filter((k) => allowed.has(k))).size >= role.threshold;
}

const behind = (f: Freshness, clock: number) =>
  clock < f.signedTime ? ` (the local clock is behind signed time already seen, ${iso(f.signedTime)})` : '';
const iso = (ms: number) => new Date(ms).toISOString();

/** ROOT_EXPIRED when the trusted root has expired by trusted time; otherwise undefined. */
export function rootRefusal(
  f: Freshness,
  root: FreshnessRoot,
  clock: number,
): { code: 'ROOT_EXPIRED'; reason: string } | undefined {
  const held = underRoot(f, root);
  if (at(root.expires) > trustedTime(held, clock)) return undefined;
  return {
    code: 'ROOT_EXPIRED',
    reason: `trusted root v${root.version} expired at ${root.expires}${behind(held, clock)}`,
  };
}

/** The freshness decision. Call it only with a manifest whose signatures verified under `root`. */
export function decideFreshness(
  f: Freshness,
  c: Candidate,
  root: FreshnessRoot,
  policy: FreshnessPolicy,
): FreshnessVerdict {
  const m = c.manifest;
  const refuse = (code: FreshnessCode, reason: string): FreshnessVerdict => ({
    kind: 'refuse',
    code,
    reason,
  });
  const held = underRoot(f, root);
  const rootBad = rootRefusal(held, root, policy.clock);
  if (rootBad) return refuse(rootBad.code, rootBad.reason);
  if (policy.site !== undefined && !m.sites.includes('*') && !m.sites.includes(policy.site))
    return refuse('SITE_MISMATCH', `manifest is for site(s) ${m.sites.join(', ')}, not ${policy.site}`);

  const now = trustedTime(held, policy.clock);
  const expired = at(m.expires) <= now;
  const mark = held.mark; // underRoot dropped a mark that no longer binds
  if (mark && m.sequence < mark.sequence)
    return refuse(
      'SEQUENCE_ROLLBACK',
      `sequence ${m.sequence} is below sequence ${mark.sequence}, already accepted`,
    );
  if (mark && m.sequence === mark.sequence) {
    if (c.payloadDigest !== mark.payloadDigest)
      return refuse(
        'EQUIVOCATION',
        `sequence ${m.sequence} differs from the manifest with the same sequence already accepted`,
      );
    if (expired && policy.acceptedExpired === 'refuse')
      return refuse(
        'MANIFEST_EXPIRED',
        `manifest sequence ${m.sequence} expired at ${m.expires}${behind(held, policy.clock)}`,
      );
    return { kind: 'same', expired, next: held };
  }
  if (expired)
    return refuse(
      'MANIFEST_EXPIRED',
      `manifest sequence ${m.sequence} expired at ${m.expires}${behind(held, policy.clock)}`,
    );
  return {
    kind: 'accept',
    next: {
      mark: { sequence: m.sequence, payloadDigest: c.payloadDigest, signers: [...c.signers].sort() },
      signedTime: Math.max(held.signedTime, at(m.created)),
    },
  };
}
