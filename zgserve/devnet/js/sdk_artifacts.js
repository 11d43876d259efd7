// Prints {"LedgerManager": {abi, bytecode}, "InferenceServing": {abi, bytecode}} read from
// the typechain factories of the official 0G SDK package whose folder is argv[2].
"use strict";
const path = require("path");
const sdk = process.argv[2];
const factories = {
  LedgerManager: "lib.commonjs/ledger/contract/typechain/factories/LedgerManager__factory.js",
  InferenceServing: "lib.commonjs/inference/contract/typechain/factories/InferenceServing__factory.js",
};
const out = {};
for (const [name, file] of Object.entries(factories)) {
  const factory = require(path.join(sdk, file))[`${name}__factory`];
  out[name] = { abi: factory.abi, bytecode: factory.bytecode };
}
process.stdout.write(JSON.stringify(out));
