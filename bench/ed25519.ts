/**
 * Ed25519 verification cost, per backend, in one process: what the services' choice of sodium-native
 * on a worker thread (docs/decisions.md) rests on. For each backend it times `verify` one signature at a
 * time (µs per verification, on this thread), then `verifyAsync` with --batch checks in flight at once
 * (verifications/s through whatever the backend uses: libuv's pool for node:crypto, the worker thread
 * for sodium-native), and the CPU this process used per verification in that phase. Messages are
 * heartbeat-sized (--bytes); one key per 16 messages. Prints a table; never fails on the figures.
 *
 *   node dist/bench/ed25519.js [--count 5000] [--bytes 600] [--batch 256] [--json]
 */
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { libsodiumBackend, nodeBackend, sodiumNativeBackend, type Ed25519Backend } from '../core/ed25519.js';
import { printTable } from './proc.js';

interface Row {
  backend: string;
  syncMicros: number;
  asyncPerSec: number;
  asyncCpuMicros: number;
  allVerified: boolean;
}

const { values } = parseArgs({
  options: {
    count: { type: 'string', default: '5000' },
    bytes: { type: 'string', default: '600' },
    batch: { type: 'string', default: '256' },
    json: { type: 'boolean', default: false },
  },
});
const num = (k: 'count' | 'bytes' | 'batch') => {
  const n = Number(values[k]);
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`--${k} must be a positive integer`);
  return n;
};
const [count, bytes, batch] = [num('count'), num('bytes'), num('batch')];

// Signed once with node:crypto; every backend checks the same signatures.
const cases = Array.from({ length: count }, (_, i) => {
  const seed = new Uint8Array(Buffer.alloc(32, (i >> 4) & 0xff));
  const message = new Uint8Array(randomBytes(bytes));
  return { publicKey: nodeBackend.publicFromSeed(seed), message, signature: nodeBackend.sign(seed, message) };
});

async function measure(name: string, b: Ed25519Backend): Promise<Row> {
  for (const c of cases.slice(0, 200)) b.verify(c.publicKey, c.message, c.signature); // warm-up
  let ok = true;
  let t = performance.now();
  for (const c of cases) ok = b.verify(c.publicKey, c.message, c.signature) && ok;
  const syncMicros = ((performance.now() - t) * 1000) / count;

  const cpu = process.cpuUsage();
  t = performance.now();
  for (let i = 0; i < count; i += batch) {
    const r = await Promise.all(
      cases.slice(i, i + batch).map((c) => b.verifyAsync(c.publicKey, c.message, c.signature)),
    );
    ok = r.every(Boolean) && ok;
  }
  const seconds = (performance.now() - t) / 1000;
  const used = process.cpuUsage(cpu);
  return {
    backend: name,
    syncMicros,
    asyncPerSec: count / seconds,
    asyncCpuMicros: (used.user + used.system) / count,
    allVerified: ok,
  };
}

const rows = [
  await measure('node:crypto (OpenSSL; async in libuv pool)', nodeBackend),
  await measure('libsodium-wrappers (WebAssembly; async inline)', await libsodiumBackend()),
  await measure('sodium-native (async on its worker)', await sodiumNativeBackend({ worker: true })),
];
if (values.json) console.log(JSON.stringify({ count, bytes, batch, rows }, null, 2));
else {
  const f = (n: number, d = 0) => n.toFixed(d);
  const table = [
    ['backend', 'verify µs', 'verifyAsync /s', 'CPU µs each (process)', 'all verified'],
    ...rows.map((r) => [
      r.backend,
      f(r.syncMicros, 1),
      f(r.asyncPerSec),
      f(r.asyncCpuMicros, 1),
      String(r.allVerified),
    ]),
  ];
  printTable(table);
  console.log(
    `\n${count} signatures over ${bytes}-byte messages; verifyAsync with ${batch} in flight at a time.`,
  );
}
if (rows.some((r) => !r.allVerified)) {
  console.error('bench: a backend refused a good signature: the harness is broken');
  process.exitCode = 1;
}
