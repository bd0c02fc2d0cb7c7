/**
 * Policy validation (every refusal names the field) and the pure schedule
 * decision, as a table of cases including clock jumps.
 */
import { describe, expect, it } from 'vitest';
import { MAX_POLICY_BYTES, PolicyError, decodePolicy, parseSchedule, type Policy } from '../core/policy.js';
import { dueScripts, nextDueAt, type RunHistory } from '../agent/schedule.js';

const enc = (v: unknown) => Buffer.from(JSON.stringify(v));

const good = {
  type: 'ferry.policy/v1',
  scripts: [
    { script: 'rotate-logs', groups: ['*'], schedule: 'every 15m', args: ['--keep', '7'], timeoutSec: 60 },
    { script: 'harden-ssh', groups: ['web'], schedule: 'once' },
  ],
  files: [{ path: '/etc/acme/app.conf', artifact: 'app-conf', mode: '0644', enforce: true }],
  agent: { pollIntervalSec: 30 },
};

function refusal(v: unknown): PolicyError {
  try {
    decodePolicy(enc(v));
  } catch (e) {
    expect(e).toBeInstanceOf(PolicyError);
    return e as PolicyError;
  }
  throw new Error('expected a refusal');
}

const withScript = (patch: Record<string, unknown>) => ({
  ...good,
  scripts: [{ script: 's', groups: ['*'], schedule: 'once', ...patch }],
});
const withFile = (patch: Record<string, unknown>) => ({
  ...good,
  files: [{ path: '/etc/x.conf', artifact: 'x', mode: '0644', enforce: true, ...patch }],
});

