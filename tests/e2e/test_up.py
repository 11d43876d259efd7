"""``zgserve up`` as a user runs it: a subprocess that starts every piece as its own process.

* the whole local network with the embedded model and the demo user (``--exit-after-demo``):
  exit status 0 and a report that says every answer and the settlement verified;
* staying up until SIGINT, then every process gone (the fake backend stands in for the model);
* a demo that cannot get answers ends with ``DEMO FAILED`` and exit status 1;
* ``--config``: the provider alone, registering itself on an existing network.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.fakes.openai_backend import FakeOpenAIBackend
from zgserve.chain.errors import ServiceNotExist
from zgserve.common.net import free_port
from zgserve.devnet.network import Devnet

pytestmark = pytest.mark.slow

ZGSERVE = str(Path(sys.executable).with_name("zgserve"))
ANY_PORTS = ("--port", "0", "--service-port", "0", "--model-port", "0", "--rpc-port", "0")


@dataclass
class UpProcess:
    """A running ``zgserve up``; its output so far in ``lines``."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def read_until(self, marker: str) -> None:
        """Read output lines until one contains ``marker``; fail with the output otherwise."""
        assert self.proc.stdout is not None
        while not any(marker in line for line in self.lines):
            raw = await self.proc.stdout.readline()
            if not raw:
                raise AssertionError(f"zgserve up exited before {marker!r}:\n{self.output}")
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    async def finish(self) -> int:
        """Read the rest of the output and wait for the exit status."""
        stdout, _ = await self.proc.communicate()
        self.lines += stdout.decode(errors="replace").splitlines()
        assert self.proc.returncode is not None
        return self.proc.returncode


