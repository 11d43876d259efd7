"""A deployment's processes for tests: ``zgserve broker --config`` as its own OS process (what
production runs: uvloop, httptools; what a fault test can SIGKILL), and a real nginx with
``deploy/nginx.conf`` in front of broker replicas."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from zgserve.common.net import free_port

ROOT = Path(__file__).resolve().parents[3]
NGINX_CONF = ROOT / "deploy" / "nginx.conf"


@dataclass
class BrokerProcess:
    url: str
    proc: asyncio.subprocess.Process
    log: Path  # everything the process printed

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, nothing is flushed or released."""
        self.proc.send_signal(signal.SIGKILL)


def process_config(
    *,
    service_url: str,
    deployment_file: Path,
    private_key: str,
    database_url: str,
    key_file: Path,
    serving_url: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A broker configuration on a fresh loopback port (``server.port``), with ``overrides`` on top."""
    port = free_port()
    config: dict[str, Any] = {
        "servingUrl": serving_url or f"http://127.0.0.1:{port}",
        "targetUrl": service_url + "/v1",
        "model": "fake-model",
        "inputPrice": 1,
        "outputPrice": 1,
        "privateKeys": [private_key],
        "network": {"deployment": str(deployment_file)},
        "database": {"url": database_url},
        "tee": {"backend": "simulated", "keyFile": str(key_file)},
        "server": {"host": "127.0.0.1", "port": port},
        "registration": {"enabled": False},
        "settlement": {"enabled": False},
        "logging": {"level": "WARNING"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = config[key] | value
        else:
            config[key] = value
    return config


@contextlib.asynccontextmanager
async def broker_process(
    config: dict[str, Any], workdir: Path, name: str = "broker"
) -> AsyncIterator[BrokerProcess]:
    """Start the broker of ``config`` and wait for ``/health``; terminate it afterwards."""
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from zgserve.cli import main; main()",
            "broker",
            "--config",
            str(path),
            cwd=ROOT,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{config['server']['port']}"
    running = BrokerProcess(url, proc, log)
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(600):
                if proc.returncode is not None:
                    break
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(url + "/health") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"{name} did not start within 60 s")
        if proc.returncode is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}: {running.output()[-3000:]}")
        yield running
    finally:
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 15)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def find_nginx() -> str | None:
    # apt installs it to /usr/sbin, which a non-root PATH may lack.
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


def nginx_conf(workdir: Path, port: int, upstreams: list[str]) -> Path:
    """deploy/nginx.conf with loopback addresses, as the compose file runs it with container names."""
    conf = NGINX_CONF.read_text()
    servers = "".join(f"        server {u};\n" for u in upstreams)
    conf = re.sub(r"(?m)^\s*server broker-\d+:3080[^;]*;\n", "", conf)
    conf = conf.replace("upstream brokers {\n", "upstream brokers {\n" + servers)
    conf = conf.replace("listen 3080;", f"listen 127.0.0.1:{port};")
    conf = conf.replace("pid /tmp/nginx.pid;", f"pid {workdir}/nginx.pid;")
    conf = conf.replace("access_log /dev/stdout", f"access_log {workdir}/access.log")
    conf = conf.replace("error_log /dev/stderr", f"error_log {workdir}/error.log")
    path = workdir / "nginx.conf"
    path.write_text(conf)
    return path


@contextlib.asynccontextmanager
async def nginx_in_front(upstreams: list[str], workdir: Path, port: int | None = None) -> AsyncIterator[str]:
    """A real nginx balancing over ``upstreams`` (host:port); yields its URL. Skips without nginx."""
    import pytest

    nginx = find_nginx()
    if nginx is None:
        pytest.skip("nginx is not installed (scripts/install.sh installs it with apt-get where it can)")
    port = port or free_port()
    conf = nginx_conf(workdir, port, upstreams)
    prefix = workdir / "nginx"
    prefix.mkdir(exist_ok=True)
    check = await asyncio.create_subprocess_exec(
        nginx, "-t", "-p", str(prefix), "-c", str(conf), stderr=asyncio.subprocess.PIPE
    )
    _, errors = await check.communicate()
    assert check.returncode == 0, errors.decode()
    proc = await asyncio.create_subprocess_exec(
        nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;", stderr=asyncio.subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(url + "/health") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("nginx did not answer within 5 s")
        yield url
    finally:
        proc.terminate()
        await proc.wait()
