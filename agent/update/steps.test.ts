/**
 * The self-update download goes through the same HTTP limits as the agent's other fetches
 * ($FERRY_AGENT_HTTP_LIMITS): here a disk reserve no disk can give refuses the download before
 * any request, and the default limits let it through from a real loopback server.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../platform/log.js';
import { blobCachePath, MirrorSet } from '../fetch.js';
import { download, type StepContext } from './steps.js';

const body = Buffer.from('a new agent build\n'.repeat(64));
const sha256 = createHash('sha256').update(body).digest('hex');
const target = { name: 'ferry-agent', kind: 'agent' as const, version: '2.0.0', sha256, size: body.length };
let dir: string;
let url: string;
let requests = 0;
const server = createServer((_req, res) => {
  requests++;
  res.writeHead(200, { 'content-length': body.length }).end(body);
});

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ferry-steps-'));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await new Promise((r) => server.close(r));
  await rm(dir, { recursive: true, force: true });
});

const context = (sub: string, httpLimits?: StepContext['httpLimits']): StepContext => ({
  installRoot: join(dir, sub, 'install'),
  stateDir: join(dir, sub),
  cacheDir: join(dir, sub, 'cache'),
  log: createLogger({ component: 'agent', level: 'error' }),
  timeoutMs: 10_000,
  ...(httpLimits && { httpLimits }),
});

describe('self-update download limits', () => {
  it('a reserve the disk cannot give refuses the download before any request', async () => {
    const c = context('tight', { reserveBytes: Number.MAX_SAFE_INTEGER });
    const e = await download(c, target, '2.0.0', new MirrorSet([url]));
    expect(e).toMatchObject({ type: 'download-failed' });
    expect((e as { reason: string }).reason).toMatch(/space|room|STORAGE/i);
    expect(requests).toBe(0);
  });

  it('with the default limits the verified bytes land in the cache', async () => {
    const c = context('roomy');
    expect(await download(c, target, '2.0.0', new MirrorSet([url]))).toEqual({ type: 'download-done' });
    expect((await readFile(blobCachePath(c.cacheDir, sha256))).equals(body)).toBe(true);
    expect(requests).toBe(1);
  });
});
