// The `berth` command line. Every command prints a table (or a short line) and takes --json.
// This file holds only the program: global options, one register call per command group
// (src/cli/commands/*), and the error printer; the groups register in the order `--help` lists them.
import { Command } from 'commander';
import { resolve } from 'node:path';
import { ApiError } from './client.js';
import { registerAliases } from './commands/aliases.js';
import { registerApply } from './commands/apply.js';
import { registerCheckpoints } from './commands/checkpoints.js';
import { registerFolders } from './commands/folders.js';
import { registerNodes } from './commands/nodes.js';
import { registerSecrets } from './commands/secrets.js';
import { registerServer } from './commands/server.js';
import { registerTokens } from './commands/tokens.js';
import { registerUsage } from './commands/usage.js';

const program = new Command();
program.name('berth').description('Self-hosted model serving: cell nodes from Python checkpoints, balanced and health-checked.')
  .option('--url <url>', 'Berth server URL (default: $BERTH_URL, the running server in $BERTH_HOME, or http://127.0.0.1:7700)')
  .option('--ca <file>', 'trust this PEM certificate for an https URL, e.g. a self-signed --tls-cert (default: $BERTH_CA)')
  .showHelpAfterError();
program.hook('preAction', () => { const ca = program.opts<{ ca?: string }>().ca; if (ca) process.env.BERTH_CA = resolve(ca); });

registerServer(program);       // up, status
registerCheckpoints(program);  // checkpoint …
registerNodes(program);        // node …
registerApply(program);        // apply -f
registerAliases(program);      // alias …
registerSecrets(program);      // secret …
registerTokens(program);       // token …
registerFolders(program);      // folder …, audit
registerUsage(program);        // usage

program.parseAsync().catch((err: unknown) => {
  if (err instanceof ApiError) {
    console.error(`error: ${err.code}: ${err.message}`);
    const d = { ...err.details };
    if (Array.isArray(d.traceback)) { console.error((d.traceback as string[]).join('')); delete d.traceback; }
    if (Object.keys(d).length) console.error(JSON.stringify(d, null, 2));
  } else {
    console.error(`error: ${(err as Error).message}`);
  }
  process.exit(1);
});
