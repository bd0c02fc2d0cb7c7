/**
 * Strict JSON (RFC 8259) for everything that is signed or carries a signature.
 *
 * `JSON.parse` keeps the last of two equal keys, so `{"payload":A,"payload":B}`
 * means B to ferry and may mean A to another reader of the same bytes. This
 * parser gives every byte string at most one meaning, or refuses it:
 *
 * - the RFC 8259 grammar and nothing else: no comments, trailing commas,
 *   NaN/Infinity, single quotes, leading zeros, byte order mark, or raw
 *   control characters in strings;
 * - a key that appears twice in one object, at any depth, is refused;
 * - strings must be well-formed UTF-16 (no lone surrogate, escaped or raw),
 *   byte input must be valid UTF-8;
 * - numbers that overflow a double (`1e400`) are refused;
 * - the input size and the nesting depth are capped before anything deep or
 *   large is built.
 *
 * Objects come back with a null prototype, so `"__proto__"`, `"constructor"`
 * or `"toString"` are ordinary keys: they can neither reach Object.prototype
 * nor be mistaken for a field that is present.
 */
import { CodedError } from './errors.js';

export interface JsonLimits {
  /** Largest input, in UTF-8 bytes. */
  maxBytes: number;
  /** Deepest nesting of arrays and objects (the top-level value is depth 1). */
  maxDepth: number;
}

/** Defaults for a signed document; callers with a smaller format pass smaller limits. */
export const JSON_LIMITS: JsonLimits = { maxBytes: 4 * 1024 * 1024, maxDepth: 32 };

export type JsonErrorCode = 'JSON_INVALID' | 'JSON_TOO_LARGE';

/** Why the input is not strict JSON; `offset` is where (in UTF-16 units of the decoded text). */
export class JsonError extends CodedError<JsonErrorCode> {
  constructor(
    code: JsonErrorCode,
    message: string,
    readonly offset: number,
  ) {
    super(code, message);
  }
}

/** Non-streaming decode() keeps no state between calls; ignoreBOM keeps a BOM so it is refused. */
const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

const WS = /[ \t\n\r]*/y;
/** A run of characters that need no attention: not '"', '\\', nor a control character U+0000-U+001F. */
const PLAIN = new RegExp(`[^"\\\\${String.fromCharCode(0)}-${String.fromCharCode(0x1f)}]*`, 'y');
const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
const HEX4 = /^[0-9A-Fa-f]{4}$/;
const SURROGATE = /[\uD800-\uDFFF]/;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const ESCAPES: Record<string, string> = {
  '"': '"',
  '\\': '\\',
  '/': '/',
  b: '\b',
  f: '\f',
  n: '\n',
  r: '\r',
  t: '\t',
};

/** A short, printable rendering of a key or character for an error message. */
function show(s: string): string {
  const q = JSON.stringify(s.length > 40 ? `${s.slice(0, 40)}…` : s);
  return q;
}

/**
 * Parses `input` (UTF-8 bytes or text) as strict JSON; throws JsonError with the
 * reason and where. Sizes are checked before the bytes are decoded.
 */
export function parseJsonStrict(input: Uint8Array | string, limits: Partial<JsonLimits> = {}): unknown {
  const maxBytes = limits.maxBytes ?? JSON_LIMITS.maxBytes;
  const maxDepth = limits.maxDepth ?? JSON_LIMITS.maxDepth;
  let text: string;
  if (typeof input === 'string') {
    // at most 3 UTF-8 bytes per UTF-16 unit: short strings need no byte count
    if (input.length * 3 > maxBytes && Buffer.byteLength(input, 'utf8') > maxBytes)
      throw new JsonError('JSON_TOO_LARGE', `JSON text is larger than ${maxBytes} bytes`, 0);
    if (SURROGATE.test(input)) {
      const m = LONE_SURROGATE.exec(input);
      if (m) throw new JsonError('JSON_INVALID', `lone surrogate at position ${m.index}`, m.index);
    }
    text = input;
  } else {
    if (input.byteLength > maxBytes)
      throw new JsonError('JSON_TOO_LARGE', `JSON text is larger than ${maxBytes} bytes`, 0);
    try {
      text = UTF8.decode(input);
    } catch {
      throw new JsonError('JSON_INVALID', 'not valid UTF-8', 0);
    }
  }
  return new Parser(text, maxDepth).document();
}

class Parser {
  private i = 0;

  constructor(
    private readonly s: string,
    private readonly maxDepth: number,
  ) {}

  document(): unknown {
    this.ws();
    const v = this.value(1);
    this.ws();
    if (this.i < this.s.length) this.fail(`unexpected ${show(this.s[this.i]!)} after the JSON value`);
    return v;
  }

