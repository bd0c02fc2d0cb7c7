/**
 * The agent's identity: an Ed25519 key made on first start under
 * `<stateDir>/keys/agent.key` (mode 0600), and enrolment with a mirror, which
 * answers with the agent id (derived from the public key, so re-enrolling the
 * same key always yields the same id).
 *
 * The enrolment request is a DSSE envelope signed with the agent's key over
 * {type:'ferry.enroll/v1', publicKey, hostname, platform, groups, token?, at},
 * so the mirror knows the sender holds the key it enrols. `token` is the
 * enrolment token the site operator made (`ferry mirror token create`): a mirror
 * that has not met this agent refuses it without one (unless its enrolment is
 * open), and the groups it records are the token's. The token is needed only
 * until a mirror has enrolled the agent, and is never logged.
 */
import { mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Envelope } from '../core/dsse.js';
import { CodedError, FerryError } from '../core/errors.js';
import { request } from '../platform/http/client.js';
import {
  agentIdOf,
  ENROLL_TYPE,
  isAgentId,
  signEnrollRequest,
  type EnrollPayload,
} from '../core/heartbeat.js';
import { generateKeyFiles, loadPrivateKey, type PrivateKey } from '../platform/keyfile.js';

export interface AgentIdentity {
  keyPath: string;
  publicKey: Uint8Array;
  keyid: string;
  /** The id every mirror gives this key (first 32 hex of the keyid). */
  agentId: string;
  /** The private key, for signing heartbeats and enrolment. */
  key: PrivateKey;
}

const KEY_NAME = 'agent';

/** Loads the agent key from `<stateDir>/keys`, making it on first start. */
export async function loadOrCreateIdentity(stateDir: string): Promise<AgentIdentity> {
  const dir = join(stateDir, 'keys');
  const keyPath = join(dir, `${KEY_NAME}.key`);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const exists = await stat(keyPath).then(
    () => true,
    (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return false;
      throw e;
    },
  );
  if (!exists) {
    try {
      await generateKeyFiles(dir, KEY_NAME);
    } catch (e) {
      // Another start raced us to it (exclusive create), or a crash left agent.key without agent.pub:
      // the .key file holds the public half too, so it is all we need.
      const made = await stat(keyPath).then(
        () => true,
        () => false,
      );
      if (!made) throw e;
    }
  }
  const key = await loadPrivateKey(keyPath);
  return { keyPath, publicKey: key.publicKey, keyid: key.keyid, agentId: agentIdOf(key.publicKey), key };
}

/** A mirror's refusal of an enrolment, with the mirror's own code (TOKEN_MISSING, TOKEN_EXPIRED, AGENT_REVOKED …). */
export class EnrolRefusedError extends CodedError {
  constructor(
    code: string,
    readonly status: number,
    message: string,
  ) {
    super(code, message);
  }
}

export interface EnrollOptions {
  hostname: string;
  platform: string;
  groups: string[];
  token?: string;
  /** Clock for `at` (tests move it). */
  now?: () => number;
  timeoutMs?: number;
}

/** The signed enrolment request body. */
export function enrollRequest(identity: AgentIdentity, o: EnrollOptions): Envelope {
  const payload: EnrollPayload = {
    type: ENROLL_TYPE,
    publicKey: Buffer.from(identity.publicKey).toString('hex'),
    hostname: o.hostname,
    platform: o.platform,
    groups: o.groups,
    ...(o.token !== undefined && { token: o.token }),
    at: new Date((o.now ?? Date.now)()).toISOString(),
  };
  return signEnrollRequest(payload, identity.key);
}

/** Enrols with a mirror; resolves to the agent id it assigned (checked against our own key). */
export async function enroll(mirrorUrl: string, identity: AgentIdentity, o: EnrollOptions): Promise<string> {
  const body = JSON.stringify(enrollRequest(identity, o));
  const res = await request(new URL('/v1/enroll', mirrorUrl).href, {
    method: 'POST',
    body,
    headers: { 'Content-Type': 'application/json' },
    timeoutMs: o.timeoutMs ?? 30_000,
    maxBytes: 64 * 1024,
  });
  let v: unknown;
  try {
    v = JSON.parse(res.body.toString('utf8'));
  } catch (e) {
    throw new FerryError('IO_ERROR', `enrol: mirror answered ${res.status} with a body that is not JSON`, {
      cause: e,
    });
  }
  const o2 = (typeof v === 'object' && v !== null ? v : {}) as Record<string, unknown>;
  if (res.status !== 200) {
    const code = typeof o2.code === 'string' ? o2.code : 'unknown';
    const msg = typeof o2.message === 'string' ? o2.message : '';
    throw new EnrolRefusedError(code, res.status, `enrol: mirror refused (${res.status} ${code}): ${msg}`);
  }
  if (!isAgentId(o2.agentId) || o2.agentId !== identity.agentId)
    throw new FerryError('IO_ERROR', 'enrol: mirror answered with an agent id that is not this key');
  return o2.agentId;
}
