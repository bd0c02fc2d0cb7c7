/**
 * The demo's node-install step: a node with no Node.js installs itself from the mirror with
 * `curl -fsSL MIRROR/install.sh | sh -s -- --token T --root-sha256 F`, into a temporary root, with a PATH that
 * has no `node` and a `systemctl` that only records; then a hostile mirror serving a tampered agent is refused
 * by the same script before anything is written. Agent and runtime come from a built kit
 * (dist/kit/stage, `npm run kit`) when there is one, else are built here (the agent by
 * scripts/build-agent.mjs, the runtime by gzipping this machine's Node.js).
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readFile, readdir, symlink, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { INSTALL_SCRIPT_TOOLS } from '../platform/install-script.js';

const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface DemoKit {
  step(title: string): void;
  ferry(args: string[], expect: 0 | 1, secret?: boolean): { stdout: string; stderr: string };
  background(
    args: string[],
    started: string,
    stopped: string,
  ): Promise<{ url: string; stop(): Promise<void> }>;
}

async function nodeArtifacts(dir: string): Promise<{ agent: string; runtime: string; from: string }> {
  const stage = join(REPO, 'dist', 'kit', 'stage');
  const kits = existsSync(stage) ? (await readdir(stage)).filter((d) => d.startsWith('ferry-kit-')) : [];
  if (kits[0]) {
    const k = join(stage, kits[0]);
    return {
      agent: join(k, 'agent/ferry-agent'),
      runtime: join(k, 'runtime/ferry-runtime-linux-x64.gz'),
      from: `the kit in dist/kit/stage/${kits[0]}`,
    };
  }
  await mkdir(dir, { recursive: true });
  const agent = join(dir, 'ferry-agent');
  execFileSync(process.execPath, [join(REPO, 'scripts/build-agent.mjs'), '--out', agent], {
    stdio: 'ignore',
  });
  const runtime = join(dir, 'ferry-runtime-linux-x64.gz');
  await writeFile(
    runtime,
    execFileSync('gzip', ['-1', '-c', process.execPath], { maxBuffer: 512 * 1024 * 1024 }),
  );
  return { agent, runtime, from: 'scripts/build-agent.mjs and gzip of this Node.js (no kit built yet)' };
}

/** A PATH directory with the usual tools but no node, and a systemctl that records its calls. */
async function toolbox(dir: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  for (const t of INSTALL_SCRIPT_TOOLS) {
    const at = spawnSync('sh', ['-c', `command -v ${t}`], { encoding: 'utf8' }).stdout.trim();
    if (at.startsWith('/')) await symlink(at, join(dir, t));
  }
  await writeFile(join(dir, 'systemctl'), `#!/bin/sh\necho "  (systemctl stand-in) systemctl $*" >&2\n`);
  await chmod(join(dir, 'systemctl'), 0o755);
  return dir;
}