describe('decodePolicy', () => {
  it('accepts the DESIGN example and fills defaults', () => {
    const p = decodePolicy(enc(good));
    expect(p.scripts[1]).toEqual({
      script: 'harden-ssh',
      groups: ['web'],
      schedule: 'once',
      args: [],
      timeoutSec: 300,
    });
    expect(p.scripts[0]!.timeoutSec).toBe(60);
    expect(p.files[0]!.enforce).toBe(true);
    expect(p.agent).toEqual({ pollIntervalSec: 30 });
    expect(decodePolicy(enc({ type: 'ferry.policy/v1' }))).toEqual({
      type: 'ferry.policy/v1',
      scripts: [],
      files: [],
    });
  });

  it('parses schedules', () => {
    expect(parseSchedule('once')).toEqual({ kind: 'once' });
    expect(parseSchedule('boot')).toEqual({ kind: 'boot' });
    expect(parseSchedule('every 10s')).toEqual({ kind: 'every', intervalMs: 10_000 });
    expect(parseSchedule('every 2d')).toEqual({ kind: 'every', intervalMs: 172_800_000 });
    for (const s of ['every 9s', 'every 0m', 'every 1w', 'every  5m', 'every 5', 'hourly', 'every 05m', 5])
      expect(parseSchedule(s)).toBeUndefined();
  });

  const cases: Array<[string, unknown, string]> = [
    ['not an object', [], 'document'],
    ['wrong type', { ...good, type: 'ferry.policy/v2' }, 'type'],
    ['unknown top-level field', { ...good, extra: 1 }, 'extra'],
    ['scripts not an array', { ...good, scripts: {} }, 'scripts'],
    ['unknown script field', withScript({ interpreter: 'python3' }), 'scripts[0].interpreter'],
    ['bad script name', withScript({ script: '../x' }), 'scripts[0].script'],
    ['empty groups', withScript({ groups: [] }), 'scripts[0].groups'],
    ['* mixed with names', withScript({ groups: ['*', 'web'] }), 'scripts[0].groups'],
    ['bad group', withScript({ groups: ['a b'] }), 'scripts[0].groups'],
    ['schedule below 10s', withScript({ schedule: 'every 5s' }), 'scripts[0].schedule'],
    ['unknown schedule', withScript({ schedule: 'hourly' }), 'scripts[0].schedule'],
    ['too many args', withScript({ args: Array(65).fill('a') }), 'scripts[0].args'],
    ['long arg', withScript({ args: ['ok', 'x'.repeat(4097)] }), 'scripts[0].args[1]'],
    ['non-string arg', withScript({ args: [1] }), 'scripts[0].args[0]'],
    ['timeout 0', withScript({ timeoutSec: 0 }), 'scripts[0].timeoutSec'],
    ['timeout > 1 day', withScript({ timeoutSec: 86_401 }), 'scripts[0].timeoutSec'],
    ['fractional timeout', withScript({ timeoutSec: 1.5 }), 'scripts[0].timeoutSec'],
    [
      'duplicate script',
      { ...good, scripts: [good.scripts[0], { ...good.scripts[0] }] },
      'scripts[1].script',
    ],
    ['relative path', withFile({ path: 'etc/x' }), 'files[0].path'],
    ['dotdot path', withFile({ path: '/etc/../root/.ssh/authorized_keys' }), 'files[0].path'],
    ['unnormalised path', withFile({ path: '/etc//x' }), 'files[0].path'],
    ['trailing slash', withFile({ path: '/etc/x/' }), 'files[0].path'],
    ['root itself', withFile({ path: '/' }), 'files[0].path'],
    ['under /proc', withFile({ path: '/proc/sys/kernel/x' }), 'files[0].path'],
    ['/sys itself', withFile({ path: '/sys' }), 'files[0].path'],
    ['under /dev', withFile({ path: '/dev/sda' }), 'files[0].path'],
    ['NUL in path', withFile({ path: '/etc/a\0b' }), 'files[0].path'],
    ['numeric mode', withFile({ mode: 420 }), 'files[0].mode'],
    ['mode without 0', withFile({ mode: '644' }), 'files[0].mode'],
    ['setuid mode', withFile({ mode: '04755' }), 'files[0].mode'],
    ['bad owner', withFile({ owner: 'root;rm' }), 'files[0].owner'],
    ['bad group', withFile({ group: '' }), 'files[0].group'],
    ['enforce missing', withFile({ enforce: undefined }), 'files[0].enforce'],
    ['enforce as string', withFile({ enforce: 'yes' }), 'files[0].enforce'],
    ['unknown file field', withFile({ follow: true }), 'files[0].follow'],
    ['bad artifact', withFile({ artifact: '' }), 'files[0].artifact'],
    [
      'duplicate path',
      { ...good, files: [good.files[0], { ...good.files[0], artifact: 'other' }] },
      'files[1].path',
    ],
    ['poll too fast', { ...good, agent: { pollIntervalSec: 9 } }, 'agent.pollIntervalSec'],
    ['poll too slow', { ...good, agent: { pollIntervalSec: 86_401 } }, 'agent.pollIntervalSec'],
    ['unknown agent field', { ...good, agent: { pollIntervalSec: 30, debug: true } }, 'agent.debug'],
    ['__proto__ key', JSON.parse('{"type":"ferry.policy/v1","__proto__":{"x":1}}'), '__proto__'],
  ];
  it.each(cases)('refuses %s, naming the field', (_name, doc, field) => {
    const e = refusal(doc);
    expect(e.code).toBe('POLICY_INVALID');
    expect(e.message.startsWith(`policy: ${field} `)).toBe(true);
  });

  it('refuses invalid UTF-8, non-JSON and documents over 1 MiB', () => {
    for (const body of [Buffer.from([0x7b, 0xff, 0x7d]), Buffer.from('{"type":')]) {
      expect(() => decodePolicy(body)).toThrow(expect.objectContaining({ code: 'POLICY_INVALID' }));
    }
    const big = Buffer.alloc(MAX_POLICY_BYTES + 1, 0x20);
    expect(() => decodePolicy(big)).toThrow(expect.objectContaining({ code: 'POLICY_TOO_LARGE' }));
  });
});

