/**
 * Request bodies for the HTTP services: an app-wide ceiling checked before any
 * route runs, and JSON bodies read raw with a per-route cap and parsed
 * strictly (declared type, UTF-8, JSON). No body parser reads ahead of a
 * route: a body is read only by the route that wants it, up to its own cap.
 */
import type { Context, Next } from 'koa';
import { JsonError, parseJsonStrict } from '../../core/json.js';
import { HttpError } from './server-errors.js';

/** Refuses request bodies declared above `limit` bytes before anything reads them. */
export function bodyLimit(limit: number) {
  return async function limitBody(ctx: Context, next: Next): Promise<void> {
    const declared = Number(ctx.get('Content-Length') || 0);
    if (declared > limit)
      throw new HttpError(413, 'BODY_TOO_LARGE', `request bodies are limited to ${limit} bytes`);
    await next();
  };
}

/** Deepest nesting any request body of ferry's has (a relayed batch of envelopes is well below it). */
const MAX_BODY_DEPTH = 32;

/**
 * Parses a JSON request body's bytes as strict JSON (core/json.ts: UTF-8, RFC 8259 only, no duplicate
 * keys at any depth, so an envelope with a decoy `payload` is refused, not collapsed) or refuses it with
 * 400 BAD_REQUEST naming what is wrong. The route has already capped the size.
 */
export function parseJsonBody(bytes: Uint8Array): unknown {
  try {
    return parseJsonStrict(bytes, { maxBytes: bytes.length, maxDepth: MAX_BODY_DEPTH });
  } catch (e) {
    if (e instanceof JsonError)
      throw new HttpError(400, 'BAD_REQUEST', `request body is not strict UTF-8 JSON: ${e.message}`);
    throw e;
  }
}

/**
 * Reads a JSON request body of at most `limit` bytes: 415 unless declared application/json, 413 as
 * soon as the declared or the received length passes the limit (nothing more is buffered), 400 when
 * it is not strict UTF-8 JSON.
 */
export async function readJsonBody(ctx: Context, limit: number): Promise<unknown> {
  if (!ctx.is('application/json'))
    throw new HttpError(415, 'UNSUPPORTED_MEDIA_TYPE', 'request body must be application/json');
  return parseJsonBody(await readCapped(ctx, limit, 'route'));
}

/** The request body, 413 as soon as the declared or the received length passes `limit` (nothing more is buffered). */
async function readCapped(ctx: Context, limit: number, what: string): Promise<Buffer> {
  const tooLarge = () => new HttpError(413, 'BODY_TOO_LARGE', `this ${what} takes at most ${limit} bytes`);
  if (Number(ctx.get('Content-Length') || 0) > limit) throw tooLarge();
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of ctx.req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw tooLarge();
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, size);
}

/**
 * Reads an HTML form body (`application/x-www-form-urlencoded`) of at most `limit` bytes: 415 for
 * any other type, 413 past the limit, 400 for bytes that are not UTF-8 or a field named twice that
 * is not listed in `lists` (a decoy second value is refused, not collapsed). Field values are
 * strings; fields in `lists` are arrays.
 */
export async function readFormBody(
  ctx: Context,
  limit: number,
  lists: readonly string[] = [],
): Promise<Record<string, string | string[]>> {
  if (!ctx.is('application/x-www-form-urlencoded'))
    throw new HttpError(415, 'UNSUPPORTED_MEDIA_TYPE', 'form body must be application/x-www-form-urlencoded');
  const body = await readCapped(ctx, limit, 'form');
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(body);
  } catch {
    throw new HttpError(400, 'BAD_REQUEST', 'form body is not UTF-8');
  }
  const out: Record<string, string | string[]> = Object.create(null) as Record<string, string | string[]>;
  for (const [k, v] of new URLSearchParams(text)) {
    if (lists.includes(k)) ((out[k] ??= []) as string[]).push(v);
    else if (Object.hasOwn(out, k)) throw new HttpError(400, 'BAD_REQUEST', `form field ${k} given twice`);
    else out[k] = v;
  }
  for (const k of lists) out[k] ??= [];
  return out;
}
