"""The official broker's ``config.yaml`` read as it is: key-by-key mapping, one warning, env wins."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from zgserve.broker.official_config import is_official, parse_duration, translate
from zgserve.broker.settings import load_settings
from zgserve.common.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"

# Written the way the official docs (api/inference/docs/CONFIG.md, config/config.go) lay it out.
OFFICIAL = f"""
allowOrigins: ["https://app.example.com"]
contractAddress: "0xa79F4c8311FF93C06b8CfB403690cc987c93F91E"
database:
  dsn: "root:123456@tcp(mysql:3306)/provider?parseTime=true"
event:
  listenAddr: ":8088"
gasPrice: ""
interval:
  autoSettleBufferTime: 60s
  forceSettlementProcessor: 24h
  settlementProcessor: 5m
  reconciliationProcessor: 10m
settlement:
  minSettlementFee: "4000000000000000"
network:
  url: "https://evmrpc-testnet.0g.ai"
  chainID: 16602
  privateKeys:
    - "{KEY}"
  transactionLimit: 1000000
  gasEstimationBuffer: 10000
monitor:
  enable: true
  eventAddress: "0g-serving-provider-event:3081"
service:
  servingUrl: "https://provider.example.com:3080"
  targetUrl: "http://vllm:8000"
  inputPrice: "50000000000"
  outputPrice: "100000000000"
  type: chatbot
  model: "qwen/qwen-2.5-7b-instruct"
  verifiability: TeeML
  providerStake: "100000000000000000000"
  additionalSecret:
    Authorization: "Bearer sk-upstream-secret"
  providerType: centralized
  providerIdentity: openai
  enforceMaxCompletionTokens: true
  stripBodyFields: [logprobs]
  modelInfo:
    name: "Qwen 2.5 7B Instruct"
    description: "General chat model"
    contextLength: 32768
    maxCompletionTokens: 8192
    architecture: {{modality: "text->text", inputModalities: [text], outputModalities: [text]}}
    supportedParameters: [temperature, top_p, max_tokens]
  modelPricing:
    - model: "qwen/qwen-2.5-7b-instruct"
      inputPrice: "50000000000"
      outputPrice: "100000000000"
      modelAliases: ["qwen-2.5-7b"]
      canonicalId: "qwen-2.5-7b"
      tiers:
        - {{maxInputTokens: 32000, inputMultiplier: 1, outputMultiplier: 1}}
        - {{maxInputTokens: 0, inputMultiplier: 3, inputMultiplierDenominator: 2, outputMultiplier: 2}}
    - model: "deepseek/deepseek-v3"
      inputPrice: "80000000000"
      outputPrice: "240000000000"
      upstreamModel: "deepseek-chat"
      cacheTokenBilling: {{enabled: true, divisor: 10}}
      injectBodyFields: {{provider: {{order: [DeepInfra]}}}}
tieredPricing:
  enabled: true
  tiers:
    - {{maxInputTokens: 128000, inputMultiplier: 1, outputMultiplier: 1}}
    - {{maxInputTokens: 0, inputMultiplier: 2, outputMultiplier: 2}}
cacheTokenBilling:
  enabled: true
  divisor: 4
  writeMultiplierNumerator: 5
  writeMultiplierDenominator: 4
whitelist:
  enabled: true
  userAddresses: ["0x1111111111111111111111111111111111111111"]
concurrencyLimit:
  maxGlobalConcurrent: 20
  maxPerUserConcurrent: 5
  perUserRPM: 30
priceFeed:
  sources: [coingecko, binance]
  updateInterval: 1m
providerHttp:
  totalTimeout: 10m
logger:
  level: info
  format: text
