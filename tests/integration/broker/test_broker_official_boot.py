"""A broker started from a configuration file written the official broker's way serves a chat.

The file has the official nested layout (``service.*``, ``network.url``/``chainID``/
``privateKeys``, ``contractAddress``, ``database.dsn``, ``interval.*`` ...) plus official
keys zgserve does not implement; only our keys for what the official file cannot say (the
ledger address, the simulated TEE, a local database) come from the environment, which
wins over the file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import yaml

from tests.integration.broker.conftest import INPUT_PRICE, OUTPUT_PRICE, FundedUser
from tests.integration.broker.test_broker_config import chat_with
from zgserve.broker.settings import load_settings
from zgserve.common.net import free_port
from zgserve.devnet.network import Devnet


async def test_official_format_file_starts_the_broker_and_serves_a_chat(
    devnet: Devnet,
    service_url: str,
    funded_user: FundedUser,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper().startswith("ZGSERVE_BROKER__"):
            monkeypatch.delenv(name)
    provider = await devnet.new_account()
    port = free_port()
    deployment = devnet.deployment
    official = {
        "contractAddress": deployment.contracts.inference,
        "database": {"dsn": "root:123456@tcp(mysql:3306)/provider?parseTime=true"},
        "interval": {
            "autoSettleBufferTime": "60s",
            "forceSettlementProcessor": "24h",
            "settlementProcessor": 600,
        },
        "settlement": {"minSettlementFee": "4000000000000000"},
        "network": {
            "url": devnet.rpc_url,
            "chainID": deployment.chain_id,
            "privateKeys": [provider.private_key],
        },
        "service": {
            "servingUrl": f"http://127.0.0.1:{port}",
            "targetUrl": service_url,
            "inputPrice": str(INPUT_PRICE),
            "outputPrice": str(OUTPUT_PRICE),
            "type": "chatbot",
            "model": "fake-model",
            "verifiability": "TeeML",
        },
        "whitelist": {"enabled": False, "userAddresses": []},
        "concurrencyLimit": {"maxGlobalConcurrent": 20, "maxPerUserConcurrent": 5},
        "monitor": {"enable": False},
    }
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(official))
    # Quoted: the environment is read as YAML scalars, and 0x... would be a number.
    monkeypatch.setenv("ZGSERVE_BROKER__NETWORK__LEDGERADDRESS", f'"{deployment.contracts.ledger}"')
    monkeypatch.setenv("ZGSERVE_BROKER__NETWORK__SERVICENAME", deployment.service_name)
    monkeypatch.setenv("ZGSERVE_BROKER__TEE__BACKEND", "simulated")
    monkeypatch.setenv("ZGSERVE_BROKER__DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path}/broker.db")
    monkeypatch.setenv("ZGSERVE_BROKER__SETTLEMENT__ENABLED", "false")

    with caplog.at_level(logging.WARNING, logger="zgserve.broker.official_config"):
        settings = load_settings(config_file)
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for key in (
        "database.dsn",
        "settlement.minSettlementFee",
    ):
        assert key in warning
    # Honoured now: the official limits map onto ours, a disabled whitelist stays empty.
    assert "concurrencyLimit" not in warning
    assert "whitelist" not in warning
    assert (settings.limits.max_global_concurrent, settings.limits.max_per_user_concurrent) == (20, 5)
    assert settings.limits.whitelist == []
    assert settings.network.inference_address == deployment.contracts.inference
    assert settings.settlement.interval_seconds == 600

    chat = await chat_with(settings, port, devnet, provider, funded_user, "fake-model")
    assert chat.choices[0].message.content
    assert chat.usage is not None
    assert chat.usage.completion_tokens > 0
