/**
 * The one test-only crash hook: FERRY_CRASH_AT=<phase> kills the process with
 * SIGKILL at that phase, like a power cut, so that the crash tests
 * (test/mirror-crash.test.ts, test/agent-update-crash.test.ts) can prove every
 * phase of an import or a self-update recovers. Unset, as in production, it
 * does nothing; no other file reads the variable.
 */
export function crashPoint(phase: string): void {
  if (process.env.FERRY_CRASH_AT === phase) process.kill(process.pid, 'SIGKILL');
}