nvGPU: true
chatCacheExpiration: 20m
"""

UNIMPLEMENTED = [
    "database.dsn",
    "interval.reconciliationProcessor",
    "settlement.minSettlementFee",
    "network.transactionLimit",
    "network.gasEstimationBuffer",
    "service.providerType",
    "service.providerIdentity",
    "service.stripBodyFields",
    "service.modelPricing[1].injectBodyFields",
    "cacheTokenBilling.writeMultiplierNumerator",
    "cacheTokenBilling.writeMultiplierDenominator",
    "chatCacheExpiration",
    "event.listenAddr",
    "gasPrice",
    "logger.level",
    "logger.format",
    "monitor.enable",
    "monitor.eventAddress",
    "nvGPU",
    "priceFeed.sources",
    "priceFeed.updateInterval",
    "providerHttp.totalTimeout",
]


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.upper().startswith("ZGSERVE_BROKER__"):
            monkeypatch.delenv(name)


@pytest.fixture
def official_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(OFFICIAL)
    return path


def test_official_file_loads_and_maps_key_by_key(official_file: Path) -> None:
    s = load_settings(official_file)
    assert s.serving_url == "https://provider.example.com:3080"
    assert s.target_url == "http://vllm:8000/v1"
    assert s.model == "qwen/qwen-2.5-7b-instruct"
    assert (s.input_price, s.output_price) == (50_000_000_000, 100_000_000_000)
    assert [k.get_secret_value() for k in s.private_keys] == [KEY]
    assert s.network.rpc_url == "https://evmrpc-testnet.0g.ai"
    assert s.network.chain_id == 16602
    assert s.network.inference_address == "0xa79F4c8311FF93C06b8CfB403690cc987c93F91E"
    assert s.server.allow_origins == ["https://app.example.com"]
    assert s.upstream.headers["Authorization"].get_secret_value() == "Bearer sk-upstream-secret"
    assert s.registration.service_type == "chatbot"
    assert s.registration.verifiability == "TeeML"
    assert s.registration.stake == 100 * 10**18
    # The MySQL DSN is not ours: our default database stays.
    assert s.database.url == "sqlite+aiosqlite:///./zgserve-broker.db"
    assert s.settlement.interval_seconds == 300
    assert s.settlement.max_age_seconds == 86_400
    assert s.settlement.refund_margin_seconds == 60

    qwen, deepseek = s.models
    assert qwen.id == "qwen/qwen-2.5-7b-instruct"
    assert (qwen.input_price, qwen.output_price) == (50_000_000_000, 100_000_000_000)
    assert qwen.aliases == ["qwen-2.5-7b"]
    assert qwen.canonical_id == "qwen-2.5-7b"
    assert [
        (t.max_input_tokens, t.input_multiplier, t.input_multiplier_denominator) for t in qwen.tiered_pricing
    ] == [
        (32000, 1, 1),
        (0, 3, 2),
    ]
    # No own cache block: the service-level one applies (as officially).
    assert qwen.cache_token_billing is not None
    assert qwen.cache_token_billing.divisor == 4
    # enforceMaxCompletionTokens makes the advertised maximum our cap; modelInfo is shared.
    assert qwen.max_output_tokens == 8192
    assert qwen.context_length == 32768
    assert qwen.model_info["name"] == "Qwen 2.5 7B Instruct"
    assert deepseek.id == "deepseek/deepseek-v3"
    assert deepseek.upstream_model == "deepseek-chat"
    assert deepseek.cache_token_billing is not None
    assert deepseek.cache_token_billing.divisor == 10
    # No own tiers: the service-level tieredPricing applies.
    assert [t.max_input_tokens for t in deepseek.tiered_pricing] == [128000, 0]
    assert [t.output_multiplier for t in deepseek.tiered_pricing] == [1, 2]
    # concurrencyLimit and whitelist map onto our limits section, key by key.
    assert (s.limits.max_global_concurrent, s.limits.max_per_user_concurrent, s.limits.per_user_rpm) == (
        20,
        5,
        30,
    )
    assert s.limits.whitelist == ["0x1111111111111111111111111111111111111111"]


def test_one_warning_lists_exactly_the_unimplemented_keys(
    official_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="zgserve.broker.official_config"):
        load_settings(official_file)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    listed = warnings[0].getMessage().split("(ignored): ", 1)[1].split(", ")
    assert sorted(listed) == sorted(UNIMPLEMENTED)
    assert translate(yaml.safe_load(OFFICIAL)).unimplemented == listed


def test_environment_overrides_the_official_file(
    official_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZGSERVE_BROKER__INPUTPRICE", "7")
    monkeypatch.setenv("ZGSERVE_BROKER__NETWORK__RPCURL", "http://127.0.0.1:8545")
    monkeypatch.setenv("ZGSERVE_BROKER__SETTLEMENT__INTERVALSECONDS", "11")
    s = load_settings(official_file)
    assert s.input_price == 7
    assert s.network.rpc_url == "http://127.0.0.1:8545"
    assert s.network.chain_id == 16602  # the file's, where the environment is silent
    assert s.settlement.interval_seconds == 11


def test_our_keys_mix_into_an_official_file_and_stay_strict(tmp_path: Path) -> None:
    data = yaml.safe_load(OFFICIAL)
    data["network"]["ledgerAddress"] = "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"
    data["database"] = {"dsn": "postgres://zg:pw@db:5432/broker"}
    data["settlement"]["enabled"] = False
    data["tee"] = {"backend": "simulated"}
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(data))
    s = load_settings(path)
    assert s.network.ledger_address == "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"
    assert s.database.url == "postgresql+asyncpg://zg:pw@db:5432/broker"
    assert s.settlement.enabled is False
    assert s.settlement.interval_seconds == 300
    assert s.tee.backend == "simulated"
    data["tee"]["bogus"] = 1
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"tee\.bogus: unknown key"):
        load_settings(path)


def test_single_model_file_and_our_layout_untouched() -> None:
    ours = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    assert not is_official(ours)
    assert translate(ours).data == ours
    minimal = {
        "service": {
            "servingUrl": "http://b:3080",
            "targetUrl": "http://s:8000",
            "model": "m",
            "inputPrice": 1,
            "outputPrice": 2,
        }
    }
    result = translate(minimal)
    assert result.official
    assert result.unimplemented == []
    assert "models" not in result.data
    assert result.data["model"] == "m"


@pytest.mark.parametrize(
    ("service", "message"),
    [
        ({"priceDenomination": "USD"}, "priceDenomination"),
        ({"type": "video-generation"}, "service.type"),
        ({"inputPrice": 1.5}, "not floats"),
    ],
)
def test_what_we_cannot_honour_stops_start_up(service: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        translate({"service": {"model": "m", "inputPrice": 1, "outputPrice": 1} | service})


def test_durations() -> None:
    assert parse_duration("1h30m", "x") == 5400
    assert parse_duration(60, "x") == 60
    assert parse_duration("500ms", "x") == 0.5
    with pytest.raises(ConfigError, match="not a duration"):
        parse_duration("soon", "x")


def test_config_check_prints_masked_configuration(official_file: Path) -> None:
    exe = Path(sys.executable).parent / "zgserve"
    done = subprocess.run([str(exe), "config", "check", str(official_file)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "official broker layout" in out
    assert KEY.removeprefix("0x") not in out
    assert "sk-upstream-secret" not in out
    assert "**********" in out
    effective = yaml.safe_load(out)
    assert effective["servingUrl"] == "https://provider.example.com:3080"
    assert effective["privateKeys"] == ["**********"]
    assert effective["upstream"]["headers"] == {"Authorization": "**********"}
    for key in UNIMPLEMENTED:
        assert f"#   {key}\n" in out


def test_config_check_exits_1_on_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        OFFICIAL.replace('inputPrice: "50000000000"\n  outputPrice', 'inputPrice: "lots"\n  outputPrice', 1)
    )
    exe = Path(sys.executable).parent / "zgserve"
    done = subprocess.run([str(exe), "config", "check", str(bad)], capture_output=True, text=True)
    assert done.returncode == 1
    assert "service.inputPrice" in done.stderr
