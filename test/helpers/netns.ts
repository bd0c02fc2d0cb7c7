/**
 * Network namespaces for tests: a set of namespaces joined by veth pairs, each
 * pair its own /30 subnet, so a process in one namespace reaches only its
 * direct neighbours (no routing, no host network). Links can be cut and
 * restored with `ip link set … down/up`. `netnsUnavailable()` says why
 * namespaces cannot be made here (not root, no iproute2, no permission);
 * under FERRY_REQUIRE_ALL=1 that is a failure instead of a skip.
 *
 * Everything made is torn down by `destroy()`: the processes started inside
 * (by pid), then the namespaces, which takes their veth ends with them.
 */
import { execFileSync, spawn } from 'node:child_process';
import { FERRY_BIN } from './fixtures.js';
import { followLogs, type FerryChild, type LoggedProc } from './mirror-proc.js';

const run = (args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();

/** Why namespaces cannot be used here, or undefined when they can. */
export function netnsUnavailable(): string | undefined {
  let reason: string | undefined;
  try {
    execFileSync('sh', ['-c', 'command -v ip'], { stdio: 'ignore' });
  } catch {
    reason = 'ip (iproute2) is not installed';
  }
  if (!reason && process.getuid?.() !== 0) reason = 'creating network namespaces needs root';
  if (!reason) {
    const probe = `ferry-probe-${process.pid}`;
    try {
      run(['netns', 'add', probe]);
      run(['netns', 'del', probe]);
    } catch (e) {
      reason = `ip netns add failed: ${(e as { stderr?: Buffer }).stderr?.toString().trim() ?? String(e)}`;
    }
  }
  if (reason && process.env.FERRY_REQUIRE_ALL === '1')
    throw new Error(`network namespaces are required (FERRY_REQUIRE_ALL=1): ${reason}`);
  if (reason) console.warn(`skipping network-namespace tests: ${reason}`);
  return reason;
}

export interface NsLink {
  a: string;
  b: string;
  /** Address of each end. */
  addrA: string;
  addrB: string;
  /** Interface names (each inside its namespace). */
  ifA: string;
  ifB: string;
}

export class Topology {
  private readonly made: string[] = [];
  private readonly links: NsLink[] = [];
  private readonly children = new Set<FerryChild>();
  private readonly tag = `f${process.pid % 100000}`;

  /** The namespace name for node `node`. */
  ns(node: string): string {
    return `${this.tag}-${node}`;
  }

  addNode(node: string): void {
    const ns = this.ns(node);
    run(['netns', 'add', ns]);
    this.made.push(ns);
    run(['-n', ns, 'link', 'set', 'lo', 'up']);
  }

  /** Joins two nodes with a veth pair on 10.<pid>.<n>.0/30. */
  link(a: string, b: string): NsLink {
    const n = this.links.length + 1;
    const ifA = `v${n}${a}`.slice(0, 15);
    const ifB = `v${n}${b}`.slice(0, 15);
    const net = `10.${(process.pid % 200) + 20}.${n}`;
    run(['link', 'add', ifA, 'netns', this.ns(a), 'type', 'veth', 'peer', 'name', ifB, 'netns', this.ns(b)]);
    const l: NsLink = { a, b, ifA, ifB, addrA: `${net}.1`, addrB: `${net}.2` };
    run(['-n', this.ns(a), 'addr', 'add', `${l.addrA}/30`, 'dev', ifA]);
    run(['-n', this.ns(b), 'addr', 'add', `${l.addrB}/30`, 'dev', ifB]);
    run(['-n', this.ns(a), 'link', 'set', ifA, 'up']);
    run(['-n', this.ns(b), 'link', 'set', ifB, 'up']);
    this.links.push(l);
    return l;
  }

  /** Takes both ends of a link down (a pulled cable), or brings them back. */
  setLink(l: NsLink, up: boolean): void {
    const state = up ? 'up' : 'down';
    run(['-n', this.ns(l.a), 'link', 'set', l.ifA, state]);
    run(['-n', this.ns(l.b), 'link', 'set', l.ifB, state]);
  }

  /** Starts `ferry ARGS…` inside a node's namespace and follows its JSON log lines. */
  ferry(node: string, args: string[], what = node): LoggedProc {
    return this.spawn(node, [process.execPath, FERRY_BIN, ...args], what);
  }

  /** Runs `ferry ARGS…` inside a node's namespace to the end. */
  async ferryOnce(
    node: string,
    args: string[],
  ): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const p = this.spawn(node, [process.execPath, FERRY_BIN, ...args], node);
    const exit = await p.exited;
    return { code: exit.code, stdout: p.stdout(), stderr: p.stderr() };
  }

  /** Starts any program inside a node's namespace (logs on stderr as JSON lines are followed). */
  spawn(node: string, argv: string[], what = node): LoggedProc & { stdout: () => string } {
    const child = spawn('ip', ['netns', 'exec', this.ns(node), ...argv], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (code, signal) => resolve({ code, signal }));
    });
    const c: FerryChild = { child, exited, stdout: () => out, stderr: () => err };
    this.children.add(c);
    return { ...followLogs(c, what), stdout: c.stdout };
  }

  /** Stops every process started here (by pid), then removes the namespaces and their links. */
  async destroy(): Promise<void> {
    const waits: Promise<unknown>[] = [];
    for (const c of this.children)
      if (c.child.exitCode === null && c.child.signalCode === null) {
        waits.push(c.exited);
        c.child.kill('SIGKILL');
      }
    await Promise.all(waits);
    for (const ns of this.made.reverse()) {
      try {
        run(['netns', 'del', ns]);
      } catch {
        // already gone
      }
    }
    this.made.length = 0;
  }
}
