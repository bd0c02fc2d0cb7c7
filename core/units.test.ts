import { describe, expect, it } from 'vitest';
import { humanBytes, humanSeconds } from './units.js';

describe('units', () => {
  it('says durations in the largest unit that reads well', () => {
    expect([0, 45, 89, 90, 3599, 5399, 5400, 47 * 3600, 48 * 3600, 30 * 86400].map(humanSeconds)).toEqual([
      '0 s',
      '45 s',
      '89 s',
      '2 min',
      '60 min',
      '90 min',
      '2 h',
      '47 h',
      '2 d',
      '30 d',
    ]);
    expect(humanSeconds(-5)).toBe('0 s'); // a clock step backwards
  });

  it('says sizes in binary units', () => {
    expect([0, 1023, 1024, 1536, 5 * 1024 ** 3].map(humanBytes)).toEqual([
      '0 B',
      '1023 B',
      '1.0 KiB',
      '1.5 KiB',
      '5.0 GiB',
    ]);
  });
});
