/**
 * The agent outbox on real files in a temp dir: bounds and the order in which
 * it compacts, acknowledgement, survival across a restart, and the temp files
 * a kill -9 can leave behind.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import ts from 'typescript';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AgentOutbox, type OutboxKind } from '../agent/outbox.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ferry-outbox-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/**
 * The outbox as plain JS for a child process (Node 20 cannot run .ts): the
 * listed sources transpiled into a temp tree with the same layout. Returns the
 * URL of the first one.
 */
async function compiled(files: string[]): Promise<string> {
  const out = join(dir, 'js');
  for (const f of files) {
    const src = await readFile(new URL(`../${f}`, import.meta.url), 'utf8');
    const js = ts.transpileModule(src, {
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
    }).outputText;
    await mkdir(dirname(join(out, f)), { recursive: true });
    await writeFile(join(out, f.replace(/\.ts$/, '.js')), js);
  }
  await writeFile(join(out, 'package.json'), '{"type":"module"}');
  return pathToFileURL(join(out, files[0]!.replace(/\.ts$/, '.js'))).href;
}

const env = (n: number, size = 10) => Buffer.from(String(n).padEnd(size, '.'));
const kinds = async (box: AgentOutbox) => (await box.peek(1000)).map((e) => `${e.seq}:${e.kind}`);

describe('agent outbox', () => {
  it('hands entries back oldest first, and ack removes them for good', async () => {
    const box = await AgentOutbox.open(dir);
    for (const k of ['heartbeat', 'result', 'update', 'heartbeat'] as OutboxKind[])
      expect(await box.append(k, env(1))).toMatchObject({ ok: true });
    const first = await box.peek(2);
    expect(first.map((e) => [e.seq, e.kind, e.bytes.toString()])).toEqual([
      [1, 'heartbeat', '1.........'],
      [2, 'result', '1.........'],
    ]);
    expect(await box.ack(2)).toBe(2);
    expect(await kinds(box)).toEqual(['3:update', '4:heartbeat']);
    expect((await readdir(join(dir, 'outbox'))).sort()).toEqual([
      '0000000000000003.update',
      '0000000000000004.heartbeat',
      'acked',
    ]);
  });

  it('when full, drops the oldest heartbeats first and never a result or update', async () => {
    const box = await AgentOutbox.open(dir, { maxEntries: 4, maxBytes: 1000 });
    await box.append('heartbeat', env(1)); // 1
    await box.append('result', env(2)); // 2
    await box.append('heartbeat', env(3)); // 3
    await box.append('update', env(4)); // 4
    expect(await box.append('heartbeat', env(5))).toEqual({ ok: true, seq: 5, dropped: [1] });
    expect(await box.append('result', env(6))).toEqual({ ok: true, seq: 6, dropped: [3] });
    expect(await kinds(box)).toEqual(['2:result', '4:update', '5:heartbeat', '6:result']);
    expect(await box.append('result', env(7))).toEqual({ ok: true, seq: 7, dropped: [5] });
    // only results and updates remain: a heartbeat is refused, and so is another result; nothing changes
    expect(await box.append('heartbeat', env(8))).toEqual({ ok: false, reason: 'full' });
    expect(await box.append('result', env(8))).toEqual({ ok: false, reason: 'full' });
    expect(await kinds(box)).toEqual(['2:result', '4:update', '6:result', '7:result']);
    expect((await readdir(join(dir, 'outbox'))).length).toBe(4);
  });

  it('bounds bytes the same way, and refuses an entry larger than the whole outbox', async () => {
    const box = await AgentOutbox.open(dir, { maxEntries: 100, maxBytes: 100 });
    for (let i = 0; i < 4; i++) await box.append('heartbeat', env(i, 20));
    await box.append('result', env(9, 20));
    expect(box.size).toEqual({ entries: 5, bytes: 100 });
    expect(await box.append('result', env(10, 50))).toEqual({ ok: true, seq: 6, dropped: [1, 2, 3] });
    expect(box.size).toEqual({ entries: 3, bytes: 90 });
    expect(await box.append('heartbeat', env(11, 101))).toEqual({ ok: false, reason: 'too_large' });
  });

  it('survives a restart: same entries, sequences keep growing even after the queue emptied', async () => {
    let box = await AgentOutbox.open(dir);
    await box.append('heartbeat', env(1));
    await box.append('result', env(2));
    box = await AgentOutbox.open(dir);
    expect(await kinds(box)).toEqual(['1:heartbeat', '2:result']);
    await box.ack(2);
    box = await AgentOutbox.open(dir);
    expect(await box.peek(10)).toEqual([]);
    expect(await box.append('heartbeat', env(3))).toMatchObject({ ok: true, seq: 3 });
    expect(await box.ack(1)).toBe(0); // a stale ack neither removes nor lowers anything
    box = await AgentOutbox.open(dir);
    expect(await kinds(box)).toEqual(['3:heartbeat']);
  });

  it('ignores and removes a torn temp file left by a crash', async () => {
    let box = await AgentOutbox.open(dir);
    await box.append('result', env(1));
    const torn = join(dir, 'outbox', '.0000000000000002.heartbeat.a1b2c3d4e5f6.tmp');
    await writeFile(torn, '{"payloadTy');
    box = await AgentOutbox.open(dir);
    expect(await readdir(join(dir, 'outbox'))).not.toContain('.0000000000000002.heartbeat.a1b2c3d4e5f6.tmp');
    expect(await kinds(box)).toEqual(['1:result']);
    expect(await box.append('heartbeat', env(2))).toMatchObject({ ok: true, seq: 2 });
  });

  it('keeps every acknowledged append when its process is killed with SIGKILL mid-stream', async () => {
    // A child appends in a loop and prints each seq once append resolved; we kill it mid-way.
    const url = await compiled([
      'agent/outbox.ts',
      'platform/fsx.ts',
      'platform/errors.ts',
      'core/errors.ts',
    ]);
    const script = `
      const { AgentOutbox } = await import(${JSON.stringify(url)});
      const box = await AgentOutbox.open(${JSON.stringify(join(dir, 'state'))});
      for (let i = 0; ; i++) {
        const r = await box.append(i % 3 ? 'heartbeat' : 'result', Buffer.alloc(4096, i % 256));
        process.stdout.write(r.seq + '\\n');
      }`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
      if (out.split('\n').length > 40) child.kill('SIGKILL');
    });
    await once(child, 'exit');
    const acked = out.split('\n').filter(Boolean).map(Number);
    expect(acked.length).toBeGreaterThan(30);
    const box = await AgentOutbox.open(join(dir, 'state'));
    const seqs = (await box.peek(100_000)).map((e) => e.seq);
    for (const s of acked) expect(seqs).toContain(s);
    expect((await readdir(join(dir, 'state', 'outbox'))).filter((n) => n.endsWith('.tmp'))).toEqual([]);
    for (const e of await box.peek(100_000)) expect(e.bytes.length).toBe(4096);
  });
});
