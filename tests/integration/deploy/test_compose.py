"""The production deployment in deploy/: the compose file validates, and its pieces fit together.

``docker compose config`` (or Debian's ``docker-compose`` 1.29) parses and interpolates
the file without a Docker engine. The rest checks the structure an operator relies on
(services, health checks, volumes, the config mount), that the environment overrides
it sets are settings the broker and the service really accept, that the image is
built with the README's install script, and that the dashboard only charts metrics
the broker exports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
CONFIG_MOUNT = "/etc/zgserve/config.yaml"
NGINX_CONF = DEPLOY / "nginx.conf"
BROKERS = ("broker-1", "broker-2", "broker-3")
LLAMA_FLAGS = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON '
    '-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"'
)


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy is not None else None


@pytest.fixture(scope="module")
def compose_cmd() -> list[str]:
    cmd = _compose_command()
    if cmd is None:
        pytest.skip(
            "neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)"
        )
    return cmd


def _config(cmd: list[str], tmp_path: Path, *profiles: str) -> dict[str, Any]:
    """``compose config`` output, with the example config standing in for config.local.yaml."""
    config = tmp_path / "config.local.yaml"
    shutil.copy(ROOT / "config.example.yaml", config)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZG_", "POSTGRES_", "GRAFANA_"))}
    env["ZG_CONFIG"] = str(config)
    args = [*cmd, "-f", str(COMPOSE)]
    for profile in profiles:
        args += ["--profile", profile]
    done = subprocess.run([*args, "config"], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    rendered: dict[str, Any] = yaml.safe_load(done.stdout)
    return rendered


def _mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Volume entries by target, whatever syntax the tool printed them in."""
    out: dict[str, dict[str, Any]] = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            parts = entry.split(":")
            source, target = parts[0], parts[1]
            out[target] = {"source": source, "read_only": len(parts) > 2 and "ro" in parts[2].split(",")}
        else:
            out[entry["target"]] = {"source": entry.get("source"), "read_only": bool(entry.get("read_only"))}
    return out


