/**
 * The per-file test world for suites that run ferry processes: a fresh world (trust root, keys, a temp
 * dir) before the file's tests, and after them every ferry child still running killed, then the dir removed.
 */
import { afterAll, beforeAll } from 'vitest';
import { makeWorld, type World } from './fixtures.js';
import { killStrays } from './mirror-proc.js';

/** Registers the hooks; the returned world is filled in before the first test runs. */
export function useWorld(): World {
  const w = {} as World;
  beforeAll(async () => {
    Object.assign(w, await makeWorld());
  });
  afterAll(async () => {
    await killStrays();
    await w.cleanup?.();
  });
  return w;
}
