import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { decodeHex } from '../core/encoding.js';
import { FerryError } from '../core/errors.js';
import * as ed from '../core/ed25519.js';
import { writeFileAtomic } from './fsx.js';
import type { PrivateKey, PublicKey } from '../core/keys.js';

export { isPrivate, type PrivateKey, type PublicKey } from '../core/keys.js';

interface KeyFile {
  type: 'ferry.key/v1' | 'ferry.pub/v1';
  keytype: 'ed25519';
  keyid: string;
  public: string;
  private?: string;
}

export async function generateKeyFiles(
  dir: string,
  name: string,
): Promise<{ keyid: string; keyPath: string; pubPath: string }> {
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(name) || name.startsWith('.')) {
    throw new FerryError(
      'USAGE',
      `key name ${JSON.stringify(name)} must be 1-64 of A-Z a-z 0-9 . _ - and not start with a dot`,
    );
  }
  await ed.ready();
  const kp = ed.generateKeyPair();
  const keyid = ed.keyIdOf(kp.publicKey);
  const pub: KeyFile = {
    type: 'ferry.pub/v1',
    keytype: 'ed25519',
    keyid,
    public: Buffer.from(kp.publicKey).toString('hex'),
  };
  const priv: KeyFile = { ...pub, type: 'ferry.key/v1', private: Buffer.from(kp.seed).toString('hex') };
  const keyPath = join(dir, `${name}.key`);
  const pubPath = join(dir, `${name}.pub`);
  await writeFileAtomic(keyPath, JSON.stringify(priv, null, 2) + '\n', { mode: 0o600, exclusive: true });
  await writeFileAtomic(pubPath, JSON.stringify(pub, null, 2) + '\n', { mode: 0o644, exclusive: true });
  return { keyid, keyPath, pubPath };
}

async function readKeyFile(path: string): Promise<{ file: KeyFile; mode: number }> {
  let text: string;
  let mode: number;
  try {
    const st = await stat(path);
    if (!st.isFile()) throw new FerryError('KEY_INVALID', `${path}: not a regular file`);
    if (st.size > 64 * 1024) throw new FerryError('KEY_INVALID', `${path}: too large to be a key file`);
    mode = st.mode;
    text = await readFile(path, 'utf8');
  } catch (e) {
    if (e instanceof FerryError) throw e;
    throw new FerryError('IO_ERROR', `${path}: cannot read key file (${(e as Error).message})`, { cause: e });
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new FerryError('KEY_INVALID', `${path}: not a ferry key file (invalid JSON)`, { cause: e });
  }
  assertKeyFile(v, path);
  return { file: v, mode };
}

function assertKeyFile(v: unknown, path: string): asserts v is KeyFile {
  const o = v as Partial<KeyFile> | null;
  if (typeof o !== 'object' || o === null)
    throw new FerryError('KEY_INVALID', `${path}: not a ferry key file`);
  if (o.type !== 'ferry.key/v1' && o.type !== 'ferry.pub/v1')
    throw new FerryError('KEY_INVALID', `${path}: unknown key file type`);
  if (o.keytype !== 'ed25519') throw new FerryError('KEY_INVALID', `${path}: keytype must be ed25519`);
  if (typeof o.public !== 'string' || typeof o.keyid !== 'string')
    throw new FerryError('KEY_INVALID', `${path}: missing public key`);
  if (o.type === 'ferry.key/v1' && typeof o.private !== 'string')
    throw new FerryError('KEY_INVALID', `${path}: missing private key`);
}

function checkPublic(file: KeyFile, path: string): PublicKey {
  const publicKey = decodeHex(file.public, 32, `${path}: public`);
  const keyid = ed.keyIdOf(publicKey);
  if (keyid !== file.keyid)
    throw new FerryError('KEY_INVALID', `${path}: keyid does not match the public key`);
  return { keyid, publicKey };
}

/** Loads the public half from a `.pub` or a `.key` file. */
export async function loadPublicKey(path: string): Promise<PublicKey> {
  await ed.ready();
  const { file } = await readKeyFile(path);
  return checkPublic(file, path);
}

/** Loads a private key; refused when the file is readable by group or others. */
export async function loadPrivateKey(path: string): Promise<PrivateKey> {
  await ed.ready();
  const { file, mode } = await readKeyFile(path);
  if (file.type !== 'ferry.key/v1' || file.private === undefined) {
    throw new FerryError('KEY_INVALID', `${path}: is a public key; a private .key file is needed to sign`);
  }
  if ((mode & 0o077) !== 0) {
    throw new FerryError(
      'KEY_PERMISSIONS',
      `${path}: private key is accessible by group or others (mode ${(mode & 0o777).toString(8)}); run chmod 600`,
    );
  }
  const pub = checkPublic(file, path);
  const seed = decodeHex(file.private, 32, `${path}: private`);
  if (!Buffer.from(ed.publicFromSeed(seed)).equals(Buffer.from(pub.publicKey))) {
    throw new FerryError('KEY_INVALID', `${path}: private key does not match its public key`);
  }
  return { ...pub, seed };
}

/** Loads a key that may be public-only; returns the private half when present. */
export async function loadAnyKey(path: string): Promise<PublicKey | PrivateKey> {
  await ed.ready();
  const { file } = await readKeyFile(path);
  return file.type === 'ferry.key/v1' ? loadPrivateKey(path) : checkPublic(file, path);
}
