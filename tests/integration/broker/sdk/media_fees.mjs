// The official SDK's own fee for media answers (@0gfoundation/0g-compute-ts-sdk 0.9.0, unchanged):
// for each case, the extractor of the provider's service type, calculateFee on the content a user
// passes to processResponse, then processResponse itself (the signature check). Prints one JSON line.
//
// Environment: RPC_URL, LEDGER, INFERENCE, USER_KEY, CASES (JSON: [{provider, chatID, content}]).
import { createRequire } from 'node:module';

const require = createRequire(process.cwd() + '/');
const { ethers } = require('ethers');
const { createZGComputeNetworkBroker } = require('@0gfoundation/0g-compute-ts-sdk');

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`missing ${name}`);
  return value;
};

const wallet = new ethers.Wallet(env('USER_KEY'), new ethers.JsonRpcProvider(env('RPC_URL')));
const broker = await createZGComputeNetworkBroker(wallet, env('LEDGER'), env('INFERENCE'));
const out = [];
for (const { provider, chatID, content } of JSON.parse(env('CASES'))) {
  const processor = broker.inference.responseProcessor;
  const extractor = await processor.getExtractor(provider, false);
  const fee = await processor.calculateFee(extractor, content);
  const valid = await broker.inference.processResponse(provider, chatID, content);
  out.push({ fee: fee.toString(), valid });
}
console.log('RESULT ' + JSON.stringify(out));
process.exit(0);