/** Runs install.sh as piped from curl; async, since the hostile mirror answers from this very process. */
async function installSh(url: string, args: string[], path: string, expect: 0 | 1): Promise<string> {
  const shown = args.map((a) => (a.length > 40 ? `${a.slice(0, 12)}…` : a)).join(' ');
  console.log(`$ curl -fsSL ${url}/install.sh | sh -s -- ${shown}`);
  const child = spawn('sh', ['-c', `curl -fsSL ${url}/install.sh | sh -s -- "$@"`, 'install', ...args], {
    env: { PATH: path, HOME: dirname(path) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (out += c.toString()));
  const [status] = (await once(child, 'close')) as [number | null];
  console.log(out.trimEnd().replace(/^/gm, '  '));
  console.log(`  (exit ${status}${expect === 1 && status === 1 ? ': refused, as it should be' : ''})`);
  if (status !== expect) {
    console.error(`demo: expected exit ${expect}, got ${status}`);
    process.exit(1);
  }
  return out;
}

export async function installDemo(work: string, d: DemoKit): Promise<void> {
  d.step('12. A node with no Node.js installs itself from the mirror; a hostile mirror is refused');
  const dir = join(work, 'node-install');
  await mkdir(dir, { recursive: true });
  const art = await nodeArtifacts(join(dir, 'build'));
  console.log(`  agent and runtime from ${art.from}`);
  const spec = join(dir, 'spec.json');
  await writeFile(
    spec,
    JSON.stringify({
      publisher: 'acme-ops',
      sequence: 1,
      expires: '30d',
      sites: ['plant-7'],
      artifacts: [
        {
          name: 'ferry-agent',
          kind: 'agent',
          version: execFileSync(process.execPath, [art.agent, 'version'], { encoding: 'utf8' })
            .trim()
            .replace(/-dev$/, ''),
          platform: 'linux-x64',
          path: art.agent,
        },
        {
          name: 'ferry-runtime-linux-x64',
          kind: 'file',
          version: process.versions.node,
          platform: 'linux-x64',
          path: art.runtime,
        },
      ],
    }),
  );
  const bundle = join(dir, 'node-install.ferry');
  d.ferry(['bundle', 'create', '--spec', spec, '--key', join(work, 'keys/release.key'), '--out', bundle], 0);
  const root = join(work, 'root.json');
  const data = join(dir, 'mirror');
  d.ferry(['mirror', 'import', bundle, '--data', data, '--trust', root, '--site', 'plant-7'], 0);
  const fp = d.ferry(['trust', 'show', root], 0).stdout.split('\n')[0]!.split(' ')[1]!;
  const mirror = await d.background(
    ['mirror', 'serve', '--data', data, '--listen', '127.0.0.1:0'],
    'mirror.started',
    'mirror.stopped',
  );
  let hostile: Server | undefined;
  try {
    const token = (
      JSON.parse(
        d.ferry(['mirror', 'token', 'create', '--data', data, '--ttl', '10m', '--json'], 0, true).stdout,
      ) as { token: string }
    ).token;
    console.log('  (token made; it is not shown)');
    const path = await toolbox(join(dir, 'node-bin'));
    const target = join(dir, 'node-root');
    await installSh(mirror.url, ['--token', token, '--root-sha256', fp, '--root', target], path, 0);

    // the hostile mirror: the genuine script, root and manifest, but an agent with one byte changed
    const manifest = JSON.parse(await (await fetch(`${mirror.url}/v1/manifest`)).text()) as {
      payload: string;
    };
    const agentSha = (
      JSON.parse(Buffer.from(manifest.payload, 'base64').toString('utf8')) as {
        artifacts: { kind: string; sha256: string }[];
      }
    ).artifacts.find((a) => a.kind === 'agent')!.sha256;
    const evil = Buffer.from(await readFile(art.agent));
    evil.write('/* injected */', evil.length - 20);
    hostile = createServer((req, res) => {
      if (req.url === `/v1/blobs/sha256/${agentSha}`) {
        res.end(evil);
        return;
      }
      fetch(`${mirror.url}${req.url ?? '/'}`).then(
        async (r) => res.writeHead(r.status).end(Buffer.from(await r.arrayBuffer())),
        () => res.writeHead(502).end(),
      );
    });
    await new Promise<void>((r) => hostile!.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(hostile.address() as { port: number }).port}`;
    console.log(
      `  a hostile mirror at ${url} serves an agent whose sha256 is ${createHash('sha256').update(evil).digest('hex').slice(0, 12)}…, not the signed ${agentSha.slice(0, 12)}…`,
    );
    const token2 = (
      JSON.parse(
        d.ferry(['mirror', 'token', 'create', '--data', data, '--ttl', '10m', '--json'], 0, true).stdout,
      ) as { token: string }
    ).token;
    const out = await installSh(
      url,
      ['--mirror', url, '--token', token2, '--root-sha256', fp, '--root', join(dir, 'node-root-2')],
      path,
      1,
    );
    if (!out.includes('ARTIFACT_MISMATCH') || existsSync(join(dir, 'node-root-2'))) {
      console.error('demo: the tampered agent was not refused before anything was installed');
      process.exit(1);
    }
    console.log('  nothing was written to node-root-2');
  } finally {
    hostile?.close();
    await mirror.stop();
  }
}
