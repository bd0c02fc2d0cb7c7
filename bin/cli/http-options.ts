/** The options every serving command takes for its HTTP listener (platform/http/server.ts). */
import { DEFAULT_SERVER_LIMITS, resolveLimits, type ServerLimits } from '../../platform/http/server.js';
import { int, type Parsed } from './common.js';

export const httpOptions = {
  'max-connections': { type: 'string' },
  'headers-timeout': { type: 'string' },
} as const;

export const httpUsage = '[--max-connections N] [--headers-timeout SEC]';

export const httpHelp =
  `--max-connections caps concurrent HTTP connections (default ${DEFAULT_SERVER_LIMITS.maxConnections}); more are closed\n` +
  'as they arrive and counted in <prefix>_connections_refused_total. --headers-timeout (seconds, default\n' +
  `${DEFAULT_SERVER_LIMITS.headersTimeoutMs / 1000}) is how long a client may take to send its request headers.`;

/** The limits given on the command line, checked before anything starts. */
export function httpLimits(p: Parsed): Partial<ServerLimits> {
  const limits = {
    ...(p.values['max-connections'] !== undefined && { maxConnections: int(p, 'max-connections') }),
    ...(p.values['headers-timeout'] !== undefined && { headersTimeoutMs: int(p, 'headers-timeout') * 1000 }),
  };
  resolveLimits(limits);
  return limits;
}
