/**
 * The one test-only hook of self-update: FERRY_CRASH_AT=<phase> kills the
 * process with SIGKILL at that phase, like a power cut, so that
 * test/agent-update-crash.test.ts can prove every phase recovers. Unset (as
 * in production) it does nothing; no other file of self-update reads it.
 */
export function crashPoint(phase: string): void {
  if (process.env.FERRY_CRASH_AT === phase) process.kill(process.pid, 'SIGKILL');
}
