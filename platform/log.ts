/**
 * Structured logs: one JSON object per line, with time, level, component and
 * event, plus whatever ids the caller adds. Libraries take a Logger; only the
 * composition root decides where lines go.
 */
export type Level = 'debug' | 'info' | 'warn' | 'error';
export type Fields = Record<string, unknown>;

export interface Logger {
  debug(event: string, fields?: Fields): void;
  info(event: string, fields?: Fields): void;
  warn(event: string, fields?: Fields): void;
  error(event: string, fields?: Fields): void;
  child(fields: Fields): Logger;
}

const ORDER: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface LoggerOptions {
  component: string;
  level?: Level;
  write?: (line: string) => void;
  now?: () => number;
}

export function createLogger(opts: LoggerOptions, bound: Fields = {}): Logger {
  const min = ORDER[opts.level ?? 'info'];
  const write = opts.write ?? ((line: string) => process.stderr.write(line + '\n'));
  const now = opts.now ?? Date.now;
  const emit = (level: Level, event: string, fields?: Fields) => {
    if (ORDER[level] < min) return;
    const record: Fields = {
      time: new Date(now()).toISOString(),
      level,
      component: opts.component,
      event,
      ...bound,
    };
    for (const [k, v] of Object.entries(fields ?? {})) record[k] = v instanceof Error ? v.message : v;
    write(JSON.stringify(record));
  };
  return {
    debug: (e, f) => emit('debug', e, f),
    info: (e, f) => emit('info', e, f),
    warn: (e, f) => emit('warn', e, f),
    error: (e, f) => emit('error', e, f),
    child: (fields) => createLogger(opts, { ...bound, ...fields }),
  };
}

export const silentLogger: Logger = createLogger({ component: 'silent', write: () => undefined });
