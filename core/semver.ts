/**
 * SemVer 2.0.0 (https://semver.org), exactly: parsing and precedence. Pure.
 * String comparison gets versions wrong (1.10.0 < 1.9.0 as strings), so every
 * version decision in ferry goes through `compareSemver`.
 */

export interface SemVer {
  major: number;
  minor: number;
  patch: number;
  /** Dot-separated prerelease identifiers; numeric ones as numbers. Empty for a release. */
  prerelease: (string | number)[];
  /** Build metadata identifiers; ignored for precedence. */
  build: string[];
}

// The spec's own grammar: no leading zeros in numeric parts or numeric prerelease
// identifiers, no empty identifiers.
const NUM = '0|[1-9]\\d*';
const PRE_ID = `(?:${NUM}|\\d*[A-Za-z-][0-9A-Za-z-]*)`;
const BUILD_ID = '[0-9A-Za-z-]+';
const SEMVER = new RegExp(
  `^(${NUM})\\.(${NUM})\\.(${NUM})` +
    `(?:-(${PRE_ID}(?:\\.${PRE_ID})*))?` +
    `(?:\\+(${BUILD_ID}(?:\\.${BUILD_ID})*))?$`,
);

/** Parses a SemVer 2.0.0 string, or returns undefined when it is not one. */
export function parseSemver(v: unknown): SemVer | undefined {
  if (typeof v !== 'string') return undefined;
  const m = SEMVER.exec(v);
  if (!m) return undefined;
  const nums = [m[1], m[2], m[3]].map(Number);
  // Numbers beyond 2^53 would compare wrongly; no real version needs them.
  if (!nums.every(Number.isSafeInteger)) return undefined;
  const prerelease =
    m[4] === undefined ? [] : m[4].split('.').map((id) => (/^\d+$/.test(id) ? Number(id) : id));
  if (prerelease.some((id) => typeof id === 'number' && !Number.isSafeInteger(id))) return undefined;
  return {
    major: nums[0]!,
    minor: nums[1]!,
    patch: nums[2]!,
    prerelease,
    build: m[5] === undefined ? [] : m[5].split('.'),
  };
}

export function isSemver(v: unknown): v is string {
  return parseSemver(v) !== undefined;
}

const sign = (n: number): -1 | 0 | 1 => (n < 0 ? -1 : n > 0 ? 1 : 0);

function compareIds(a: string | number, b: string | number): -1 | 0 | 1 {
  if (typeof a === 'number' && typeof b === 'number') return sign(a - b);
  // Numeric identifiers have lower precedence than alphanumeric ones.
  if (typeof a === 'number') return -1;
  if (typeof b === 'number') return 1;
  // Alphanumeric identifiers compare lexically in ASCII order.
  return a < b ? -1 : a > b ? 1 : 0;
}

function compareParsed(a: SemVer, b: SemVer): -1 | 0 | 1 {
  const core = sign(a.major - b.major) || sign(a.minor - b.minor) || sign(a.patch - b.patch);
  if (core !== 0) return core;
  // A release has higher precedence than any of its prereleases.
  if (a.prerelease.length === 0 || b.prerelease.length === 0) {
    return sign(b.prerelease.length - a.prerelease.length);
  }
  const n = Math.min(a.prerelease.length, b.prerelease.length);
  for (let i = 0; i < n; i++) {
    const c = compareIds(a.prerelease[i]!, b.prerelease[i]!);
    if (c !== 0) return c;
  }
  // Equal prefix: the longer set of identifiers has higher precedence.
  return sign(a.prerelease.length - b.prerelease.length);
}

/**
 * SemVer precedence: -1 when a < b, 0 when equal (build metadata ignored), 1 when a > b.
 * Throws on a string that is not SemVer; callers validate first (`isSemver`).
 */
export function compareSemver(a: string, b: string): -1 | 0 | 1 {
  const pa = parseSemver(a);
  const pb = parseSemver(b);
  if (!pa) throw new TypeError(`not a semver version: ${JSON.stringify(a)}`);
  if (!pb) throw new TypeError(`not a semver version: ${JSON.stringify(b)}`);
  return compareParsed(pa, pb);
}
