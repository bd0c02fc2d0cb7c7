/**
 * The audit log is append-only and hash-chained: `ferry server audit verify` passes an intact log and
 * names the first entry that does not hold when one was edited (even with its own hash recomputed),
 * deleted, reordered or cut off the end. Actions done through the CLI land in it with their actor.
 */
import { copyFile, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuditLog, entryHash, type AuditEntry } from '../server/audit.js';
import { ferry, snapshotDir, tempDir } from './helpers/fixtures.js';
import { makeMirror } from './helpers/server-fixtures.js';

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('ferry-server-audit-'));
});
afterAll(() => cleanup());

async function fiveEntries(name: string): Promise<string> {
  const data = join(dir, name);
  const log = new AuditLog(data);
  await log.append('admin', 'login', { ip: '127.0.0.1' });
  await log.append('admin', 'release.registered', { release: 'agent@1.0.0' });
  await log.append('admin', 'pin', { site: 'plant-7', target: 'group:scada', version: '1.0.0' });
  await log.append('cli:ops', 'bundle.built', { bundle: 'plant-7-1', sequence: 1 });
  await log.append('admin', 'logout', {});
  return data;
}

const logPath = (data: string) => join(data, 'audit/log.jsonl');
const readLines = async (data: string) => (await readFile(logPath(data), 'utf8')).trimEnd().split('\n');
const writeLines = (data: string, lines: string[]) => writeFile(logPath(data), lines.join('\n') + '\n');

async function verify(data: string) {
  const r = await ferry(['server', 'audit', 'verify', '--data', data, '--json']);
  return {
    code: r.code,
    out: JSON.parse(r.stdout) as {
      ok: boolean;
      entries: number;
      bad?: { line: number; seq: number | null; reason: string };
    },
  };
}

describe('ferry server audit verify', () => {
  it('passes an intact chain and changes nothing', async () => {
    const data = await fiveEntries('intact');
    const before = await snapshotDir(data);
    expect(await verify(data)).toEqual({ code: 0, out: { ok: true, entries: 5 } });
    const text = await ferry(['server', 'audit', 'verify', '--data', data]);
    expect(text.stdout).toMatch(/audit log ok: 5 entries/);
    expect(await snapshotDir(data)).toEqual(before);
  });

  it('names an edited entry', async () => {
    const data = await fiveEntries('edited');
    const lines = await readLines(data);
    lines[2] = lines[2]!.replace('"version":"1.0.0"', '"version":"6.6.6"');
    await writeLines(data, lines);
    const r = await verify(data);
    expect(r.code).toBe(1);
    expect(r.out.bad).toMatchObject({ line: 3, seq: 3, reason: expect.stringMatching(/edited/) as string });
  });

  it('names the entry after one edited with its own hash recomputed (the chain breaks there)', async () => {
    const data = await fiveEntries('rehashed');
    const lines = await readLines(data);
    const e = JSON.parse(lines[1]!) as AuditEntry;
    e.actor = 'someone-else';
    const rest: Omit<AuditEntry, 'hash'> & { hash?: string } = { ...e };
    delete rest.hash;
    lines[1] = JSON.stringify({ ...rest, hash: entryHash(rest) });
    await writeLines(data, lines);
    const r = await verify(data);
    expect(r.code).toBe(1);
    expect(r.out.bad).toMatchObject({ line: 3, seq: 3, reason: expect.stringMatching(/prev/) as string });
  });

  it('names the place of a deleted entry', async () => {
    const data = await fiveEntries('deleted');
    const lines = await readLines(data);
    lines.splice(1, 1);
    await writeLines(data, lines);
    const r = await verify(data);
    expect(r.code).toBe(1);
    expect(r.out.bad).toMatchObject({
      line: 2,
      seq: 3,
      reason: expect.stringMatching(/missing or moved/) as string,
    });
  });

  it('names the first of two reordered entries', async () => {
    const data = await fiveEntries('reordered');
    const lines = await readLines(data);
    [lines[2], lines[3]] = [lines[3]!, lines[2]!];
    await writeLines(data, lines);
    const r = await verify(data);
    expect(r.code).toBe(1);
    expect(r.out.bad).toMatchObject({ line: 3, seq: 4 });
    const text = await ferry(['server', 'audit', 'verify', '--data', data]);
    expect(text.stderr).toMatch(/^ferry: AUDIT_BROKEN: line 3 \(seq 4\)/);
  });

  it('notices entries cut off the end (the head remembers the last one)', async () => {
    const data = await fiveEntries('truncated');
    const lines = await readLines(data);
    await writeLines(data, lines.slice(0, 3));
    const r = await verify(data);
    expect(r.code).toBe(1);
    expect(r.out.bad).toMatchObject({ line: 4, seq: 4, reason: expect.stringMatching(/removed/) as string });
  });

  it('keeps a chain across a line torn by a crash mid-append', async () => {
    const data = await fiveEntries('torn');
    await copyFile(logPath(data), `${logPath(data)}.orig`);
    await writeFile(logPath(data), (await readFile(logPath(data), 'utf8')) + '{"seq":6,"at":"2026');
    await new AuditLog(data).append('admin', 'login', {});
    expect(await verify(data)).toEqual({ code: 0, out: { ok: true, entries: 6 } });
  });

  it('records what the CLI does, with the operating-system user as actor', async () => {
    const data = join(dir, 'cli');
    const m = await makeMirror(dir, 'm1', 'plant-7');
    expect(
      (await ferry(['server', 'register-mirror', '--data', data, '--site', 'plant-7', '--pub', m.pubPath]))
        .code,
    ).toBe(0);
    expect(
      (await ferry(['server', 'user', 'add', '--data', data, '--name', 'vera', '--role', 'viewer'])).code,
    ).toBe(0);
    const lines = (await readLines(data)).map((l) => JSON.parse(l) as AuditEntry);
    expect(lines.map((e) => e.action)).toEqual(['mirror.registered', 'site.registered', 'user.created']);
    for (const e of lines) expect(e.actor).toMatch(/^cli:/);
    expect(lines[0]!.detail).toMatchObject({ mirror: m.id, site: 'plant-7' });
    expect((await verify(data)).code).toBe(0);
  });
});
