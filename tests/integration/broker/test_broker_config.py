"""The broker configured as the README says works: ``config.example.yaml`` as shipped serves a chat.

Only what names the test's own machine and chain is substituted (the devnet's RPC,
chain id, contract addresses and a fresh provider key; the loopback ports of the
broker and the service): every other key, ``targetUrl``'s shape included (the
service's address, without ``/v1``), is the file's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai
import pytest
import yaml

from tests.asgi import serve
from tests.integration.broker.conftest import FundedUser, make_token
from zgserve.broker.app import create_app
from zgserve.broker.settings import load_settings
from zgserve.common.net import free_port
from zgserve.devnet.network import Devnet

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "config.example.yaml"


def _with_netloc(url: str, netloc: str) -> str:
    """``url`` with only its host:port replaced (scheme and path as written)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=netloc))


def example_config(devnet: Devnet, provider_key: str, broker_port: int, service_url: str) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    deployment = devnet.deployment
    service = urlsplit(service_url).netloc
    config["servingUrl"] = _with_netloc(config["servingUrl"], f"127.0.0.1:{broker_port}")
    config["targetUrl"] = _with_netloc(config["targetUrl"], service)
    config["privateKeys"] = [provider_key]
    config["network"] |= {
        "rpcUrl": devnet.rpc_url,
        "chainId": deployment.chain_id,
        "ledgerAddress": deployment.contracts.ledger,
        "inferenceAddress": deployment.contracts.inference,
        "serviceName": deployment.service_name,
    }
    config["server"]["port"] = broker_port
    return config


async def chat_with(
    settings: Any, port: int, devnet: Devnet, provider: Any, funded_user: FundedUser, model: str
) -> Any:
    """Run a broker with ``settings`` on ``port``, acknowledged by the owner, and have a funded
    user chat with ``model`` through it with the ``openai`` client; the completion."""
    async with serve(create_app(settings), port) as url:
        owner = devnet.chain.inference(devnet.owner_wallet())
        await owner.acknowledge_tee_signer_by_owner(provider.address)
        user = await funded_user(provider.address)
        token = make_token(user.private_key, provider.address).removeprefix("Bearer ")
        async with openai.AsyncOpenAI(base_url=url + "/v1/proxy", api_key=token, max_retries=0) as client:
            chat = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "say hello"}], max_tokens=8
            )
        return chat


def test_target_url_with_or_without_v1_means_the_same_service() -> None:
    base = {"servingUrl": "http://127.0.0.1:1", "model": "m", "inputPrice": 1, "outputPrice": 1}
    for written in ("http://svc:8000", "http://svc:8000/", "http://svc:8000/v1", "http://svc:8000/v1/"):
        assert load_settings(None, **base, targetUrl=written).target_url == "http://svc:8000/v1"
    assert load_settings(None, **base, targetUrl="https://h/api").target_url == "https://h/api/v1"
    shipped = yaml.safe_load(EXAMPLE.read_text())["targetUrl"]
    assert load_settings(None, **base, targetUrl=shipped).target_url == shipped.rstrip("/") + "/v1"


async def test_example_config_as_shipped_serves_a_chat(
    devnet: Devnet,
    service_url: str,
    funded_user: FundedUser,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Relative paths in the file (the SQLite database, the simulated TEE's key file) land here.
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):  # the file alone, as an operator starting from it would have it
        if name.upper().startswith("ZGSERVE_BROKER__"):
            monkeypatch.delenv(name)
    provider = await devnet.new_account()
    port = free_port()
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(example_config(devnet, provider.private_key, port, service_url)))
    settings = load_settings(config_file)
    assert not urlsplit(yaml.safe_load(config_file.read_text())["targetUrl"]).path.rstrip("/")

    chat = await chat_with(settings, port, devnet, provider, funded_user, settings.model)
    assert chat.choices[0].message.content
    assert chat.usage is not None
    assert chat.usage.completion_tokens > 0
