import { execFileSync } from 'node:child_process';

/**
 * Whether a system program is available. On a developer laptop a missing
 * program makes the tests that need it skip with a one-line reason; under
 * FERRY_REQUIRE_ALL=1 (set by .ci/run, which installs everything) a missing
 * program is a failure instead.
 */
export function haveProgram(name: string): boolean {
  let found = true;
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' });
  } catch {
    found = false;
  }
  if (!found && process.env.FERRY_REQUIRE_ALL === '1') {
    throw new Error(`${name} is required (FERRY_REQUIRE_ALL=1) but is not installed`);
  }
  if (!found) console.warn(`skipping tests that need ${name}: not installed`);
  return found;
}
