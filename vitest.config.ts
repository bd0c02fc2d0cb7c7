import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // One glob for every test, wherever it sits: a test placed beside any code runs.
    include: ['**/*.test.ts'],
    exclude: ['dist/**', 'node_modules/**'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    maxWorkers: 2,
  },
});
