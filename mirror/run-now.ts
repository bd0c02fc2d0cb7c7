/**
 * `run-now` requests at the mirror (docs/rollout.md "Run a script now"): an
 * operator asks that agents run one of their policy's scripts at their next
 * poll instead of waiting for its schedule. Each request has a random id, the
 * script's name, its target (one agent, a group, or every agent), who asked,
 * when, and why; they are kept in `<data>/rollout/run-now.json` (atomic
 * writes) and offered to each agent they target in its rollout answer
 * (`runNow: [{id, script}]`). The request is unsigned advice: the agent runs
 * only a script its signed policy already assigns to it, with the policy's
 * arguments and its own interpreter allowlist, and each id once.
 *
 * Bounds: at most MAX_REQUESTS are kept (the oldest goes first) and each
 * expires after REQUEST_TTL_MS; an agent is offered at most MAX_OFFERED.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CodedError } from '../core/errors.js';
import type { Manifest } from '../core/manifest.js';
import { writeFileAtomic } from '../platform/fsx.js';
import type { Logger } from '../platform/log.js';

export const MAX_REQUESTS = 64;
export const MAX_OFFERED = 16;
export const REQUEST_TTL_MS = 24 * 60 * 60 * 1000;

export type RunNowTarget = { agent: string } | { group: string } | { all: true };

export interface RunNowRequest {
  /** 32 lowercase hex, random. */
  id: string;
  script: string;
  target: RunNowTarget;
  actor: string;
  reason?: string;
  /** Epoch ms. */
  at: number;
}

interface RunNowFile {
  format: 'ferry.run-now/v1';
  requests: RunNowRequest[];
}

export type RunNowRefusal = 'UNKNOWN_SCRIPT' | 'NO_ACTIVE_MANIFEST';

/** A run-now request the mirror refused; nothing was kept. */
export class RunNowRefusedError extends CodedError<RunNowRefusal> {}

export class MirrorRunNow {
  readonly path: string;
  private requests: RunNowRequest[] = [];
  private chain: Promise<unknown> = Promise.resolve();

  private constructor(
    dataDir: string,
    private readonly log: Logger,
    private readonly now: () => number,
  ) {
    this.path = join(dataDir, 'rollout', 'run-now.json');
  }

  static async open(o: { dataDir: string; log: Logger; now?: () => number }): Promise<MirrorRunNow> {
    const r = new MirrorRunNow(o.dataDir, o.log, o.now ?? Date.now);
    const text = await readFile(r.path, 'utf8').catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return undefined;
      throw e;
    });
    if (text !== undefined) {
      const v = JSON.parse(text) as RunNowFile;
      if (v.format !== 'ferry.run-now/v1' || !Array.isArray(v.requests))
        throw new Error(`${r.path} is not a run-now request list`);
      r.requests = v.requests;
    }
    return r;
  }

  private live(): RunNowRequest[] {
    const now = this.now();
    return this.requests.filter((q) => q.at + REQUEST_TTL_MS > now && q.at <= now + REQUEST_TTL_MS);
  }

  /** Pending requests, newest last (for `ferry mirror run-now` output and tests). */
  pending(): RunNowRequest[] {
    return this.live();
  }

  /**
   * Keeps a new request once the active manifest is known to carry `script` as a script artifact;
   * otherwise refuses it, changing nothing.
   */
  request(
    manifest: Manifest | null,
    r: { script: string; target: RunNowTarget; actor: string; reason?: string },
  ): Promise<RunNowRequest> {
    const p = this.chain.then(async () => {
      if (!manifest)
        throw new RunNowRefusedError('NO_ACTIVE_MANIFEST', 'this mirror has no active manifest yet');
      if (!manifest.artifacts.some((a) => a.kind === 'script' && a.name === r.script))
        throw new RunNowRefusedError(
          'UNKNOWN_SCRIPT',
          `the active manifest (sequence ${manifest.sequence}) carries no script ${r.script}`,
        );
      const q: RunNowRequest = {
        id: randomBytes(16).toString('hex'),
        script: r.script,
        target: r.target,
        actor: r.actor,
        ...(r.reason !== undefined && { reason: r.reason }),
        at: this.now(),
      };
      const next = [...this.live(), q].slice(-MAX_REQUESTS);
      await mkdir(join(this.path, '..'), { recursive: true });
      const file: RunNowFile = { format: 'ferry.run-now/v1', requests: next };
      await writeFileAtomic(this.path, JSON.stringify(file));
      this.requests = next;
      this.log.info('rollout.run_now', {
        id: q.id,
        script: q.script,
        target: q.target,
        actor: q.actor,
        ...(q.reason !== undefined && { reason: q.reason }),
        manifestSequence: manifest.sequence,
      });
      return q;
    });
    this.chain = p.catch(() => undefined);
    return p;
  }

  /** The requests that target this agent (by id, one of its groups, or all), newest MAX_OFFERED. */
  offeredTo(agentId: string, groups: readonly string[]): { id: string; script: string }[] {
    return this.live()
      .filter((q) =>
        'agent' in q.target
          ? q.target.agent === agentId
          : 'group' in q.target
            ? groups.includes(q.target.group)
            : true,
      )
      .slice(-MAX_OFFERED)
      .map((q) => ({ id: q.id, script: q.script }));
  }
}
