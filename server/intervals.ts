/**
 * Sets of integers as sorted, merged, closed intervals [[a,b],…]: a mirror's
 * sequence numbers received, an agent's heartbeat counters received.
 */
export type Interval = [number, number];

/** Index of the last interval whose start is <= n, or -1. */
function floor(set: Interval[], n: number): number {
  let lo = 0;
  let hi = set.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (set[mid]![0] <= n) {
      found = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return found;
}

export function has(set: Interval[], n: number): boolean {
  const i = floor(set, n);
  return i >= 0 && set[i]![1] >= n;
}

/** True when every integer of [a,b] is in the set. */
export function hasRange(set: Interval[], a: number, b: number): boolean {
  const i = floor(set, a);
  return i >= 0 && set[i]![1] >= b;
}

/** Adds [a,b] in place, merging touching and overlapping intervals. */
export function addRange(set: Interval[], a: number, b: number): void {
  if (b < a) return;
  const last = set.at(-1);
  if (!last || a > last[1] + 1) {
    set.push([a, b]); // beyond everything held: the common, in-order case
    return;
  }
  if (a >= last[0]) {
    last[1] = Math.max(last[1], b);
    return;
  }
  // general case: find every interval touching [a-1, b+1] and replace them by their union
  let i = floor(set, a);
  if (i < 0 || set[i]![1] < a - 1) i++;
  let j = i;
  let lo = a;
  let hi = b;
  while (j < set.length && set[j]![0] <= b + 1) {
    lo = Math.min(lo, set[j]![0]);
    hi = Math.max(hi, set[j]![1]);
    j++;
  }
  set.splice(i, j - i, [lo, hi]);
}

export const add = (set: Interval[], n: number): void => addRange(set, n, n);

/** Holes between consecutive intervals (and before the first, from `from` when given). */
export function holes(set: Interval[], from?: number): Interval[] {
  const out: Interval[] = [];
  let next = from ?? set[0]?.[0] ?? 1;
  for (const [a, b] of set) {
    if (a > next) out.push([next, a - 1]);
    next = Math.max(next, b + 1);
  }
  return out;
}

export const size = (set: Interval[]): number => set.reduce((n, [a, b]) => n + b - a + 1, 0);

export const fmt = ([a, b]: Interval): string => (a === b ? `${a}` : `${a}–${b}`);
