// A user's whole journey with the official SDK (@0gfoundation/0g-compute-ts-sdk 0.9.0), unchanged,
// against a zgserve provider. Prints one line "RESULT <json>" (amounts as decimal strings).
//
// PHASE=journey (default): addLedger, listService, verifyService (/v1/quote), acknowledgeProviderSigner,
//   a non-streamed and a streamed chat (getRequestHeaders + fetch), processResponse for both,
//   retrieveFund (the refund request).
// PHASE=collect: retrieveFund again (after lockTime: matured refunds return to the ledger), getLedger.
//
// Environment: RPC_URL, LEDGER, INFERENCE, USER_KEY, PROVIDER, OUT_DIR, DEPOSIT_OG, PHASE.
// Run with node's working directory holding node_modules (the repository's node/ folder).
import { createRequire } from 'node:module';

const require = createRequire(process.cwd() + '/');
const { ethers } = require('ethers');
const { createZGComputeNetworkBroker } = require('@0gfoundation/0g-compute-ts-sdk');

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined || value === '') throw new Error(`missing ${name}`);
  return value;
};

const PROMPT = 'Name the three primary colours.';

// SSE events split on blank lines, "data:" prefixes removed as prefixes (not character sets).
function parseSse(text) {
  const events = [];
  for (const block of text.split(/\r?\n\r?\n/)) {
    const data = block
      .split(/\r?\n/)
      .filter((line) => line.startsWith('data:'))
      .map((line) => line.slice(5).replace(/^ /, ''))
      .join('\n');
    if (data && data !== '[DONE]') events.push(JSON.parse(data));
  }
  return events;
}

async function chat(broker, provider, endpoint, model, stream) {
  const headers = await broker.inference.getRequestHeaders(provider);
  const body = { model, messages: [{ role: 'user', content: PROMPT }], max_tokens: 16 };
  if (stream) Object.assign(body, { stream: true, stream_options: { include_usage: true } });
  const response = await fetch(`${endpoint}/chat/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`chat (stream=${stream}) failed: ${response.status} ${text}`);
  const resKey = response.headers.get('ZG-Res-Key');
  let id, usage, content;
  if (stream) {
    const events = parseSse(text);
    id = events[0]?.id;
    usage = events.findLast((e) => e.usage)?.usage;
    content = events.map((e) => e.choices?.[0]?.delta?.content ?? '').join('');
  } else {
    const json = JSON.parse(text);
    ({ id, usage } = json);
    content = json.choices?.[0]?.message?.content ?? '';
  }
  const chatID = resKey || id;
  const valid = await broker.inference.processResponse(provider, chatID, JSON.stringify(usage));
  return { chatID, resKey, bodyId: id, usage, content, valid };
}

const account = async (broker, provider) => {
  const a = await broker.inference.getAccount(provider);
  return { balance: a.balance.toString(), pendingRefund: a.pendingRefund.toString(), acknowledged: a.acknowledged };
};

const ledger = async (broker) => {
  const l = await broker.ledger.getLedger();
  return { availableBalance: l.availableBalance.toString(), totalBalance: l.totalBalance.toString() };
};

async function journey(broker, provider) {
  const out = {};
  await broker.ledger.addLedger(Number(env('DEPOSIT_OG', '5')));
  out.ledgerAfterDeposit = await ledger(broker);

  const services = await broker.inference.listService();
  const listed = services.find((s) => s.provider.toLowerCase() === provider.toLowerCase());
  out.listed = Boolean(listed);
  out.verifiability = listed?.verifiability;

  const v = await broker.inference.verifyService(provider, env('OUT_DIR'));
  out.verifyService = {
    success: v.success,
    teeVerifier: v.teeVerifier,
    targetSeparated: v.targetSeparated,
    reportsGenerated: v.reportsGenerated,
    signerAllMatch: v.signerVerification?.allMatch,
    signerReports: v.signerVerification?.reportAddresses,
    contractSigner: v.signerVerification?.contractAddress,
    composePassed: v.composeVerification?.passed,
    composeDetails: v.composeVerification?.details,
    dockerImages: v.dockerImages,
    brokerReportTee: v.reportsData?.broker?.tee,
    llmReportTee: v.reportsData?.llm?.tee,
  };

  await broker.inference.acknowledgeProviderSigner(provider);
  out.accountAfterAcknowledge = await account(broker, provider);

  const { endpoint, model } = await broker.inference.getServiceMetadata(provider);
  out.endpoint = endpoint;
  out.model = model;
  out.plain = await chat(broker, provider, endpoint, model, false);
  out.stream = await chat(broker, provider, endpoint, model, true);
  out.accountBeforeRefund = await account(broker, provider);

  await broker.ledger.retrieveFund('inference');
  out.accountAfterRefund = await account(broker, provider);
  out.ledgerAfterRefund = await ledger(broker);
  return out;
}

async function collect(broker, provider) {
  await broker.ledger.retrieveFund('inference');
  return { account: await account(broker, provider), ledger: await ledger(broker) };
}

async function main() {
  const rpc = new ethers.JsonRpcProvider(env('RPC_URL'));
  const wallet = new ethers.Wallet(env('USER_KEY'), rpc);
  const broker = await createZGComputeNetworkBroker(wallet, env('LEDGER'), env('INFERENCE'));
  const provider = env('PROVIDER');
  const phase = env('PHASE', 'journey');
  const out = phase === 'collect' ? await collect(broker, provider) : await journey(broker, provider);
  console.log('RESULT ' + JSON.stringify(out));
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
