/**
 * Settles a stale self-update by the update machine's own rules (machine.ts),
 * with the agent stopped: a passed deadline or soak is a `tick`; an update
 * caught before its swap with no agent left to finish it is a `started` of the
 * version `current` runs, which abandons it; pending files left behind by a
 * settled update are removed, as the driver does on start. The machine's new
 * state is written first, then its actions are performed, as the driver does.
 */
import { currentVersion, pointCurrentAt, removeVersion } from '../update/install.js';
import { step, type UpdateAction, type UpdateState } from '../update/machine.js';
import {
  readPendingRecord,
  readUpdateFile,
  removePendingFiles,
  writeUpdateFile,
  type UpdateFile,
} from '../update/update-file.js';

const SETTLED = new Set(['idle', 'committed', 'rolled-back']);
const PRE_SWAP = new Set(['downloading', 'verifying', 'staged', 'self-testing']);

export interface UpdateSettlement {
  /** What will change, in words. */
  describe: string[];
  apply: () => Promise<void>;
}

function actionWords(a: UpdateAction, installRoot: string | undefined): string | undefined {
  switch (a[0]) {
    case 'discard-staged':
      return `remove ${installRoot ?? '<install>'}/versions/${a[1]} (staged, never committed)`;
    case 'switch-current-to':
      return `point ${installRoot ?? '<install>'}/current at versions/${a[1]}`;
    case 'remove-pending-record':
      return 'remove pending.json and its counters';
    case 'remember-bad':
      return `remember ${a[1]} as bad under this manifest`;
    case 'report':
      return `queue the report "${a[1].outcome}: ${a[1].reason}" for the next heartbeat`;
    default:
      return undefined;
  }
}

/** The settlement of a stale update, or undefined when there is nothing the rules settle now. */
export async function planUpdateSettlement(o: {
  stateDir: string;
  installRoot: string | undefined;
  now: number;
}): Promise<UpdateSettlement | undefined> {
  const file = await readUpdateFile(o.stateDir);
  const pending = await readPendingRecord(o.stateDir);
  const m = file?.machine;
  if (!file || !m || SETTLED.has(m.phase)) {
    if (pending === undefined) return undefined;
    return {
      describe: ['remove pending.json and its counters (no update is in flight)'],
      apply: () => removePendingFiles(o.stateDir),
    };
  }
  let r = step(m, { type: 'tick' }, o.now);
  let event = 'its deadline passed';
  if (r.state === m && PRE_SWAP.has(m.phase)) {
    const running = o.installRoot ? await currentVersion(o.installRoot) : undefined;
    if (running === undefined) return undefined;
    r = step(m, { type: 'started', version: running }, o.now);
    event = `no agent runs to finish it; ${running} is what current runs`;
  }
  if (r.state === m) return undefined;
  const next: UpdateState = r.state;
  const words = r.actions.map((a) => actionWords(a, o.installRoot)).filter((w) => w !== undefined);
  return {
    describe: [`update.json: phase ${m.phase} → ${next.phase} (${event})`, ...words],
    apply: async () => {
      const out: UpdateFile = { ...file, machine: next };
      for (const a of r.actions) {
        if (a[0] === 'remember-bad' && !out.badVersions.includes(a[2]))
          out.badVersions = [...out.badVersions, a[2]];
        if (a[0] === 'report') out.unreported = [...out.unreported, { ...a[1], at: o.now }];
      }
      await writeUpdateFile(o.stateDir, out); // recorded before anything is done
      for (const a of r.actions) {
        if (a[0] === 'discard-staged' && o.installRoot && (await currentVersion(o.installRoot)) !== a[1])
          await removeVersion(o.installRoot, a[1]);
        if (a[0] === 'switch-current-to' && o.installRoot) await pointCurrentAt(o.installRoot, a[1]);
        if (a[0] === 'remove-pending-record') await removePendingFiles(o.stateDir);
      }
    },
  };
}
