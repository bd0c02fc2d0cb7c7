/**
 * Telemetry fixtures for the server, built by code: mirror keys (key files, as
 * a mirror makes them), agent keys, signed heartbeats and enrolments, signed
 * batches and export files (with hooks to tamper with their lines).
 */
import { createPrivateKey, sign, type KeyObject } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pae, type Envelope, type Signer } from '../../core/dsse.js';
import { generateKeyPair, keyIdOf } from '../../core/ed25519.js';
import {
  agentIdOf,
  HEARTBEAT_PAYLOAD_TYPE,
  signEnrollRequest,
  signHeartbeat,
  type Heartbeat,
} from '../../core/heartbeat.js';
import { generateKeyFiles, loadPrivateKey, type PrivateKey } from '../../platform/keyfile.js';
import {
  mirrorIdOf,
  sha256Hex,
  signBatch,
  signExportHeader,
  type CarriedBatch,
  type EnrolmentInfo,
  type OutboxRecord,
  type OwnRecord,
} from '../../core/telemetry.js';

export interface TestMirror {
  id: string;
  site: string;
  key: PrivateKey;
  pubPath: string;
}

export async function makeMirror(dir: string, name: string, site: string): Promise<TestMirror> {
  const { keyPath, pubPath } = await generateKeyFiles(dir, name);
  const key = await loadPrivateKey(keyPath);
  return { id: mirrorIdOf(key.publicKey), site, key, pubPath };
}

export interface TestAgent {
  id: string;
  publicKey: string;
  signer: Signer;
}

export function makeAgent(): TestAgent {
  const kp = generateKeyPair();
  return {
    id: agentIdOf(kp.publicKey),
    publicKey: Buffer.from(kp.publicKey).toString('hex'),
    signer: { keyid: keyIdOf(kp.publicKey), seed: kp.seed },
  };
}

const AT = '2025-01-01T00:00:00.000Z';

export function enrolmentInfo(
  a: TestAgent,
  hostname = `node-${a.id.slice(0, 6)}`,
  groups = ['canary'],
): EnrolmentInfo {
  const request = signEnrollRequest(
    { type: 'ferry.enroll/v1', publicKey: a.publicKey, hostname, platform: 'linux/amd64', groups, at: AT },
    a.signer,
  );
  return {
    agentId: a.id,
    publicKey: a.publicKey,
    hostname,
    platform: 'linux/amd64',
    groups,
    enrolledAt: AT,
    request,
  };
}

export function enrolment(a: TestAgent, seq: number, info = enrolmentInfo(a)): OwnRecord {
  return { kind: 'enrolment', seq, at: AT, agent: info };
}

export function heartbeatPayload(a: TestAgent, counter: number, extra: Partial<Heartbeat> = {}): Heartbeat {
  return {
    type: 'ferry.heartbeat/v1',
    agentId: a.id,
    counter,
    sentAt: new Date(Date.parse(AT) + counter * 60_000).toISOString(),
    version: '1.0.0',
    manifestSequence: 3,
    results: [{ name: 'ntp-check', ok: true }],
    drift: [],
    disconnectedSec: 0,
    resources: { rssBytes: 40_000_000, load1: 0.25 },
    ...extra,
  };
}

export function heartbeat(
  a: TestAgent,
  seq: number,
  counter: number,
  extra: Partial<Heartbeat> = {},
): OwnRecord {
  return {
    kind: 'heartbeat',
    seq,
    at: AT,
    agentId: a.id,
    counter,
    envelope: signHeartbeat(heartbeatPayload(a, counter, extra), a.signer),
  };
}

/** A heartbeat envelope whose payload was changed after signing (what a dishonest relay does). */
export function altered(env: Envelope, change: (hb: Heartbeat) => void): Envelope {
  const hb = JSON.parse(Buffer.from(env.payload, 'base64').toString('utf8')) as Heartbeat;
  change(hb);
  return { ...env, payload: Buffer.from(JSON.stringify(hb)).toString('base64') };
}

export function batch(
  m: TestMirror,
  from: number,
  to: number,
  records: OwnRecord[],
  signer: Signer = m.key,
): CarriedBatch {
  return {
    envelope: signBatch(
      { type: 'ferry.telemetry-batch/v1', mirror: m.id, site: m.site, createdAt: AT, from, to, records },
      signer,
    ),
    via: [m.id],
  };
}

export interface ExportSpec {
  number: number;
  prev: string | null;
  from: number;
  to: number;
  records: OutboxRecord[];
  /** Changes the body lines after the header was computed over the originals (tampering). */
  tamper?: (lines: string[]) => string[];
}

/** Writes an export file; returns its header hash (for the next export's prev). */
export async function writeExport(path: string, m: TestMirror, s: ExportSpec): Promise<string> {
  const lines = s.records.map((r) => JSON.stringify(r));
  const body = lines.map((l) => l + '\n').join('');
  const { line, hash } = signExportHeader(
    {
      type: 'ferry.telemetry-export/v1',
      mirror: m.id,
      site: m.site,
      number: s.number,
      prev: s.prev,
      createdAt: AT,
      from: s.from,
      to: s.to,
      count: lines.length,
      sha256: sha256Hex(body),
    },
    m.key,
  );
  const out = s.tamper ? s.tamper([...lines]) : lines;
  await writeFile(path, line + '\n' + out.map((l) => l + '\n').join(''));
  return hash;
}

export const exportPath = (dir: string, name: string) => join(dir, `${name}.jsonl`);

const PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
const keyObjects = new WeakMap<TestAgent, KeyObject>();

/** The same signed heartbeat as `heartbeat`, signed with a parsed key kept per agent (bulk fixtures). */
export function fastHeartbeat(a: TestAgent, seq: number, counter: number): OwnRecord {
  let key = keyObjects.get(a);
  if (!key) {
    key = createPrivateKey({
      key: Buffer.concat([PKCS8_PREFIX, a.signer.seed]),
      format: 'der',
      type: 'pkcs8',
    });
    keyObjects.set(a, key);
  }
  const body = Buffer.from(JSON.stringify(heartbeatPayload(a, counter)), 'utf8');
  const sig = sign(null, pae(HEARTBEAT_PAYLOAD_TYPE, body), key).toString('base64');
  const envelope = {
    payloadType: HEARTBEAT_PAYLOAD_TYPE,
    payload: body.toString('base64'),
    signatures: [{ keyid: a.signer.keyid, sig }],
  };
  return { kind: 'heartbeat', seq, at: AT, agentId: a.id, counter, envelope };
}
