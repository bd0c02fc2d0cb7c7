/**
 * One error contract: every error that can reach a user or the wire is a
 * CodedError with a stable code, the CLI prints that code whatever component
 * raised it, and the HTTP codes come from one list.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FileError } from '../agent/files.js';
import { ScriptError } from '../agent/scripts.js';
import { Refusal } from '../agent/sync.js';
import { CodedError, FerryError } from '../core/errors.js';
import { PolicyError } from '../core/policy.js';
import { TelemetryError } from '../core/telemetry.js';
import { WIRE_CODES, isWireCode } from '../core/wire-codes.js';
import { MirrorError } from '../mirror/errors.js';
import { HttpError as MirrorHttpError } from '../mirror/http/errors.js';
import { PlatformError } from '../platform/errors.js';
import { HttpError } from '../platform/http/server-errors.js';
import { ServerError } from '../server/errors.js';
import { ferry, snapshotDir, writeSpec } from './helpers/fixtures.js';
import { useWorld } from './helpers/world.js';

const w = useWorld();

describe('every coded error extends CodedError', () => {
  const cases: [string, CodedError, string][] = [
    ['FerryError', new FerryError('SPEC_INVALID', 'm'), 'SPEC_INVALID'],
    ['PolicyError', new PolicyError('POLICY_INVALID', 'm'), 'POLICY_INVALID'],
    ['ScriptError', new ScriptError('INTERPRETER_NOT_ALLOWED', 'm'), 'INTERPRETER_NOT_ALLOWED'],
    ['FileError', new FileError('FILE_PATH_REFUSED', 'm'), 'FILE_PATH_REFUSED'],
    ['Refusal', new Refusal('SEQUENCE_ROLLBACK', 'm'), 'SEQUENCE_ROLLBACK'],
    ['HttpError', new HttpError(400, 'BAD_ENROLMENT', 'm'), 'BAD_ENROLMENT'],
    ['MirrorError', new MirrorError('STORE_MISMATCH', 'm'), 'STORE_MISMATCH'],
    ['ServerError', new ServerError('UNKNOWN_MIRROR', 'm'), 'UNKNOWN_MIRROR'],
    ['PlatformError', new PlatformError('STORE_LOCKED', 'm'), 'STORE_LOCKED'],
    ['TelemetryError', new TelemetryError('LOOP', 'm'), 'LOOP'],
  ];
  it.each(cases)('%s carries its code and its own name', (name, e, code) => {
    expect(e).toBeInstanceOf(CodedError);
    expect(e).toBeInstanceOf(Error);
    expect(e.code).toBe(code);
    expect(e.name).toBe(name);
    expect(e.message).toBe('m');
  });

  it('the mirror and the server throw the one HttpError of the server kit', () => {
    expect(MirrorHttpError).toBe(HttpError);
    const e = new HttpError(416, 'RANGE_NOT_SATISFIABLE', 'blob is 3 bytes', {
      headers: { 'Content-Range': 'bytes */3' },
    });
    expect(e).toMatchObject({ status: 416, headers: { 'Content-Range': 'bytes */3' } });
  });
});

describe('wire codes', () => {
  it('are one list of distinct UPPER_SNAKE codes, with enrolment spelt one way', () => {
    expect(new Set(WIRE_CODES).size).toBe(WIRE_CODES.length);
    for (const c of WIRE_CODES) expect(c).toMatch(/^[A-Z][A-Z0-9_]*$/);
    expect(isWireCode('BAD_ENROLMENT')).toBe(true);
    expect(isWireCode('BAD_ENROLLMENT')).toBe(false);
    expect(WIRE_CODES.filter((c) => c.includes('ENROLL'))).toEqual([]);
  });
});

describe('the CLI prints any component’s code', () => {
  it('ferry bundle create with a policy the agents would refuse: POLICY_INVALID, exit 1, nothing written', async () => {
    const dir = join(w.dir, 'bad-policy');
    await mkdir(dir, { recursive: true });
    const spec = await writeSpec(dir, {}, [
      {
        name: 'baseline',
        kind: 'policy',
        // groups must be a list of group names
        content: JSON.stringify({
          type: 'ferry.policy/v1',
          scripts: [{ script: 'x', groups: '*', schedule: 'once' }],
        }),
      },
    ]);
    const outDir = join(dir, 'out');
    await mkdir(outDir);
    await writeFile(join(outDir, 'keep'), 'untouched');
    const before = await snapshotDir(dir);
    const args = ['bundle', 'create', '--spec', spec, '--key', join(w.keyDir, 'release.key')];

    const human = await ferry([...args, '--out', join(outDir, 'b.ferry')]);
    expect(human.code).toBe(1);
    expect(human.stderr).toMatch(/^ferry: POLICY_INVALID: policy baseline .*groups/m);

    const json = await ferry([...args, '--out', join(outDir, 'b.ferry'), '--json']);
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stdout)).toMatchObject({ ok: false, code: 'POLICY_INVALID' });

    expect(await snapshotDir(dir)).toEqual(before);
  });
});