describe('dueScripts', () => {
  const MIN = 60_000;
  const T = Date.UTC(2026, 10, 22, 10, 0, 0);
  const A = 'a'.repeat(64);
  const B = 'b'.repeat(64);
  const policy: Pick<Policy, 'scripts'> = decodePolicy(
    enc({
      type: 'ferry.policy/v1',
      scripts: [
        { script: 'every15', groups: ['*'], schedule: 'every 15m' },
        { script: 'once', groups: ['web'], schedule: 'once' },
        { script: 'boot', groups: ['*'], schedule: 'boot' },
      ],
    }),
  );
  const digests = new Map([
    ['every15', A],
    ['once', A],
    ['boot', A],
  ]);
  const ran = (at: number, digest = A): RunHistory[string] => ({ digest, lastRunAt: at, lastExit: 0 });

  const table: Array<[string, string[], Map<string, string>, RunHistory, number, Record<string, string>]> = [
    [
      'first run of everything that applies',
      ['web'],
      digests,
      {},
      T,
      { every15: 'first-run', once: 'first-run', boot: 'first-run' },
    ],
    [
      'groups filter: once is for web only',
      ['db'],
      digests,
      {},
      T,
      { every15: 'first-run', boot: 'first-run' },
    ],
    [
      'nothing due right after running',
      ['web'],
      digests,
      { every15: ran(T), once: ran(T), boot: ran(T) },
      T + MIN,
      {},
    ],
    [
      'every: due exactly at lastRunAt + interval',
      ['web'],
      digests,
      { every15: ran(T) },
      T + 15 * MIN,
      {
        once: 'first-run',
        boot: 'first-run',
        every15: 'interval',
      },
    ],
    ['every: not due 1 ms before', ['db'], digests, { every15: ran(T), boot: ran(T) }, T + 15 * MIN - 1, {}],
    [
      'every: schedule kept across a restart / long disconnection (one run, no catch-up)',
      ['db'],
      digests,
      { every15: ran(T), boot: ran(T) },
      T + 3 * 86_400_000,
      { every15: 'interval' },
    ],
    [
      'every: digest change does not reset the schedule',
      ['db'],
      new Map([...digests, ['every15', B]]),
      { every15: ran(T, A), boot: ran(T) },
      T + 5 * MIN,
      {},
    ],
    [
      'every: small backward clock jump waits',
      ['db'],
      digests,
      { every15: ran(T), boot: ran(T) },
      T - 10 * MIN,
      {},
    ],
    [
      'every: backward clock jump larger than the interval runs once',
      ['db'],
      digests,
      { every15: ran(T), boot: ran(T) },
      T - 365 * 86_400_000,
      { every15: 'interval' },
    ],
    [
      'once: never again with the same digest, even years later or after a clock jump back',
      ['web'],
      digests,
      { every15: ran(T + 10 * 365 * 86_400_000), once: ran(T), boot: ran(T) },
      T + 10 * 365 * 86_400_000,
      {},
    ],
    [
      'once/boot: digest changed',
      ['web'],
      new Map([...digests, ['once', B], ['boot', B]]),
      { every15: ran(T), once: ran(T, A), boot: ran(T, A) },
      T + MIN,
      { once: 'digest-changed', boot: 'digest-changed' },
    ],
    [
      'once: a failed run is not retried',
      ['web'],
      digests,
      { every15: ran(T), once: { digest: A, lastRunAt: T, lastExit: 1 }, boot: ran(T) },
      T + MIN,
      {},
    ],
    [
      'unknown digest (artifact not in manifest) is never due',
      ['web'],
      new Map([['boot', A]]),
      { boot: ran(T) },
      T,
      {},
    ],
  ];

  it.each(table)('%s', (_name, groups, dg, history, now, want) => {
    const got = dueScripts(policy, groups, dg, history, now);
    expect(Object.fromEntries(got.map((d) => [d.script, d.reason]))).toEqual(want);
  });

  it('boot scripts run once per agent start', () => {
    const history = { every15: ran(T), boot: ran(T) };
    expect(dueScripts(policy, ['db'], digests, history, T + MIN, { bootAt: T + 30_000 })).toEqual([
      { script: 'boot', reason: 'boot' },
    ]);
    const after = { ...history, boot: ran(T + 40_000) };
    expect(dueScripts(policy, ['db'], digests, after, T + MIN, { bootAt: T + 30_000 })).toEqual([]);
  });

  it('does not treat inherited object keys as history', () => {
    const p = decodePolicy(
      enc({ type: 'ferry.policy/v1', scripts: [{ script: 'constructor', groups: ['*'], schedule: 'once' }] }),
    );
    expect(dueScripts(p, [], new Map([['constructor', A]]), {}, T)).toEqual([
      { script: 'constructor', reason: 'first-run' },
    ]);
  });

  it('nextDueAt tells the driver when to wake', () => {
    expect(nextDueAt(policy, ['db'], digests, { every15: ran(T) }, T + MIN)).toBe(T + 15 * MIN);
    expect(nextDueAt(policy, ['db'], digests, {}, T)).toBe(T);
    expect(nextDueAt(policy, ['db'], digests, { every15: ran(T) }, T + 20 * MIN)).toBe(T + 20 * MIN);
    expect(nextDueAt(policy, ['db'], new Map(), {}, T)).toBeUndefined();
  });
});