  private fail(why: string, at = this.i): never {
    throw new JsonError('JSON_INVALID', `${why} at position ${at}`, at);
  }

  private ws(): void {
    if (this.s.charCodeAt(this.i) > 0x20) return; // most calls: no whitespace at all
    WS.lastIndex = this.i;
    WS.test(this.s);
    this.i = WS.lastIndex;
  }

  private value(depth: number): unknown {
    const c = this.s.charCodeAt(this.i);
    switch (c) {
      case 0x7b: // {
        return this.object(depth);
      case 0x5b: // [
        return this.array(depth);
      case 0x22: // "
        return this.string();
      case 0x74: // t
        return this.literal('true', true);
      case 0x66: // f
        return this.literal('false', false);
      case 0x6e: // n
        return this.literal('null', null);
      default:
        if (c === 0x2d || (c >= 0x30 && c <= 0x39)) return this.number();
        if (Number.isNaN(c)) this.fail('unexpected end of input');
        return this.fail(`unexpected ${show(this.s[this.i]!)}`);
    }
  }

  private literal<T>(word: string, v: T): T {
    if (!this.s.startsWith(word, this.i)) this.fail(`unexpected ${show(this.s.slice(this.i, this.i + 5))}`);
    this.i += word.length;
    return v;
  }

  private number(): number {
    NUMBER.lastIndex = this.i;
    const m = NUMBER.exec(this.s);
    if (!m) return this.fail('malformed number');
    const v = Number(m[0]);
    if (!Number.isFinite(v)) this.fail('number out of range');
    this.i += m[0].length;
    return v;
  }

  private string(): string {
    const start = this.i;
    this.i++; // the opening quote
    let out = '';
    let escaped = false;
    for (;;) {
      PLAIN.lastIndex = this.i;
      PLAIN.test(this.s);
      const end = PLAIN.lastIndex;
      if (end > this.i) out += this.s.slice(this.i, end);
      this.i = end;
      const c = this.s.charCodeAt(this.i);
      if (c === 0x22) {
        this.i++;
        break;
      }
      if (Number.isNaN(c)) this.fail('unterminated string', start);
      if (c < 0x20) this.fail('control character in string');
      // a backslash
      escaped = true;
      const e = this.s[this.i + 1];
      if (e === 'u') {
        const hex = this.s.slice(this.i + 2, this.i + 6);
        if (!HEX4.test(hex)) this.fail('malformed \\u escape');
        out += String.fromCharCode(parseInt(hex, 16));
        this.i += 6;
      } else if (e !== undefined && ESCAPES[e] !== undefined) {
        out += ESCAPES[e];
        this.i += 2;
      } else {
        this.fail(`invalid escape ${show(`\\${e ?? ''}`)}`);
      }
    }
    // Escapes can spell lone surrogates; raw text cannot (checked once for the whole input).
    if (escaped && SURROGATE.test(out) && LONE_SURROGATE.test(out))
      this.fail('lone surrogate in string', start);
    return out;
  }

  private enter(depth: number): void {
    if (depth > this.maxDepth) this.fail(`nesting deeper than ${this.maxDepth}`);
  }

  private array(depth: number): unknown[] {
    this.enter(depth);
    this.i++;
    const out: unknown[] = [];
    this.ws();
    if (this.s.charCodeAt(this.i) === 0x5d) {
      this.i++;
      return out;
    }
    for (;;) {
      this.ws();
      out.push(this.value(depth + 1));
      this.ws();
      const c = this.s.charCodeAt(this.i++);
      if (c === 0x5d) return out;
      if (c !== 0x2c) this.fail("expected ',' or ']'", this.i - 1);
    }
  }

  private object(depth: number): Record<string, unknown> {
    this.enter(depth);
    this.i++;
    const out = Object.create(null) as Record<string, unknown>;
    this.ws();
    if (this.s.charCodeAt(this.i) === 0x7d) {
      this.i++;
      return out;
    }
    for (;;) {
      this.ws();
      const at = this.i;
      if (this.s.charCodeAt(this.i) !== 0x22) this.fail('expected a string key');
      const key = this.string();
      if (Object.hasOwn(out, key)) this.fail(`duplicate key ${show(key)}`, at);
      this.ws();
      if (this.s.charCodeAt(this.i) !== 0x3a) this.fail("expected ':'");
      this.i++;
      this.ws();
      out[key] = this.value(depth + 1);
      this.ws();
      const c = this.s.charCodeAt(this.i++);
      if (c === 0x7d) return out;
      if (c !== 0x2c) this.fail("expected ',' or '}'", this.i - 1);
    }
  }
}
