import { mkdir } from 'node:fs/promises';
import { generateKeyFiles } from '../../platform/keyfile.js';
import { jsonOption, printJson, str, type Command } from './common.js';

export const keysGenerate: Command = {
  summary:
    'Generates an Ed25519 key pair: DIR/NAME.key (private, mode 0600) and DIR/NAME.pub.\n' +
    'The keyid is the hex SHA-256 of the raw public key.',
  usage: '--out DIR --name NAME [--json]',
  options: { out: { type: 'string' }, name: { type: 'string' }, ...jsonOption },
  async run(p, io) {
    const dir = str(p, 'out');
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const r = await generateKeyFiles(dir, str(p, 'name'));
    if (p.json) printJson(io, { ok: true, ...r });
    else io.out(`keyid ${r.keyid}\n  private ${r.keyPath}\n  public  ${r.pubPath}`);
    return 0;
  },
};
