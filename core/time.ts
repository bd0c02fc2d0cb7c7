import { FerryError } from './errors.js';

const UNITS: Record<string, number> = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/** Parses `90d`, `12h`, `30m`, `45s`, `2w` into milliseconds. */
export function parseDuration(s: string): number | undefined {
  const m = /^([1-9][0-9]{0,6})([smhdw])$/.exec(s);
  if (!m) return undefined;
  return Number(m[1]) * UNITS[m[2]!]!;
}

/** Strict RFC 3339 UTC timestamp as ferry writes them: `2026-11-22T10:00:00Z`. */
const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?Z$/;

export function parseIsoUtc(s: unknown): number | undefined {
  if (typeof s !== 'string' || !ISO_UTC.test(s)) return undefined;
  const t = Date.parse(s);
  return Number.isFinite(t) ? t : undefined;
}

/** Formats a time as ferry writes it: second precision, UTC, `Z`. */
export function isoUtc(ms: number): string {
  return new Date(Math.floor(ms / 1000) * 1000).toISOString().replace('.000Z', 'Z');
}

/** `expires` as an operator writes it: an ISO time or a duration from `now`. */
export function resolveExpiry(value: string, now: number, field = 'expires'): string {
  const d = parseDuration(value);
  if (d !== undefined) return isoUtc(now + d);
  const t = parseIsoUtc(value);
  if (t === undefined) {
    throw new FerryError(
      'USAGE',
      `${field} must be a duration like 90d / 12h or an ISO time like 2027-02-20T10:00:00Z`,
    );
  }
  if (t <= now) throw new FerryError('USAGE', `${field} ${value} is already in the past`);
  return isoUtc(t);
}
