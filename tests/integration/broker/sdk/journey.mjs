// The user journey with the official SDK (@0gfoundation/0g-compute-ts-sdk 0.9.0), unchanged:
// ledger, listService, getRequestHeaders, chat (non-streamed and streamed) through the broker,
// processResponse, verifyService and the provider's /unsettledfee. Prints one JSON object.
//
// Environment: RPC_URL, LEDGER, INFERENCE, USER_KEY, PROVIDER, OUT_DIR.
import { createRequire } from 'node:module';

const require = createRequire(process.cwd() + '/');
const { ethers } = require('ethers');
const { createZGComputeNetworkBroker } = require('@0gfoundation/0g-compute-ts-sdk');

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`missing ${name}`);
  return value;
};

async function readStream(response) {
  const decoder = new TextDecoder();
  let text = '';
  for await (const chunk of response.body) text += decoder.decode(chunk, { stream: true });
  let usage = null;
  let firstId = null;
  let content = '';
  for (const block of text.split('\n\n')) {
    if (!block.startsWith('data: ')) continue;
    const data = block.slice(6);
    if (data === '[DONE]') continue;
    const event = JSON.parse(data);
    firstId = firstId ?? event.id;
    if (event.usage) usage = event.usage;
    for (const choice of event.choices ?? []) content += choice.delta?.content ?? '';
  }
  return { usage, firstId, content };
}

async function main() {
  const provider = new ethers.JsonRpcProvider(env('RPC_URL'));
  const wallet = new ethers.Wallet(env('USER_KEY'), provider);
  const providerAddress = env('PROVIDER');
  const broker = await createZGComputeNetworkBroker(wallet, env('LEDGER'), env('INFERENCE'));
  const out = {};

  await broker.ledger.addLedger(5);
  // listService pages by 50 and drops unacknowledged services after paging (a short page is not
  // the end); the shared test devnet holds more providers than one page: page over all of them,
  // then apply the SDK's own rule (listed = acknowledged TEE signer).
  const services = [];
  for (let offset = 0; ; offset += 50) {
    const page = await broker.inference.listService(offset, 50, true);
    services.push(...page);
    if (page.length < 50) break;
  }
  out.listed = services.some(
    (s) => s.provider.toLowerCase() === providerAddress.toLowerCase() && s.teeSignerAcknowledged,
  );

  const { endpoint, model } = await broker.inference.getServiceMetadata(providerAddress);
  out.endpoint = endpoint;

  const ask = async (stream, chosen = model) => {
    const headers = await broker.inference.getRequestHeaders(providerAddress);
    const body = { model: chosen, messages: [{ role: 'user', content: 'What is 0G?' }], max_tokens: 16 };
    if (stream) Object.assign(body, { stream: true, stream_options: { include_usage: true } });
    const response = await fetch(`${endpoint}/chat/completions`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...headers },
      body: JSON.stringify(body),
    });
    if (!response.ok) throw new Error(`chat failed: ${response.status} ${await response.text()}`);
    const resKey = response.headers.get('ZG-Res-Key');
    const result = stream ? await readStream(response) : await response.json();
    const bodyId = stream ? result.firstId : result.id;
    const chatID = resKey || bodyId;
    const valid = await broker.inference.processResponse(providerAddress, chatID, JSON.stringify(result.usage));
    return { resKey, bodyId, chatID, usage: result.usage, valid, authorization: headers.Authorization };
  };

  out.plain = await ask(false);
  out.stream = await ask(true);
  // MODELS (comma-separated): one more plain chat with each other model of the provider's catalog.
  out.models = {};
  for (const other of (process.env.MODELS || '').split(',').filter(Boolean)) {
    out.models[other] = await ask(false, other);
  }
  out.unsettledFee = (await broker.inference.requestProcessor.fetchUnsettledFee(providerAddress)).toString();
  const verification = await broker.inference.verifyService(providerAddress, env('OUT_DIR'));
  out.signerMatch = verification.signerVerification.allMatch;
  out.account = (await broker.inference.getAccount(providerAddress)).balance.toString();
  console.log('RESULT ' + JSON.stringify(out));
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
