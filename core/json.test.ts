import { describe, expect, it } from 'vitest';
import { JsonError, parseJsonStrict } from './json.js';

/** Valid RFC 8259 texts: the strict parser must read each exactly as JSON.parse does. */
const VALID: [string, string][] = [
  ['empty object', '{}'],
  ['empty array', '[]'],
  ['scalars at top level', '"x"'],
  ['true', 'true'],
  ['false', ' false '],
  ['null', '\n\tnull\r\n'],
  ['integers', '[0, -0, 1, -1, 42, 9007199254740991, -9007199254740991]'],
  ['fractions and exponents', '[0.5, -0.25, 1e3, 1E3, 1e+3, 1e-3, 1.5e10, -2.5E-7, 0e0]'],
  ['big but finite', '[1.7976931348623157e308, 5e-324, 123456789012345678901234567890]'],
  ['simple escapes', '"\\" \\\\ \\/ \\b \\f \\n \\r \\t"'],
  ['unicode escapes', '"\\u0041\\u00e9\\u4e2d\\u0000\\uFFFF"'],
  ['escaped surrogate pair', '"\\ud83d\\ude00 and \\uD834\\uDD1E"'],
  ['raw non-ASCII', '"héllo 中文 😀"'],
  ['DEL and high bytes are not control characters', '"\u007f\u0080\u00ff"'],
  ['nested', '{"a":[1,{"b":{"c":[true,false,null]}}],"d":"e"}'],
  ['same key in sibling objects', '[{"a":1},{"a":2}]'],
  ['same key at different depths', '{"a":{"a":{"a":1}}}'],
  ['keys differing only by escape spelling are equal only when decoded equal', '{"a":1,"b":2}'],
  ['whitespace everywhere', ' { "a" : [ 1 , 2 ] , "b" : { } } '],
  ['empty key', '{"":1}'],
];

/** Texts the strict parser refuses, with what the message must say. */
const INVALID: [string, string, RegExp][] = [
  ['empty input', '', /end of input/],
  ['whitespace only', '  \n', /end of input/],
  ['duplicate key', '{"payload":"a","payload":"b"}', /duplicate key "payload"/],
  ['duplicate key, nested', '{"x":[{"k":1,"k":1}]}', /duplicate key "k"/],
  ['duplicate key spelled with an escape', '{"payload":1,"p\\u0061yload":2}', /duplicate key "payload"/],
  ['duplicate __proto__', '{"__proto__":1,"__proto__":2}', /duplicate key "__proto__"/],
  ['trailing comma in array', '[1,2,]', /unexpected "]"/],
  ['trailing comma in object', '{"a":1,}', /expected a string key/],
  ['line comment', '{"a":1 // no\n}', /expected ',' or '}'/],
  ['block comment', '/* c */ {}', /unexpected "\/"/],
  ['NaN', '[NaN]', /unexpected "N"/],
  ['Infinity', '[Infinity]', /unexpected "I"/],
  ['-Infinity', '[-Infinity]', /malformed number/],
  ['overflowing number', '[1e400]', /number out of range/],
  ['leading zero', '[01]', /expected ',' or ']'/],
  ['leading plus', '[+1]', /unexpected "\+"/],
  ['bare fraction', '[.5]', /unexpected "\."/],
  ['dangling dot', '[1.]', /expected ',' or ']'/],
  ['dangling exponent', '[1e]', /expected ',' or ']'/],
  ['hex number', '[0x10]', /expected ',' or ']'/],
  ['single quotes', "{'a':1}", /expected a string key/],
  ['unquoted key', '{a:1}', /expected a string key/],
  ['raw tab in string', '"a\tb"', /control character/],
  ['raw newline in string', '"a\nb"', /control character/],
  ['raw NUL in string', '"a\u0000b"', /control character/],
  ['invalid escape', '"\\x41"', /invalid escape/],
  ['short unicode escape', '"\\u12"', /malformed \\u escape/],
  ['non-hex unicode escape', '"\\u12G4"', /malformed \\u escape/],
  ['escaped lone high surrogate', '"\\ud83d"', /lone surrogate/],
  ['escaped lone low surrogate', '"\\ude00x"', /lone surrogate/],
  ['escaped surrogates in the wrong order', '"\\ude00\\ud83d"', /lone surrogate/],
  ['raw lone surrogate (text input)', '"\ud83d"', /lone surrogate/],
  ['byte order mark (text input)', '\ufeff{}', /unexpected "\ufeff"/],
  ['unterminated string', '"abc', /unterminated string/],
  ['unterminated array', '[1,2', /expected ',' or ']'/],
  ['unterminated object', '{"a":1', /expected ',' or '}'/],
  ['missing colon', '{"a" 1}', /expected ':'/],
  ['two top-level values', '{} {}', /after the JSON value/],
  ['garbage after value', 'true false', /after the JSON value/],
  ['capitalised literal', 'True', /unexpected "T"/],
  ['truncated literal', 'nul', /unexpected "nul"/],
  ['undefined', '[undefined]', /unexpected "u"/],
];

