/**
 * Whether the agent runs on this state directory: it holds `agent.lock`
 * (platform/lock.ts) for as long as it runs, and writes `agent.pid` while its
 * loop runs. Either naming a live process means it runs.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pidAlive } from '../../platform/lock.js';

export const agentLockPath = (stateDir: string) => join(stateDir, 'agent.lock');

/** The pid of the agent running on `stateDir`, or undefined when none does. */
export async function runningAgent(stateDir: string): Promise<number | undefined> {
  const lock = await readFile(agentLockPath(stateDir), 'utf8').catch(() => '');
  let pid = 0;
  try {
    pid = Number((JSON.parse(lock) as { pid?: unknown }).pid) || 0;
  } catch {
    // no lock, or a torn one: the pid file still tells
  }
  if (pid > 0 && pid !== process.pid && pidAlive(pid)) return pid;
  const file = Number((await readFile(join(stateDir, 'agent.pid'), 'utf8').catch(() => '')).trim());
  if (file > 0 && file !== process.pid && pidAlive(file)) return file;
  return undefined;
}
