/**
 * The one list of codes that travel in HTTP error bodies `{code, message}`
 * from the mirror and the server. Clients branch on these, so a code is never
 * renamed or reused for another meaning; a new refusal adds a code here.
 * Spelling is British throughout (`BAD_ENROLMENT`), as in the CLI's words.
 */
export const WIRE_CODES = [
  // routing and request shape
  'NOT_FOUND',
  'METHOD_NOT_ALLOWED',
  'NOT_IMPLEMENTED',
  'BAD_REQUEST',
  'BODY_TOO_LARGE',
  'UNSUPPORTED_MEDIA_TYPE',
  // store reads
  'BAD_DIGEST',
  'BLOB_NOT_FOUND',
  'NO_ACTIVE_MANIFEST',
  'RANGE_NOT_SATISFIABLE',
  // enrolment and telemetry
  'BAD_ENROLMENT',
  'BAD_ENVELOPE',
  'BAD_HEARTBEAT',
  'BAD_SIGNATURE',
  'UNKNOWN_AGENT',
  'AGENT_REVOKED',
  'TOKEN_MISSING',
  'TOKEN_MALFORMED',
  'TOKEN_UNKNOWN',
  'TOKEN_EXPIRED',
  'TOKEN_EXHAUSTED',
  'TOKEN_REVOKED',
  'TOKEN_WRONG_SITE',
  'REPLAY',
  'TELEMETRY_REJECTED',
  'WRONG_SITE',
  // relaying between mirrors
  'BAD_BATCH',
  'LOOP',
  'NO_ROUTE',
  'RELAY_UNTRUSTED',
  // the fleet view
  'FLEET_VIEW_LOCAL',
  // the connected server's UI and API: access, releases, sites, bundles
  'UNAUTHENTICATED',
  'FORBIDDEN',
  'CSRF_REJECTED',
  'RATE_LIMITED',
  'BAD_INPUT',
  'UNKNOWN_SITE',
  'UNKNOWN_RELEASE',
  'RELEASE_EXISTS',
  'UNKNOWN_BUNDLE',
  'NO_SIGNING_KEY',
  'POLICY_INVALID',
  // a mirror's link to the server (signed requests for its site's bundles)
  'LINK_AUTH_MISSING',
  'LINK_AUTH_INVALID',
  'UNKNOWN_MIRROR',
  'REQUEST_EXPIRED',
  // the service itself
  'STORE_LOCKED',
  'STORE_INVALID',
  'STORE_MISMATCH',
  'STORE_UNAVAILABLE',
  'STORAGE_FULL',
  'INTERNAL',
] as const;

export type WireCode = (typeof WIRE_CODES)[number];

const KNOWN: ReadonlySet<string> = new Set(WIRE_CODES);

export function isWireCode(s: unknown): s is WireCode {
  return typeof s === 'string' && KNOWN.has(s);
}
