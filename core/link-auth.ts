/**
 * A mirror's signed request: to the server over its link (`--upstream`), and to the other mirrors
 * of its site for their site log. One header, `Ferry-Link-Auth`, carries a DSSE envelope (base64 of
 * its JSON) signed with the mirror's own Ed25519 key — the one the operator registered on the server,
 * or listed with `--peer-key` at the other mirrors. The payload binds the request: mirror id, site,
 * method, path with query, the time it was made and a random nonce. The answering side accepts it
 * only from a mirror it knows for that site, signed by that mirror's key, for this very request,
 * within `LINK_AUTH_WINDOW_MS` of its own clock, and only once (`LinkNonces` remembers the nonces
 * of the window).
 */
import { CodedError } from './errors.js';
import { decodeBase64Strict } from './encoding.js';
import { keyIdOf } from './ed25519.js';
import { assertEnvelope, serializeEnvelope, signEnvelope, verifyEnvelope, type Signer } from './dsse.js';
import { parseJsonStrict } from './json.js';
import { isoUtc, parseIsoUtc } from './time.js';

export const LINK_AUTH_HEADER = 'ferry-link-auth';
export const LINK_AUTH_PAYLOAD_TYPE = 'application/vnd.ferry.link-request+json';
/** How far a request's time may be from the server's clock, either way. */
export const LINK_AUTH_WINDOW_MS = 5 * 60_000;
const MAX_HEADER_BYTES = 4096;

export type LinkAuthCode =
  | 'LINK_AUTH_MISSING' // no header
  | 'LINK_AUTH_INVALID' // not an envelope of a link request, or not for this request
  | 'BAD_SIGNATURE' // not signed by the key of the mirror it names
  | 'UNKNOWN_MIRROR' // a mirror that is not registered
  | 'WRONG_SITE' // a mirror registered for another site than it names
  | 'REQUEST_EXPIRED' // made too long ago (or too far ahead)
  | 'REPLAY'; // a nonce already seen

export class LinkAuthError extends CodedError<LinkAuthCode> {}

/** The HTTP status each refusal is answered with. */
export const LINK_AUTH_STATUS: Record<LinkAuthCode, number> = {
  LINK_AUTH_MISSING: 401,
  LINK_AUTH_INVALID: 400,
  BAD_SIGNATURE: 401,
  UNKNOWN_MIRROR: 403,
  WRONG_SITE: 403,
  REQUEST_EXPIRED: 401,
  REPLAY: 401,
};

/** Nonces seen within the time window (a request outside it is refused by its time anyway). */
export class LinkNonces {
  private seen = new Map<string, number>();

  /** False when `nonce` was seen before; remembers it until the window has passed. */
  take(nonce: string, now: number): boolean {
    if (this.seen.size > 10_000) for (const [n, until] of this.seen) if (until < now) this.seen.delete(n);
    if (this.seen.has(nonce)) return false;
    this.seen.set(nonce, now + 2 * LINK_AUTH_WINDOW_MS);
    return true;
  }
}

export interface LinkRequest {
  type: 'ferry.link-request/v1';
  mirror: string;
  site: string;
  method: string;
  /** Path and query, exactly as sent. */
  path: string;
  at: string;
  /** 32 hex digits, random. */
  nonce: string;
}

const invalid = (why: string) => new LinkAuthError('LINK_AUTH_INVALID', `link request: ${why}`);

