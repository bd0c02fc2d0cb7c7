/**
 * `ferry-agent self-test`: what a freshly staged agent binary must prove
 * before the `current` symlink is swapped to it — that it can read the state
 * directory the running agent left (state.json), load the agent's key (and
 * that it is the key the state is enrolled with), and re-verify the pinned
 * root chain byte for byte. It only reads; nothing under the state directory
 * is created or changed.
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { sign, verify } from '../core/ed25519.js';
import { FerryError } from '../core/errors.js';
import { agentIdOf } from '../core/heartbeat.js';
import { loadPrivateKey } from '../platform/keyfile.js';
import { trustStoredChain } from '../core/root.js';
import { readAgentState, type AgentState } from './agent-state.js';

export type SelfTestCheck = 'state' | 'key' | 'root';

export interface SelfTestResult {
  ok: boolean;
  /** The first check that failed, with its coded reason. */
  failed?: { check: SelfTestCheck; code: string; message: string };
  /** What each passing check found, for the one-line report. */
  notes: string[];
}

const codeOf = (e: unknown): string =>
  typeof e === 'object' && e !== null && typeof (e as { code?: unknown }).code === 'string'
    ? (e as { code: string }).code
    : 'IO_ERROR';

const exists = (p: string) =>
  stat(p).then(
    () => true,
    (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return false;
      throw e;
    },
  );

async function checkKey(dir: string, state: AgentState | undefined): Promise<string> {
  const keyPath = join(dir, 'keys', 'agent.key');
  // Before enrolment the running agent makes the key on its next start; after it the key is the identity.
  if (!(await exists(keyPath))) {
    if (state?.agentId == null) return 'key not made yet';
    throw new FerryError(
      'KEY_INVALID',
      `${keyPath} is missing but the state is enrolled as ${state.agentId}`,
    );
  }
  const key = await loadPrivateKey(keyPath);
  const probe = Buffer.from('ferry-agent self-test');
  if (!verify(key.publicKey, probe, sign(key.seed, probe)))
    throw new FerryError('KEY_INVALID', `${keyPath}: a signature made with it does not verify`);
  const id = agentIdOf(key.publicKey);
  if (state?.agentId != null && state.agentId !== id)
    throw new FerryError(
      'KEY_INVALID',
      `${keyPath} is agent ${id}, but the state is enrolled as ${state.agentId}`,
    );
  return `key ${id}`;
}

/** Runs every check in order and stops at the first failure. */
export async function selfTest(stateDir: string): Promise<SelfTestResult> {
  const notes: string[] = [];
  let check: SelfTestCheck = 'state';
  try {
    // A state directory that is not there is a wrong path, not a first run.
    if (!(await exists(stateDir))) throw new FerryError('IO_ERROR', `${stateDir} does not exist`);
    const state = await readAgentState(stateDir);
    notes.push(
      state
        ? `state site ${state.site}, sequence ${state.active?.sequence ?? 'none'}`
        : 'no state yet (first run)',
    );
    check = 'key';
    notes.push(await checkKey(stateDir, state));
    check = 'root';
    if (state) {
      const root = trustStoredChain(state.roots);
      notes.push(`root v${root.payload.version} (chain of ${state.roots.length})`);
    }
    return { ok: true, notes };
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    return { ok: false, failed: { check, code: codeOf(e), message }, notes };
  }
}
