#!/usr/bin/env node
import { bundleCreate, bundleInspect, bundleSign, bundleVerify } from './cli/bundle.js';
import { runCommand, stdio, type Command, type Io } from './cli/common.js';
import { keysGenerate } from './cli/keys.js';
import { mirrorImport, mirrorServe, mirrorStatus } from './cli/mirror.js';
import { trustInit, trustRotate } from './cli/trust.js';
import { VERSION } from './version.js';

const COMMANDS: Record<string, Record<string, Command>> = {
  keys: { generate: keysGenerate },
  trust: { init: trustInit, rotate: trustRotate },
  bundle: { create: bundleCreate, sign: bundleSign, inspect: bundleInspect, verify: bundleVerify },
  mirror: { serve: mirrorServe, import: mirrorImport, status: mirrorStatus },
};

function help(io: Io): void {
  io.out(
    `ferry ${VERSION} — signed software delivery into air-gapped networks\n\nUsage: ferry <group> <command> [options]\n`,
  );
  for (const [group, cmds] of Object.entries(COMMANDS)) {
    for (const [name, cmd] of Object.entries(cmds)) io.out(`  ferry ${group} ${name} ${cmd.usage}`);
  }
  io.out('\nEach command takes --help. Exit codes: 0 success, 1 refused or failed, 2 usage error.');
}

export async function main(argv: string[], io: Io = stdio): Promise<number> {
  const [group, name, ...rest] = argv;
  if (group === undefined || group === '--help' || group === '-h' || group === 'help') {
    help(io);
    return group === undefined ? 2 : 0;
  }
  if (group === '--version' || group === 'version') {
    io.out(VERSION);
    return 0;
  }
  const cmds = COMMANDS[group];
  const cmd = cmds && name !== undefined ? cmds[name] : undefined;
  if (!cmds || !cmd) {
    if (cmds && (name === undefined || name === '--help' || name === '-h')) {
      for (const [n, c] of Object.entries(cmds))
        io.out(`ferry ${group} ${n} ${c.usage}\n    ${c.summary.split('\n')[0]}`);
      return name === undefined ? 2 : 0;
    }
    io.err(`ferry: USAGE: unknown command ${[group, name].filter(Boolean).join(' ')} (see ferry --help)`);
    return 2;
  }
  return runCommand(cmd, `${group} ${name}`, rest, io);
}

process.exitCode = await main(process.argv.slice(2));