function assertLinkRequest(v: unknown): asserts v is LinkRequest {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalid('not an object');
  const o = v as Record<string, unknown>;
  const known = ['type', 'mirror', 'site', 'method', 'path', 'at', 'nonce'];
  for (const k of Object.keys(o)) if (!known.includes(k)) throw invalid(`unknown field ${JSON.stringify(k)}`);
  if (o.type !== 'ferry.link-request/v1') throw invalid('type is not ferry.link-request/v1');
  if (typeof o.mirror !== 'string' || !/^[0-9a-f]{32}$/.test(o.mirror))
    throw invalid('mirror must be a mirror id');
  if (typeof o.site !== 'string' || o.site === '' || o.site.length > 64) throw invalid('site must be a name');
  if (typeof o.method !== 'string' || !/^[A-Z]{1,10}$/.test(o.method)) throw invalid('method');
  if (typeof o.path !== 'string' || !o.path.startsWith('/') || o.path.length > 1024) throw invalid('path');
  if (parseIsoUtc(o.at) === undefined) throw invalid('at must be an ISO UTC time');
  if (typeof o.nonce !== 'string' || !/^[0-9a-f]{32}$/.test(o.nonce))
    throw invalid('nonce must be 32 hex digits');
}

/** The header value for one request. */
export function signLinkRequest(r: Omit<LinkRequest, 'type' | 'at'> & { now: number }, key: Signer): string {
  const { now, ...rest } = r;
  const payload: LinkRequest = { type: 'ferry.link-request/v1', ...rest, at: isoUtc(now) };
  assertLinkRequest(payload);
  const env = signEnvelope(LINK_AUTH_PAYLOAD_TYPE, Buffer.from(JSON.stringify(payload)), [key]);
  return Buffer.from(serializeEnvelope(env)).toString('base64');
}

/**
 * Checks a header for the request it came with: who it says it is (`lookup` gives the registered
 * key and site of a mirror id), the signature, the request it names, the time. The nonce is the
 * caller's to remember (returned with the payload).
 */
export function verifyLinkRequest(
  header: string | undefined,
  request: { method: string; path: string; now: number },
  lookup: (mirror: string) => { site: string; publicKey: Uint8Array } | undefined,
): LinkRequest {
  if (!header)
    throw new LinkAuthError('LINK_AUTH_MISSING', `a link request needs a signed ${LINK_AUTH_HEADER} header`);
  if (header.length > MAX_HEADER_BYTES) throw invalid('header too long');
  let env: unknown;
  let peek: unknown;
  try {
    env = parseJsonStrict(decodeBase64Strict(header, LINK_AUTH_HEADER), { maxBytes: MAX_HEADER_BYTES });
    assertEnvelope(env, 'link request');
    peek = parseJsonStrict(decodeBase64Strict(env.payload, 'link request payload'), {
      maxBytes: MAX_HEADER_BYTES,
    });
  } catch (e) {
    if (e instanceof LinkAuthError) throw e;
    throw invalid((e as Error).message);
  }
  assertLinkRequest(peek);
  const m = lookup(peek.mirror);
  if (!m) throw new LinkAuthError('UNKNOWN_MIRROR', `mirror ${peek.mirror} is not known here`);
  let body: Buffer;
  try {
    body = verifyEnvelope(
      env,
      LINK_AUTH_PAYLOAD_TYPE,
      { keys: new Map([[keyIdOf(m.publicKey), m.publicKey]]), threshold: 1 },
      'link request',
    ).body;
  } catch (e) {
    throw new LinkAuthError(
      'BAD_SIGNATURE',
      `link request not signed by mirror ${peek.mirror}: ${(e as Error).message}`,
    );
  }
  const p = parseJsonStrict(body, { maxBytes: MAX_HEADER_BYTES });
  assertLinkRequest(p);
  if (p.site !== m.site)
    throw new LinkAuthError(
      'WRONG_SITE',
      `mirror ${p.mirror} is registered for site ${m.site}, not ${p.site}`,
    );
  if (p.method !== request.method || p.path !== request.path)
    throw invalid(`signed for ${p.method} ${p.path}, sent as ${request.method} ${request.path}`);
  const skew = Math.abs(parseIsoUtc(p.at)! - request.now);
  if (skew > LINK_AUTH_WINDOW_MS)
    throw new LinkAuthError(
      'REQUEST_EXPIRED',
      `link request made at ${p.at}, ${Math.round(skew / 1000)} s from the server's clock (at most ${LINK_AUTH_WINDOW_MS / 1000} s)`,
    );
  return p;
}
