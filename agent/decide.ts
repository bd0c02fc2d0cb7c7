/**
 * The agent's trusted-state decision, free of I/O: given what it has accepted
 * before and a manifest whose signatures already verified, may it be applied?
 * Pure function of (state, manifest, now) → accept | same | refuse.
 */
import type { Manifest } from '../core/manifest.js';
import { siteAllowed } from '../core/manifest.js';
import { parseIsoUtc } from '../core/time.js';

export interface TrustState {
  /** Highest sequence accepted per publisher, and the digest of the signed payload it had. */
  publishers: Record<string, { sequence: number; payloadDigest: string }>;
  /**
   * The latest time the agent has evidence for (its own clock readings and the
   * `created` times of manifests it accepted). A clock set back cannot make an
   * expired manifest look fresh again.
   */
  highestTime: number;
}

export type RefusalCode = 'MANIFEST_EXPIRED' | 'SITE_MISMATCH' | 'SEQUENCE_ROLLBACK' | 'EQUIVOCATION';

export type ManifestDecision =
  | { kind: 'accept'; trust: TrustState }
  /** The manifest already accepted (same publisher, sequence and signed payload). */
  | { kind: 'same'; trust: TrustState }
  | { kind: 'refuse'; code: RefusalCode; reason: string; trust: TrustState };

export const initialTrust = (): TrustState => ({ publishers: {}, highestTime: 0 });

export function decideManifest(
  trust: TrustState,
  manifest: Manifest,
  payloadDigest: string,
  ctx: { site: string; now: number },
): ManifestDecision {
  const effectiveNow = Math.max(ctx.now, trust.highestTime);
  // Time evidence only moves forward, whatever the verdict.
  const seen: TrustState = { ...trust, highestTime: effectiveNow };
  const refuse = (code: RefusalCode, reason: string): ManifestDecision => ({
    kind: 'refuse',
    code,
    reason,
    trust: seen,
  });
  if (!siteAllowed(manifest, ctx.site)) {
    return refuse('SITE_MISMATCH', `manifest is for site(s) ${manifest.sites.join(', ')}, not ${ctx.site}`);
  }
  const prior = trust.publishers[manifest.publisher];
  if (prior && manifest.sequence < prior.sequence) {
    return refuse(
      'SEQUENCE_ROLLBACK',
      `${manifest.publisher} sequence ${manifest.sequence} is below ${prior.sequence}, already accepted`,
    );
  }
  if (prior && manifest.sequence === prior.sequence) {
    if (prior.payloadDigest !== payloadDigest) {
      return refuse(
        'EQUIVOCATION',
        `${manifest.publisher} sequence ${manifest.sequence} differs from the one accepted`,
      );
    }
    return { kind: 'same', trust: seen };
  }
  const expires = parseIsoUtc(manifest.expires)!;
  if (expires <= effectiveNow) {
    const why = ctx.now < trust.highestTime ? ' (the local clock is behind time already seen)' : '';
    return refuse(
      'MANIFEST_EXPIRED',
      `manifest sequence ${manifest.sequence} expired at ${manifest.expires}${why}`,
    );
  }
  const created = parseIsoUtc(manifest.created)!;
  return {
    kind: 'accept',
    trust: {
      publishers: {
        ...trust.publishers,
        [manifest.publisher]: { sequence: manifest.sequence, payloadDigest },
      },
      highestTime: Math.max(effectiveNow, created),
    },
  };
}