def test_compose_config_validates_and_has_the_stack(compose_cmd: list[str], tmp_path: Path) -> None:
    full = _config(compose_cmd, tmp_path, "monitoring")
    services = full["services"]
    assert set(services) == {"postgres", "redis", "service", *BROKERS, "lb", "prometheus", "grafana"}
    # `up -d` without a profile starts these; monitoring is opt-in.
    default = {name for name, s in services.items() if not s.get("profiles")}
    assert default == {"postgres", "redis", "service", *BROKERS, "lb"}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert service.get("restart") == "unless-stopped", name

    svc, pg = services["service"], services["postgres"]
    assert svc["command"] == ["service"]
    for name in BROKERS:
        broker = services[name]
        assert broker["command"] == ["broker", "--config", CONFIG_MOUNT]
        config_mount = _mounts(broker)[CONFIG_MOUNT]
        assert config_mount["read_only"]
        assert Path(config_mount["source"]).name == "config.local.yaml"
        assert _mounts(broker)["/var/lib/zgserve"]["source"] == "broker-state"  # one settlement key
        assert broker["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert broker["depends_on"]["service"]["condition"] == "service_healthy"
        assert broker["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "ports" not in broker  # reached through the load balancer only
    # Limits counted once for all replicas: every replica on the one Redis, kept internal.
    redis_urls = {services[n]["environment"]["ZGSERVE_BROKER__LIMITS__REDISURL"] for n in BROKERS}
    assert redis_urls == {"redis://redis:6379/0"}
    assert services["redis"]["image"].startswith("redis:")
    assert "ports" not in services["redis"]
    # Every replica on the one database; only the first writes the registration on chain.
    assert len({services[n]["environment"]["ZGSERVE_BROKER__DATABASE__URL"] for n in BROKERS}) == 1
    registering = [
        n for n in BROKERS if services[n]["environment"]["ZGSERVE_BROKER__REGISTRATION__ENABLED"] == "true"
    ]
    assert registering == ["broker-1"]
    lb = services["lb"]
    assert lb["image"].startswith("nginx:")
    assert _mounts(lb)["/etc/nginx/nginx.conf"]["read_only"]
    assert Path(_mounts(lb)["/etc/nginx/nginx.conf"]["source"]).resolve() == NGINX_CONF
    assert set(lb["depends_on"]) == set(BROKERS)
    assert all(lb["depends_on"][n]["condition"] == "service_healthy" for n in BROKERS)
    assert any(str(p.get("target", p)).endswith("3080") for p in lb["ports"])
    assert "ports" not in pg  # the database and the service stay internal
    assert "ports" not in svc

    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert "/var/lib/postgresql/data" in _mounts(pg)
    assert {"pgdata", "broker-state", "service-state", "prometheus-data", "grafana-data"} <= set(
        full["volumes"]
    )
    for name in (*BROKERS, "service"):
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
        assert Path(services[name]["build"]["context"]).resolve() == ROOT
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert "/etc/prometheus/prometheus.yml" in _mounts(services["prometheus"])
    grafana_mounts = _mounts(services["grafana"])
    assert (
        Path(grafana_mounts["/etc/grafana/provisioning"]["source"]).resolve()
        == DEPLOY / "grafana" / "provisioning"
    )


def _raw_compose() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return raw


def _interpolate_defaults(value: str) -> str:
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_broker_environment_overrides_are_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from zgserve.broker.settings import load_settings

    env = _raw_compose()["services"]["broker-2"]["environment"]
    for key, value in env.items():
        monkeypatch.setenv(key, _interpolate_defaults(str(value)))
    settings = load_settings(ROOT / "config.example.yaml")
    assert settings.target_url == "http://service:8000/v1"
    assert settings.database.url.startswith("postgresql+asyncpg://zgserve:")
    assert "@postgres:5432/zgserve" in settings.database.url
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 3080)
    assert settings.registration.enabled is False  # only broker-1 registers


async def test_broker_target_in_compose_reaches_the_service(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The broker's targetUrl, as compose resolves it, names the service container and a path it serves."""
    from tests.asgi import serve
    from tests.fakes.openai_backend import FakeOpenAIBackend
    from zgserve.broker.settings import load_settings
    from zgserve.service.app import create_app as create_service
    from zgserve.service.settings import load_settings as load_service_settings

    services = _raw_compose()["services"]
    for key, value in services["broker-1"]["environment"].items():
        monkeypatch.setenv(key, _interpolate_defaults(str(value)))
    target = urlsplit(load_settings(ROOT / "config.example.yaml").target_url)
    service_env = services["service"]["environment"]
    assert target.hostname == "service"
    assert target.port == int(_interpolate_defaults(str(service_env["ZG_SERVICE_PORT"])))
    assert "service" in services["broker-1"]["depends_on"]

    # What the broker will send there reaches the service's chat route (a real service, simulated TEE).
    async with FakeOpenAIBackend() as backend:
        settings = load_service_settings(
            target_url=backend.url, tee="simulated", gpu_evidence="off", store_path=tmp_path / "sig.sqlite3"
        )
        async with serve(create_service(settings)) as url, aiohttp.ClientSession() as session:
            body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            async with session.post(url + target.path + "/chat/completions", json=body) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["choices"][0]["message"]["content"]


def test_service_environment_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    from zgserve.service.settings import load_settings

    env = _raw_compose()["services"]["service"]["environment"]
    for key, value in env.items():
        monkeypatch.setenv(key, _interpolate_defaults(str(value)))
    settings = load_settings()
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)
    assert settings.target_url is None  # embedded model unless ZG_MODEL_URL is set
    assert str(settings.store_path).startswith("/var/lib/zgserve/")


def test_image_is_built_with_the_install_script() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    install = (ROOT / "scripts" / "install.sh").read_text()
    assert "bash scripts/install.sh" in dockerfile
    assert LLAMA_FLAGS in install
    for flag in re.findall(r"-DGGML_\w+=\w+", LLAMA_FLAGS):
        assert flag in dockerfile  # documented where the image is defined
    assert "COPY --from=build /opt/zgserve /opt/zgserve" in dockerfile
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", "node/node_modules", ".git"} <= set(ignore)


def test_prometheus_scrapes_the_broker() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    broker = jobs["zgserve-broker"]
    assert broker["metrics_path"] == "/metrics"
    assert broker["static_configs"][0]["targets"] == [f"{name}:3080" for name in BROKERS]


def test_nginx_balances_every_replica_and_streams() -> None:
    conf = NGINX_CONF.read_text()
    upstream = re.search(r"upstream brokers \{(.*?)\}", conf, re.S)
    assert upstream is not None
    assert re.findall(r"^\s*server ([\w.-]+):3080\b", upstream.group(1), re.M) == list(BROKERS)
    proxy = re.search(r"location /v1/proxy/ \{(.*?)\}", conf, re.S)
    assert proxy is not None
    assert "proxy_buffering off;" in proxy.group(1)
    timeout = re.search(r"proxy_read_timeout (\d+)s;", proxy.group(1))
    assert timeout is not None
    assert int(timeout.group(1)) >= 600  # long generations are not cut
    assert re.search(r"^\s*listen 3080;", conf, re.M)


def _exported_metric_names() -> set[str]:
    """Everything the broker's /metrics can show: its own metrics and the settlement engine's."""
    from zgserve.broker.metrics import BrokerMetrics
    from zgserve.broker.settlement.metrics import SettlementMetrics

    registry = BrokerMetrics().registry
    SettlementMetrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        for sample in family.samples:
            names.add(sample.name)
        names.add(family.name)
    return names


def test_dashboard_is_provisioned_and_uses_broker_metrics() -> None:
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/zgserve.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"

    dashboard = json.loads((DEPLOY / "grafana/dashboards/zgserve-broker.json").read_text())
    assert dashboard["uid"] == "zgserve-broker"
    exported = _exported_metric_names()
    # Histogram series appear once observed; counters get _total.
    exported |= {f"{n}_bucket" for n in exported} | {f"{n}_total" for n in exported}
    used: set[str] = set()
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == uid
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid
            used |= set(re.findall(r"\bzg(?:broker|settle)_\w+", target["expr"]))
    assert used, "the dashboard charts nothing"
    assert used <= exported, f"not exported by the broker: {sorted(used - exported)}"
