// What the official SDK (@0gfoundation/0g-compute-ts-sdk 0.9.0), unchanged, reads of a provider's
// catalog: getProviderModels (on-chain service + the provider's /v1/models), the on-chain
// additionalInfo through its parsers, and the per-model pricing parsers. Prints one JSON line.
//
// Environment: RPC_URL, PROVIDER.
import { createRequire } from 'node:module';

const require = createRequire(process.cwd() + '/');
const sdk = require('@0gfoundation/0g-compute-ts-sdk');
// The per-model parsers are not re-exported at the top level; load them from the SDK's own file.
const sdkIndex = require.resolve('@0gfoundation/0g-compute-ts-sdk');
const readOnlyModel = require(sdkIndex.replace(/index\.js$/, 'inference/broker/read-only-model.js'));

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`missing ${name}`);
  return value;
};

async function main() {
  const provider = env('PROVIDER');
  const broker = await sdk.createZGComputeNetworkReadOnlyBroker(env('RPC_URL'));
  const catalog = await broker.inference.getProviderModels(provider);
  // listService pages by 50; the shared test devnet holds more providers than one page.
  const services = [];
  for (let offset = 0; ; offset += 50) {
    const page = await broker.inference.listService(offset, 50, true);
    services.push(...page);
    if (page.length < 50) break;
  }
  const service = services.find((s) => s.provider.toLowerCase() === provider.toLowerCase());
  const info = service.additionalInfo;
  const result = {
    multiModel: catalog.multiModel,
    priceDenomination: catalog.priceDenomination ?? null,
    defaultModel: catalog.defaultModel,
    url: catalog.url,
    models: catalog.models.map((m) => ({
      id: m.id,
      type: m.type,
      prompt: m.pricing?.prompt ?? null,
      completion: m.pricing?.completion ?? null,
      maxCompletionTokens: m.max_completion_tokens ?? null,
      tiers: readOnlyModel.parseTieredPricingFromModelInfo(m) ?? null,
      cache: readOnlyModel.parseCacheTokenBillingFromModelInfo(m) ?? null,
    })),
    onchain: {
      model: service.model,
      inputPrice: service.inputPrice.toString(),
      outputPrice: service.outputPrice.toString(),
      multi: sdk.parseMultiModelInfo(info),
      tiers: sdk.parseTieredPricing(info) ?? null,
      cache: sdk.parseCacheTokenBilling(info) ?? null,
    },
  };
  console.log('RESULT ' + JSON.stringify(result));
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