const refuses = (input: string | Uint8Array, why: RegExp, limits = {}) =>
  expect(() => parseJsonStrict(input, limits)).toThrowError(
    expect.objectContaining({ code: 'JSON_INVALID', message: expect.stringMatching(why) as string }) as Error,
  );

describe('parseJsonStrict', () => {
  it.each(VALID)('reads %s as JSON.parse does', (_name, text) => {
    expect(parseJsonStrict(text)).toEqual(JSON.parse(text));
    expect(parseJsonStrict(Buffer.from(text, 'utf8'))).toEqual(JSON.parse(text));
  });

  it('keeps -0, big integers and escaped NUL exactly', () => {
    expect(Object.is((parseJsonStrict('[-0]') as number[])[0], -0)).toBe(true);
    expect(parseJsonStrict('"\\u0000"')).toBe('\0');
    expect(parseJsonStrict('"\\ud83d\\ude00"')).toBe('😀');
  });

  it.each(INVALID)('refuses %s', (name, text, why) => {
    refuses(text, why);
    // Buffer.from would turn a raw lone surrogate into U+FFFD: those rows are about text input only
    if (!name.includes('(text input)')) refuses(Buffer.from(text, 'utf8'), why);
  });

  it('refuses a byte order mark and invalid UTF-8 in byte input', () => {
    refuses(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{}')]), /unexpected "\ufeff"/);
    refuses(Buffer.from([0x22, 0xff, 0x22]), /not valid UTF-8/);
    refuses(Buffer.from([0x22, 0xc0, 0xaf, 0x22]), /not valid UTF-8/); // overlong "/"
    refuses(Buffer.from([0x22, 0xed, 0xa0, 0xbd, 0x22]), /not valid UTF-8/); // a surrogate encoded in UTF-8
  });

  it('caps nesting depth before building the deep value', () => {
    expect(parseJsonStrict('[[[1]]]', { maxDepth: 3 })).toEqual([[[1]]]);
    refuses('[[[[1]]]]', /nesting deeper than 3/, { maxDepth: 3 });
    refuses('{"a":{"b":{"c":{}}}}', /nesting deeper than 3/, { maxDepth: 3 });
    // a million levels: refused at the cap, not after allocating a million arrays
    const deep = '['.repeat(1_000_000) + ']'.repeat(1_000_000);
    refuses(deep, /nesting deeper than 32 at position 32/);
  });

  it('caps the input size before decoding it', () => {
    const text = JSON.stringify({ pad: 'x'.repeat(100) });
    expect(parseJsonStrict(text, { maxBytes: text.length })).toEqual({ pad: 'x'.repeat(100) });
    for (const input of [text, Buffer.from(text)]) {
      expect(() => parseJsonStrict(input, { maxBytes: text.length - 1 })).toThrowError(
        expect.objectContaining({ code: 'JSON_TOO_LARGE' }) as Error,
      );
    }
    // multi-byte characters count as their UTF-8 bytes
    expect(() => parseJsonStrict('"' + 'é'.repeat(10) + '"', { maxBytes: 21 })).toThrowError(JsonError);
    expect(parseJsonStrict('"' + 'é'.repeat(10) + '"', { maxBytes: 22 })).toBe('é'.repeat(10));
  });

  it('returns objects without a prototype, so __proto__ and friends are plain keys', () => {
    const v = parseJsonStrict('{"__proto__":{"polluted":true},"constructor":1}') as Record<string, unknown>;
    expect(Object.getPrototypeOf(v)).toBeNull();
    expect(Object.keys(v)).toEqual(['__proto__', 'constructor']);
    expect(v.__proto__).toEqual({ polluted: true });
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    const empty = parseJsonStrict('{}') as Record<string, unknown>;
    expect('toString' in empty).toBe(false);
    expect('hasOwnProperty' in empty).toBe(false);
  });

  it('names where the problem is', () => {
    try {
      parseJsonStrict('{"a":1,"a":2}');
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(JsonError);
      expect((e as JsonError).offset).toBe(7);
      expect((e as JsonError).message).toBe('duplicate key "a" at position 7');
    }
  });
});
