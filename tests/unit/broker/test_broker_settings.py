"""Strict configuration: official keys, env overrides, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from zgserve.broker.settings import load_settings
from zgserve.common.errors import ConfigError

BASE = """
servingUrl: http://127.0.0.1:3080/
targetUrl: http://127.0.0.1:8000
model: m
inputPrice: 1000
outputPrice: "2000"
privateKeys: ["0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "provider.yaml"
    path.write_text(text)
    return path


def test_example_config_loads() -> None:
    example = Path(__file__).parents[3] / "config.example.yaml"
    settings = load_settings(example)
    assert settings.input_price > 0
    assert settings.database.url.startswith("sqlite+aiosqlite")


def test_official_keys_and_defaults(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, BASE))
    assert s.serving_url == "http://127.0.0.1:3080"
    assert (s.input_price, s.output_price) == (1000, 2000)
    assert s.registration.stake == 100 * 10**18
    assert "59c6" not in repr(s)  # keys never printed


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZGSERVE_BROKER__INPUTPRICE", "77")
    monkeypatch.setenv("ZGSERVE_BROKER__DATABASE__URL", "sqlite+aiosqlite:///x.db")
    monkeypatch.setenv("ZGSERVE_BROKER__ADMIN__TOKEN", "secret")
    s = load_settings(write(tmp_path, BASE))
    assert s.input_price == 77
    assert s.database.url == "sqlite+aiosqlite:///x.db"
    assert s.admin.token is not None
    assert s.admin.token.get_secret_value() == "secret"


def test_unknown_keys_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, BASE + "bogus: 1\ndatabase:\n  urll: x\n"))
    assert "bogus: unknown key" in str(info.value)
    assert "database.urll: unknown key" in str(info.value)
    monkeypatch.setenv("ZGSERVE_BROKER__NOPE", "1")
    with pytest.raises(ConfigError, match="NOPE"):
        load_settings(write(tmp_path, BASE))


def test_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="inputPrice"):
        load_settings(write(tmp_path, BASE.replace("inputPrice: 1000", "inputPrice: 1.5")))
    with pytest.raises(ConfigError, match="model: required key is missing"):
        load_settings(write(tmp_path, BASE.replace("model: m\n", "")))
    with pytest.raises(ConfigError, match="targetUrl"):
        load_settings(write(tmp_path, BASE.replace("http://127.0.0.1:8000", "ftp://x")))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "a: [b"))


def test_network_from_deployment(tmp_path: Path) -> None:
    dep = tmp_path / "deployment.json"
    dep.write_text(
        '{"chainId": 31337, "rpcUrl": "http://127.0.0.1:8545", "serviceName": "inference-v1.0",'
        ' "contracts": {"ledger": "0x' + "11" * 20 + '", "inference": "0x' + "22" * 20 + '"},'
        ' "provider": {"address": "0x", "privateKey": "0xabc"}}'
    )
    s = load_settings(
        write(tmp_path, BASE.replace("privateKeys", "unused_keys").split("unused_keys")[0]),
        network={"deployment": str(dep)},
    )
    net = s.resolved_network()
    assert net.chain_id == 31337
    assert net.inference_address == "0x" + "22" * 20
    assert s.provider_key() == "0xabc"
    with pytest.raises(ConfigError, match="rpcUrl"):
        load_settings(write(tmp_path, BASE)).resolved_network()