@contextlib.asynccontextmanager
async def zgserve_up(*args: str, cwd: Path) -> AsyncIterator[UpProcess]:
    proc = await asyncio.create_subprocess_exec(
        ZGSERVE,
        "up",
        "--state-dir",
        str(cwd / ".zg"),
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    up = UpProcess(proc)
    try:
        yield up
    finally:
        if proc.returncode is None:  # a failed test: stop it the way a user would, then insist
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.communicate(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def url_of(output: str, label: str) -> str:
    match = re.search(rf"{re.escape(label)}\s+(http://\S+)", output)
    assert match, f"no {label!r} line in:\n{output}"
    return match.group(1)


async def refuses_connections(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(url, timeout=aiohttp.ClientTimeout(total=2)):
            return False
    except aiohttp.ClientConnectionError:
        return True


@pytest.mark.llama
async def test_up_runs_the_demo_to_a_verified_settled_answer(tmp_path: Path) -> None:
    async with zgserve_up("--exit-after-demo", *ANY_PORTS, cwd=tmp_path) as up, asyncio.timeout(280):
        code = await up.finish()
    out = up.output
    assert code == 0, out
    assert "DEMO OK" in [line.strip() for line in out.splitlines()], out
    assert "streamed chat" in out
    assert "non-streamed chat" in out
    # The catalog's second model (same weights, half the price, 16-token cap) is chatted with too.
    assert out.count("signature ✓ verified") == 3, out
    mini = re.search(r"\(SmolLM2-135M-Instruct-mini\) chat .*: (\d+) prompt \+ (\d+) completion tokens", out)
    assert mini, out
    assert int(mini.group(2)) <= 16
    assert "SIMULATED TEE" in out  # never presented as hardware-attested
    recorded = re.search(r"fees recorded by the broker: (\d+) neuron", out)
    earned = re.search(r"provider's on-chain earnings: (\d+) neuron", out)
    assert recorded, out
    assert earned, out
    assert int(earned.group(1)) == int(recorded.group(1)) > 0
    assert "settlement receipts verified: 3/3" in out
    first = re.search(r"first verified answer after (\d+\.\d) s", out)
    assert first, out
    assert float(first.group(1)) < 120  # the target is 60 s on an idle machine; CI shares its cores
    for name in ("model", "service", "broker"):
        assert (tmp_path / ".zg" / "logs" / f"{name}.log").is_file()
    assert (tmp_path / ".zg" / "up" / "provider.yaml").stat().st_mode & 0o077 == 0  # holds a key


async def test_up_stays_up_until_interrupted_and_stops_every_process(tmp_path: Path) -> None:
    fake_model = ("--model-name", "fake-model")
    async with (
        FakeOpenAIBackend() as fake,
        zgserve_up("--no-demo", "--model-url", fake.url, *fake_model, *ANY_PORTS, cwd=tmp_path) as up,
    ):
        async with asyncio.timeout(120):
            await up.read_until("Press Ctrl-C")
        base = url_of(up.output, "OpenAI base URL (users)")
        broker = base.removesuffix("/v1/proxy")
        service = url_of(up.output, "Verifiable service")
        rpc = url_of(up.output, "Chain RPC")
        async with aiohttp.ClientSession() as http:
            for url in (broker + "/health", broker + "/v1/quote", broker + "/metrics", service + "/health"):
                async with http.get(url) as resp:
                    assert resp.status == 200, url
        up.proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            code = await up.finish()
    assert code == 0, up.output
    assert "Stopped. Every process has exited." in up.output
    for url in (broker + "/health", service + "/health", rpc):
        assert await refuses_connections(url), url


async def test_up_reports_a_failed_demo_with_exit_status_1(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # no model answers there
    async with zgserve_up("--exit-after-demo", "--model-url", dead, *ANY_PORTS, cwd=tmp_path) as up:
        async with asyncio.timeout(120):
            code = await up.finish()
    assert code == 1, up.output
    assert "DEMO FAILED" in up.output
    assert "the journey stopped" in up.output


async def test_up_with_config_runs_the_provider_alone(devnet: Devnet, tmp_path: Path) -> None:
    provider = await devnet.new_account()
    port = free_port()
    config = {
        "servingUrl": f"http://127.0.0.1:{port}",
        "targetUrl": f"http://127.0.0.1:{free_port()}/v1",
        "model": "fake-model",
        "inputPrice": 1_000_000_000,
        "outputPrice": 2_000_000_000,
        "privateKeys": [provider.private_key],
        "network": {"deployment": str(devnet.deployment.save(tmp_path / "deployment.json"))},
        "server": {"host": "127.0.0.1", "port": port},
        "database": {"url": f"sqlite+aiosqlite:///{tmp_path}/broker.db"},
        "tee": {"backend": "simulated", "keyFile": str(tmp_path / "tee.json")},
    }
    config_file = tmp_path / "provider.yaml"
    config_file.write_text(yaml.safe_dump(config))
    inference = devnet.chain.inference()
    with pytest.raises(ServiceNotExist):
        await inference.get_service(provider.address)
    options = ("--config", str(config_file), "--tee", "simulated")
    async with (
        FakeOpenAIBackend() as fake,
        zgserve_up(*options, "--model-url", fake.url, cwd=tmp_path) as up,
    ):
        async with asyncio.timeout(120):
            await up.read_until("Press Ctrl-C")
        assert "Demo" not in up.output  # a real network: no devnet, no demo user
        assert url_of(up.output, "OpenAI base URL (users)") == f"http://127.0.0.1:{port}/v1/proxy"
        service = await inference.get_service(provider.address)
        assert service.url == f"http://127.0.0.1:{port}"
        assert service.model == "fake-model"
        assert not service.tee_signer_acknowledged  # the network's owner does that, not `up`
        up.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            code = await up.finish()
    assert code == 0, up.output
    assert await refuses_connections(f"http://127.0.0.1:{port}/health")
    # A simulated service keeps its key: a restart keeps the registration and its acknowledgement.
    assert (tmp_path / ".zg" / "service" / "simulated-keys.json").is_file()
