"""Strict settings: unknown keys and bad values stop start-up with their names."""

from __future__ import annotations

from pathlib import Path

import pytest

from zgserve.common.errors import ConfigError
from zgserve.service.settings import ServiceSettings, load_settings


def test_defaults_and_url_normalised() -> None:
    settings = load_settings(target_url="http://127.0.0.1:8001/v1/")
    assert settings.target_url == "http://127.0.0.1:8001"
    assert settings.signature_retention_s == 24 * 3600
    assert ServiceSettings().target_url is None  # the embedded model by default


def test_unknown_key_is_named(tmp_path: Path) -> None:
    config = tmp_path / "service.yaml"
    config.write_text("port: 9000\nretention: 5\n")
    with pytest.raises(ConfigError, match="retention"):
        load_settings(config)


def test_bad_values_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="target_url"):
        load_settings(target_url="ftp://x")
    with pytest.raises(ConfigError, match="tee"):
        load_settings(tee="sgx")
    config = tmp_path / "service.yaml"
    config.write_text("llama:\n  n_ctx: 5\n")
    with pytest.raises(ConfigError, match=r"llama\.n_ctx"):
        load_settings(config)


def test_file_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "service.yaml"
    config.write_text("port: 9000\ntee: simulated\n")
    monkeypatch.setenv("ZG_SERVICE_STORE_FLUSH_INTERVAL_S", "0.2")
    settings = load_settings(config, port=9100)
    assert (settings.port, settings.tee, settings.store_flush_interval_s) == (9100, "simulated", 0.2)
