"""The broker configuration ``zgserve up`` writes is one the broker accepts, and stays private."""

from __future__ import annotations

import socket
from pathlib import Path

from zgserve.broker.settings import load_settings
from zgserve.stack.local import pick_port, port_is_free
from zgserve.stack.provider_config import LocalProvider, provider_config, write_private_yaml

KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"


def test_written_config_is_accepted_by_the_broker(tmp_path: Path) -> None:
    deployment = tmp_path / "deployment.json"
    deployment.write_text("{}")
    local = LocalProvider(
        serving_url="http://127.0.0.1:3080",
        target_url="http://127.0.0.1:8000/v1",
        model="SmolLM2-135M-Instruct",
        private_key=KEY,
        deployment_file=deployment,
        database_file=tmp_path / "broker.db",
        tee_key_file=tmp_path / "tee.json",
        host="127.0.0.1",
        port=3080,
    )
    path = write_private_yaml(tmp_path / "up" / "provider.yaml", provider_config(local), "# header\n")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text().startswith("# header\n")
    settings = load_settings(path)
    assert settings.serving_url == "http://127.0.0.1:3080"
    assert settings.target_url == "http://127.0.0.1:8000/v1"
    assert settings.provider_key() == KEY
    assert settings.network.deployment == deployment.resolve()
    assert settings.tee.backend == "simulated"
    assert settings.settlement.enabled
    assert settings.server.port == 3080
    assert settings.database.url.endswith(str(tmp_path / "broker.db"))


def test_pick_port_prefers_the_given_port_and_falls_back_when_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        assert not port_is_free("127.0.0.1", busy)
        other = pick_port("127.0.0.1", busy)
        assert other != busy
        assert port_is_free("127.0.0.1", other)
    assert pick_port("127.0.0.1", busy) == busy
    assert pick_port("127.0.0.1", 0) > 0
