/**
 * The one outbound HTTP client: every request ferry makes goes through here.
 *
 *   transport.ts  the seam: node:http (the agent, the default) or undici (./undici.js)
 *   limits.ts     idle timeouts, total deadlines (floor rate), disk reserve: one place
 *   request.ts    one exchange with its timers; small bodies, capped
 *   download.ts   one resumable, verified download into a temp file
 *   blob.ts       a verified blob from a list of mirrors into a directory
 *   retry.ts      retry with exponential back-off and jitter
 *   space.ts      room on the destination filesystem (STORAGE_FULL)
 *   errors.ts     the coded errors
 */
export * from './errors.js';
export * from './limits.js';
export * from './retry.js';
export { request, type BaseOptions, type HttpResponse, type RequestOptions } from './request.js';
export { download, type DownloadOptions, type DownloadResult } from './download.js';
export {
  blobUrl,
  fetchVerifiedBlob,
  type BlobRef,
  type SourceOutcome,
  type VerifiedBlob,
  type VerifiedBlobOptions,
} from './blob.js';
export { defaultTransport, nodeTransport, type Transport } from './transport.js';
export { freeBytes } from './space.js';
