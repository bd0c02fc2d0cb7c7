/**
 * A mirror that trickles must not hold the agent: a real `ferry agent poll
 * --now` child with two mirrors, the first a front that passes everything
 * through to a real `ferry mirror serve` except blob bodies, which it sends a
 * byte at a time, the second a plain front to the same mirror. The agent gives
 * the first up at its total deadline (small here, through
 * $FERRY_AGENT_HTTP_LIMITS), resumes on the second from the bytes it kept, and
 * finishes the update well within a few seconds.
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdir, readFile } from 'node:fs/promises';
import { createServer, request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { importInto, startMirrorAt, OPEN_ENROLMENT } from './helpers/agent-proc.js';
import { buildBundle } from './helpers/fixtures.js';
import { runFerry, spawnFerry, type LogLine } from './helpers/mirror-proc.js';
import { useWorld } from './helpers/world.js';

const w = useWorld();

interface Front {
  url: string;
  blobRequests: IncomingHttpHeaders[];
  close: () => Promise<void>;
}

/** A front to `upstream`; with `trickleMs`, blob bodies go out one byte every `trickleMs`. */
async function front(upstream: string, trickleMs?: number): Promise<Front> {
  const blobRequests: IncomingHttpHeaders[] = [];
  const server = createServer((req, res) => {
    const isBlob = (req.url ?? '').startsWith('/v1/blobs/');
    if (isBlob) blobRequests.push(req.headers);
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(req.headers))
      if (typeof v === 'string' && k !== 'host' && k !== 'connection') headers[k] = v;
    const up = httpRequest(
      `${upstream}${req.url ?? '/'}`,
      { method: req.method, headers, agent: false },
      (ur) => {
        res.writeHead(ur.statusCode ?? 502, ur.headers);
        if (!isBlob || trickleMs === undefined) return void ur.pipe(res);
        const chunks: Buffer[] = [];
        ur.on('data', (c: Buffer) => chunks.push(c));
        ur.on('end', () => {
          const body = Buffer.concat(chunks);
          let i = 0;
          const t = setInterval(() => {
            if (i < body.length) res.write(body.subarray(i, ++i));
            else {
              clearInterval(t);
              res.end();
            }
          }, trickleMs);
          res.on('close', () => clearInterval(t));
        });
      },
    );
    req.pipe(up);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    blobRequests,
    close: () => {
      server.closeAllConnections();
      return new Promise((r) => server.close(() => r()));
    },
  };
}

describe('an agent behind a trickling mirror', () => {
  it('gives it up at the total deadline and gets the update from the next mirror, resuming', async () => {
    const dir = join(w.dir, 'trickle');
    await mkdir(dir, { recursive: true });
    const conf = join(dir, 'app.conf');
    const content = randomBytes(256 * 1024);
    const policy = {
      type: 'ferry.policy/v1',
      scripts: [],
      files: [{ path: conf, artifact: 'payload', mode: '0644', enforce: true }],
    };
    const b = await buildBundle(w, join(dir, 'b.ferry'), {
      artifacts: [
        { name: 'payload', kind: 'file', content },
        { name: 'baseline', kind: 'policy', content: JSON.stringify(policy) },
      ],
    });
    const data = join(dir, 'mirror');
    await importInto(data, b.volumes[0]!.path, w.rootPath);
    const mirror = await startMirrorAt(data, 0, OPEN_ENROLMENT);
    const slow = await front(mirror.url, 200);
    const fine = await front(mirror.url);
    try {
      const t0 = Date.now();
      const poll = spawnFerry(
        [
          'agent',
          'poll',
          '--now',
          '--json',
          ...['--state', join(dir, 'agent'), '--trust', w.rootPath, '--site', 'plant-7'],
          ...['--mirror', `${slow.url},${fine.url}`],
        ],
        // 256 KiB at 1 MiB/s is a quarter second: the deadline is the 1.5 s floor
        { FERRY_AGENT_HTTP_LIMITS: JSON.stringify({ minDeadlineMs: 1500, floorBytesPerSec: 1024 * 1024 }) },
      );
      // Without a total deadline the trickle would take hours: give up on the agent long before.
      const cut = setTimeout(() => poll.child.kill('SIGKILL'), 40_000);
      const exit = await poll.exited;
      clearTimeout(cut);
      const took = Date.now() - t0;
      expect(exit, poll.stderr()).toEqual({ code: 0, signal: null });
      expect(JSON.parse(poll.stdout())).toMatchObject({ ok: true, sync: { kind: 'updated', sequence: 1 } });
      expect(took).toBeLessThan(20_000); // a loaded CI box, not the trickle: that alone would take minutes
      expect((await readFile(conf)).equals(content)).toBe(true);

      const logs = poll
        .stderr()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as LogLine);
      const gaveUp = logs.filter((l) => l.event === 'blob.mirror_failed' && l.code === 'HTTP_DEADLINE');
      expect(gaveUp.length).toBeGreaterThanOrEqual(1);
      expect(gaveUp[0]!.mirror).toBe(slow.url);
      expect(slow.blobRequests).toHaveLength(1); // given up once, then backed off: not asked again
      // the next mirror resumed from the bytes the trickle had delivered
      expect(fine.blobRequests.some((h) => /^bytes=[1-9]\d*-$/.test(h.range ?? ''))).toBe(true);
    } finally {
      await slow.close();
      await fine.close();
      await mirror.stop();
    }
  });

  it('refuses limits it does not know, naming the key, before touching the state directory', async () => {
    const state = join(w.dir, 'limits-agent');
    const args = ['agent', 'poll', '--now', '--state', state, '--trust', w.rootPath, '--site', 'plant-7'];
    const r = await runFerry([...args, '--mirror', 'http://127.0.0.1:9'], {
      FERRY_AGENT_HTTP_LIMITS: '{"deadline":5}',
    });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/FERRY_AGENT_HTTP_LIMITS: unknown key "deadline"/);
    const zero = await runFerry([...args, '--mirror', 'http://127.0.0.1:9'], {
      FERRY_AGENT_HTTP_LIMITS: '{"minDeadlineMs":0}',
    });
    expect(zero.code).toBe(2);
    expect(zero.stderr).toMatch(/minDeadlineMs must be an integer of at least 1/);
    await expect(readFile(join(state, 'state.json'))).rejects.toThrow(/ENOENT/);
  });
});
