#!/usr/bin/env node
import { runCommand, stdio, useServiceCrypto, wrapText, type Command, type Io } from './cli/common.js';
import { createLogger } from '../platform/log.js';
import { useLibsodium } from '../core/ed25519.js';
import { VERSION } from './version.js';

/**
 * Each group's module is loaded only when one of its commands runs, so
 * `ferry bundle verify` does not pay for the mirror's HTTP server and watcher.
 */
const GROUPS: Record<string, () => Promise<Record<string, Command>>> = {
  keys: async () => {
    const m = await import('./cli/keys.js');
    return { generate: m.keysGenerate };
  },
  trust: async () => {
    const m = await import('./cli/trust.js');
    return { init: m.trustInit, rotate: m.trustRotate, show: m.trustShow };
  },
  bundle: async () => {
    const m = await import('./cli/bundle.js');
    return { create: m.bundleCreate, sign: m.bundleSign, inspect: m.bundleInspect, verify: m.bundleVerify };
  },
  agent: async () => {
    const m = await import('./cli/agent.js');
    const d = await import('./cli/doctor.js');
    return {
      run: m.agentRun,
      poll: m.agentPoll,
      status: m.agentStatus,
      rollback: m.agentRollback,
      version: m.agentVersion,
      doctor: d.agentDoctor,
    };
  },
  mirror: async () => {
    const m = await import('./cli/mirror.js');
    const d = await import('./cli/mirror-doctor.js');
    return {
      serve: m.mirrorServe,
      import: m.mirrorImport,
      status: m.mirrorStatus,
      'export-telemetry': m.mirrorExportTelemetry,
      'import-ack': m.mirrorImportAck,
      identity: m.mirrorIdentityCommand,
      'token create': m.mirrorTokenCreate,
      'token list': m.mirrorTokenList,
      'token revoke': m.mirrorTokenRevoke,
      'agent list': m.mirrorAgentList,
      'agent revoke': m.mirrorAgentRevoke,
      ...(await rolloutCommands()),
      doctor: d.mirrorDoctor,
    };
  },
  bootstrap: async () => {
    const m = await import('./cli/bootstrap.js');
    return { ssh: m.bootstrapSsh };
  },
  server: async () => {
    const m = await import('./cli/server.js');
    return {
      start: m.serverStart,
      'import-telemetry': m.serverImportTelemetry,
      'register-mirror': m.serverRegisterMirror,
      identity: m.serverIdentity,
      agents: m.serverAgents,
      ...(await import('./cli/server-admin.js').then((a) => ({
        'audit verify': a.serverAuditVerify,
        'user add': a.serverUserAdd,
        'token create': a.serverTokenCreate,
        'site add': a.serverSiteAdd,
        'site list': a.serverSiteList,
        'release add': a.serverReleaseAdd,
        bundle: a.serverBundle,
        'bundle import': a.serverBundleImport,
      }))),
      ...(await import('./cli/server-rollback.js').then((b) => ({ rollback: b.serverRollback }))),
    };
  },
};

async function rolloutCommands(): Promise<Record<string, Command>> {
  const r = await import('./cli/rollout.js');
  return {
    'rollout status': r.mirrorRolloutStatus,
    'rollout approve': r.mirrorRolloutApprove,
    'rollout halt': r.mirrorRolloutHalt,
    'rollout resume': r.mirrorRolloutResume,
    'rollout abort': r.mirrorRolloutAbort,
    'update-now': r.mirrorUpdateNow,
    'run-now': r.mirrorRunNow,
  };
}

/** Columns group help wraps summaries at. */
const HELP_WIDTH = 100;

async function help(io: Io): Promise<void> {
  io.out(
    `ferry ${VERSION} — signed software delivery into air-gapped networks\n\nUsage: ferry <group> <command> [options]\n`,
  );
  for (const [group, load] of Object.entries(GROUPS)) {
    for (const [name, cmd] of Object.entries(await load())) io.out(`  ferry ${group} ${name} ${cmd.usage}`);
  }
  io.out('\nEach command takes --help. Exit codes: 0 success, 1 refused or failed, 2 usage error.');
}

export async function main(argv: string[], io: Io = stdio): Promise<number> {
  const [group, name, ...rest] = argv;
  if (group === undefined || group === '--help' || group === '-h' || group === 'help') {
    await help(io);
    return group === undefined ? 2 : 0;
  }
  if (group === '--version' || group === 'version') {
    io.out(VERSION);
    return 0;
  }
  const load = Object.hasOwn(GROUPS, group) ? GROUPS[group] : undefined;
  const cmds = load ? await load() : undefined;
  // Two-word commands (`ferry mirror token create`) are keyed by both words.
  const sub = cmds && name !== undefined && rest[0] !== undefined ? `${name} ${rest[0]}` : undefined;
  const full = sub !== undefined && cmds && Object.hasOwn(cmds, sub) ? sub : name;
  const cmd = cmds && full !== undefined && Object.hasOwn(cmds, full) ? cmds[full] : undefined;
  if (cmd && full !== name) rest.shift();
  if (!cmds || !cmd) {
    const family = cmds ? Object.entries(cmds).filter(([n]) => n.startsWith(`${name} `)) : [];
    if (cmds && (name === undefined || name === '--help' || name === '-h' || family.length > 0)) {
      // whole summaries, re-wrapped: a summary is never cut off mid-sentence
      for (const [n, c] of family.length > 0 ? family : Object.entries(cmds))
        io.out(`ferry ${group} ${n} ${c.usage}\n${wrapText(c.summary, HELP_WIDTH, '    ')}\n`);
      io.out(`Each command takes --help for its options.`);
      const asked = rest[0] === '--help' || rest[0] === '-h' || name === '--help' || name === '-h';
      return asked ? 0 : 2;
    }
    io.err(`ferry: USAGE: unknown command ${[group, name].filter(Boolean).join(' ')} (see ferry --help)`);
    return 2;
  }
  // Operator and auditor commands sign and verify with libsodium (the project's chosen Ed25519 library); commands that
  // verify heartbeats in bulk use sodium-native on a worker thread (core/ed25519.ts); the agent node:crypto.
  if (cmd.crypto === 'service') {
    const log = createLogger({ component: group });
    await useServiceCrypto((event, fields) => log.warn(event, fields));
  } else if (group !== 'agent') await useLibsodium();
  return runCommand(cmd, `ferry ${group} ${full}`, rest, io);
}

// `ferry … | head`: a reader that goes away is not an error worth a stack trace.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw e;
});

process.exitCode = await main(process.argv.slice(2));
