// The official SDK's own dstack checks (@0gfoundation/0g-compute-ts-sdk 0.9.0, unchanged):
// Verifier.processDStackVerification (compose hash) and Verifier.extractTeeSignerAddress
// (the signer read from report_data), run on reports given as a JSON file.
//
// Usage: node sdk_dstack_checks.mjs REPORTS.json, where the file maps a name to a report.
// Prints one line: RESULT {name: {compose, composeDetails, signer, log}}.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import path from 'node:path';

const require = createRequire(process.cwd() + '/');
// The package exports only its root, which does not export Verifier; load its compiled
// module by file path instead (a path require is not subject to "exports").
const commonjs = path.dirname(require.resolve('@0gfoundation/0g-compute-ts-sdk')); // .../lib.commonjs
const { Verifier } = require(path.join(commonjs, 'inference', 'broker', 'verifier.js'));

// Neither check touches the chain or the broker: an instance without its constructor
// (which wants a contract and a ledger) runs the SDK's own method bodies as they are.
const verifier = Object.create(Verifier.prototype);

const reports = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const out = {};
for (const [name, report] of Object.entries(reports)) {
  const log = [];
  const result = await verifier.processDStackVerification({ [name]: report }, (type, message) =>
    log.push(`${type}: ${message}`),
  );
  out[name] = {
    compose: result.composeVerificationPassed,
    composeDetails: result.composeDetails[name] ?? null,
    images: result.images,
    signer: verifier.extractTeeSignerAddress(report),
    log,
  };
}
console.log('RESULT ' + JSON.stringify(out));
