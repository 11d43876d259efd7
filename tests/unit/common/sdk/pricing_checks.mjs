// The official SDK's own pricing code (@0gfoundation/0g-compute-ts-sdk 0.9.0, unchanged), run on
// cases given as a JSON file: its /v1/models parsers (parseTieredPricingFromModelInfo,
// parseCacheTokenBillingFromModelInfo) on a `pricing` object, and its fee calculation
// (ZGServingUserBrokerBase.calculateFee with the ChatBot extractor) on a usage object.
//
// Usage: node pricing_checks.mjs CASES.json, run with node/ (which holds node_modules) as cwd.
// CASES.json: [{pricing, usage, unitPrices: [input, output]}], prices as decimal strings.
// Prints one line: RESULT [{tiers, cache, feeAtBase, feeAtUnitPrices}], fees as decimal strings.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import path from 'node:path';

const require = createRequire(process.cwd() + '/');
// The package exports only its root, which re-exports neither the ModelInfo parsers nor the
// extractor; load the compiled modules by file path (a path require ignores "exports").
const commonjs = path.dirname(require.resolve('@0gfoundation/0g-compute-ts-sdk')); // .../lib.commonjs
const model = require(path.join(commonjs, 'inference', 'broker', 'read-only-model.js'));
const { ZGServingUserBrokerBase } = require(path.join(commonjs, 'inference', 'broker', 'base.js'));
const { ChatBot } = require(path.join(commonjs, 'inference', 'extractor', 'chatbot.js'));

// calculateFee reads nothing from its instance, so an instance built without the constructor
// (which wants a contract, a ledger and a cache) runs the SDK's own method body as it is.
const broker = Object.create(ZGServingUserBrokerBase.prototype);

async function sdkFee(inputPrice, outputPrice, usage) {
  const extractor = new ChatBot({ inputPrice, outputPrice });
  // processResponse hands calculateFee the usage object as a JSON string; do the same.
  const fee = await broker.calculateFee(extractor, JSON.stringify(usage));
  return fee.toString();
}

const cases = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const out = [];
for (const c of cases) {
  const modelInfo = { id: 'm', pricing: c.pricing };
  out.push({
    tiers: model.parseTieredPricingFromModelInfo(modelInfo) ?? null,
    cache: model.parseCacheTokenBillingFromModelInfo(modelInfo) ?? null,
    feeAtBase: await sdkFee(c.pricing.prompt, c.pricing.completion, c.usage),
    feeAtUnitPrices: await sdkFee(c.unitPrices[0], c.unitPrices[1], c.usage),
  });
}
console.log('RESULT ' + JSON.stringify(out));
