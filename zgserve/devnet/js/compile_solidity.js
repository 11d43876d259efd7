// Compiles one Solidity file with solcjs (standard JSON) and prints
// {"version", "contracts": {name: {abi, bytecode}}}. Imports such as
// "@openzeppelin/..." are read from node_modules. argv: node_modules, source file, evmVersion.
"use strict";
const fs = require("fs");
const path = require("path");
const [nodeModules, sourceFile, evmVersion] = process.argv.slice(2);
const solc = require(path.join(nodeModules, "solc"));
const name = path.basename(sourceFile);
const input = {
  language: "Solidity",
  sources: { [name]: { content: fs.readFileSync(sourceFile, "utf8") } },
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion,
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
function findImport(importPath) {
  try {
    return { contents: fs.readFileSync(path.join(nodeModules, importPath), "utf8") };
  } catch (err) {
    return { error: `import not found: ${importPath}` };
  }
}
const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));
const errors = (output.errors || []).filter((e) => e.severity === "error");
if (errors.length) {
  process.stderr.write(errors.map((e) => e.formattedMessage).join("\n"));
  process.exit(1);
}
const contracts = {};
for (const [contractName, c] of Object.entries(output.contracts[name] || {})) {
  contracts[contractName] = { abi: c.abi, bytecode: "0x" + c.evm.bytecode.object };
}
process.stdout.write(JSON.stringify({ version: solc.version(), contracts }));
