/**
 * The agent's own executable: `ferry-agent run|poll|status|rollback|version|self-test|doctor`.
 * `npm run build:agent` bundles this entry point and everything it imports into
 * the single file dist/ferry-agent that bundles carry as an artifact of kind
 * `agent`. It reaches only the agent's commands, so the mirror (Koa, chokidar)
 * and the operator's libsodium stay out of the file. In that build
 * scripts/build-agent.mjs replaces bin/version.ts with the version stamped at
 * build time, so `version` and every heartbeat report the same string.
 */
import { selfTest } from '../agent/self-test.js';
import { agentPoll, agentRollback, agentRun, agentStatus } from './cli/agent.js';
import { agentDoctor } from './cli/doctor.js';
import { runCommand, stdio, str, type Command, type Io } from './cli/common.js';
import { VERSION } from './version.js';

const agentSelfTest: Command = {
  summary:
    'Checks that this binary can take over the state directory: loads state.json, the agent key (and\n' +
    'that it is the enrolled one) and re-verifies the pinned root chain. Reads only; exit 0 when all pass.',
  usage: '--state DIR',
  options: { state: { type: 'string' } },
  async run(p, io) {
    const r = await selfTest(str(p, 'state'));
    if (r.ok) io.out(`self-test ok: ferry-agent ${VERSION}; ${r.notes.join('; ')}`);
    else if (r.failed) io.err(`self-test FAILED: ${r.failed.check}: ${r.failed.code}: ${r.failed.message}`);
    return r.ok ? 0 : 1;
  },
};

const version: Command = {
  summary: 'Prints the agent version (stamped at build time).',
  usage: '',
  options: {},
  run(_p, io) {
    io.out(VERSION);
    return Promise.resolve(0);
  },
};

const COMMANDS: Record<string, Command> = {
  run: agentRun,
  poll: agentPoll,
  status: agentStatus,
  rollback: agentRollback,
  version,
  'self-test': agentSelfTest,
  doctor: agentDoctor,
};

function help(io: Io): void {
  io.out(`ferry-agent ${VERSION} — the ferry node agent\n\nUsage: ferry-agent <command> [options]\n`);
  for (const [name, cmd] of Object.entries(COMMANDS)) io.out(`  ferry-agent ${name} ${cmd.usage}`);
  io.out('\nEach command takes --help. Exit codes: 0 success, 1 refused or failed, 2 usage error.');
}

export async function main(argv: string[], io: Io = stdio): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    help(io);
    return name === undefined ? 2 : 0;
  }
  if (name === '--version') return version.run({ values: {}, positionals: [], json: false }, io);
  const cmd = COMMANDS[name];
  if (!cmd) {
    io.err(`ferry-agent: USAGE: unknown command ${name} (see ferry-agent --help)`);
    return 2;
  }
  return runCommand(cmd, `ferry-agent ${name}`, rest, io);
}

process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw e;
});

process.exitCode = await main(process.argv.slice(2));
