import { readFileSync } from 'node:fs';

/** The package version, read once from package.json next to the build. */
function readVersion(): string {
  for (const rel of ['../../package.json', '../package.json']) {
    try {
      const v = (JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { version?: unknown })
        .version;
      if (typeof v === 'string') return v;
    } catch {
      // try the next location
    }
  }
  return '0.0.0';
}

export const VERSION = readVersion();
