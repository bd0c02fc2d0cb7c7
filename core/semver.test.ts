import { describe, expect, it } from 'vitest';
import { compareSemver, isSemver, parseSemver } from './semver.js';

describe('semver', () => {
  it('parses the parts, numeric prerelease identifiers as numbers', () => {
    expect(parseSemver('1.22.333-rc.11.x-y+build.007')).toEqual({
      major: 1,
      minor: 22,
      patch: 333,
      prerelease: ['rc', 11, 'x-y'],
      build: ['build', '007'],
    });
    expect(parseSemver('0.0.0')).toEqual({ major: 0, minor: 0, patch: 0, prerelease: [], build: [] });
  });

  it.each([
    '1.0.0',
    '0.0.1',
    '10.20.30',
    '1.0.0-alpha',
    '1.0.0-0.3.7',
    '1.0.0-x.7.z.92',
    '1.0.0-x-y-z.--',
    '1.0.0-0a',
    '1.0.0-alpha+001',
    '1.0.0+20130313144700',
    '1.0.0-beta+exp.sha.5114f85',
    '1.0.0+21AF26D3----117B344092BD',
  ])('accepts %s', (v) => {
    expect(isSemver(v)).toBe(true);
  });

  it.each([
    ['', 'empty'],
    ['1', 'no minor'],
    ['1.2', 'no patch'],
    ['1.2.3.4', 'four parts'],
    ['01.2.3', 'leading zero major'],
    ['1.02.3', 'leading zero minor'],
    ['1.2.03', 'leading zero patch'],
    ['1.2.3-01', 'leading zero numeric prerelease'],
    ['1.2.3-', 'empty prerelease'],
    ['1.2.3-a..b', 'empty prerelease identifier'],
    ['1.2.3+', 'empty build'],
    ['1.2.3+a..b', 'empty build identifier'],
    ['v1.2.3', 'v prefix'],
    [' 1.2.3', 'leading space'],
    ['1.2.3-a_b', 'underscore'],
    ['1.2.3\n', 'trailing newline'],
    ['9007199254740993.0.0', 'unsafe integer'],
    ['1.0.0-9007199254740993', 'unsafe integer prerelease'],
  ])('rejects %j (%s)', (v) => {
    expect(isSemver(v)).toBe(false);
    expect(parseSemver(v)).toBeUndefined();
  });

  it('rejects non-strings', () => {
    expect(isSemver(1)).toBe(false);
    expect(isSemver(null)).toBe(false);
    expect(isSemver(undefined)).toBe(false);
  });

  it('orders the spec precedence example chain, every pair both ways', () => {
    const chain = [
      '1.0.0-alpha',
      '1.0.0-alpha.1',
      '1.0.0-alpha.beta',
      '1.0.0-beta',
      '1.0.0-beta.2',
      '1.0.0-beta.11',
      '1.0.0-rc.1',
      '1.0.0',
      '2.0.0',
      '2.1.0',
      '2.1.1',
    ];
    for (const [i, a] of chain.entries()) {
      for (const [j, b] of chain.entries()) {
        expect(compareSemver(a, b), `${a} vs ${b}`).toBe(Math.sign(i - j));
      }
    }
    expect([...chain].reverse().sort(compareSemver)).toEqual(chain);
  });

  it.each([
    ['1.10.0', '1.9.0'],
    ['1.0.10', '1.0.9'],
    ['10.0.0', '9.0.0'],
    ['1.0.0-beta.11', '1.0.0-beta.2'],
    ['1.0.0', '1.0.0-rc.1'],
    ['1.0.0-alpha', '1.0.0-999'],
    ['1.0.0-a', '1.0.0-B'],
  ])('%s > %s, where string comparison may say otherwise', (hi, lo) => {
    expect(compareSemver(hi, lo)).toBe(1);
    expect(compareSemver(lo, hi)).toBe(-1);
  });

  it('ignores build metadata for precedence', () => {
    expect(compareSemver('1.0.0+a', '1.0.0+b')).toBe(0);
    expect(compareSemver('1.0.0-rc.1+x', '1.0.0-rc.1')).toBe(0);
    expect(compareSemver('1.0.0+zzz', '1.0.1+aaa')).toBe(-1);
  });

  it('throws on something that is not semver instead of guessing', () => {
    expect(() => compareSemver('1.0', '1.0.0')).toThrow(TypeError);
    expect(() => compareSemver('1.0.0', 'latest')).toThrow(TypeError);
  });
});
