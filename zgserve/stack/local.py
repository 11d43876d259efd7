"""Bringing the stack up: the whole local network, or a provider alone against a configured network.

Local network (``zgserve up``), each piece a separate process as in a real deployment:

1. the devnet (anvil and the official contracts), the embedded model server
   (``zgserve model``) and the verifiable service in front of it (``zgserve service``),
   started at the same time;
2. the broker (``zgserve broker --config .zg/up/provider.yaml``), which registers the
   service on-chain while it starts;
3. the contract owner acknowledges the provider's TEE signer (what the network's owner
   does for a real provider), so users' SDKs list it.

Provider alone (``zgserve up --config provider.yaml``): the model server and the
verifiable service when ``targetUrl`` is on this machine, then the broker; no devnet,
no acknowledgement (the network's owner does that), no demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from zgserve.common.errors import ConfigError
from zgserve.common.net import free_port
from zgserve.devnet.network import Devnet, start_devnet
from zgserve.stack.media import MediaLaunch, MediaOptions, MediaService, start_media
from zgserve.stack.processes import ProcessGroup, ProcessSpec
from zgserve.stack.provider_config import LocalProvider, provider_config, write_private_yaml
from zgserve.stack.steps import Steps

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ALIAS = "SmolLM2-135M-Instruct"
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0", "::1", "[::1]")
_CONFIG_HEADER = (
    "# Written by `zgserve up` for its local network; `zgserve broker --config <this file>` runs\n"
    "# the same broker. The key below is a devnet development key, never a real one.\n"
)


@dataclass(frozen=True)
class UpOptions:
    """What ``zgserve up`` was asked for; ports of 0 mean any free port."""

    state_dir: Path = Path(".zg")
    host: str = "127.0.0.1"
    broker_port: int = 3080
    service_port: int = 8000
    model_port: int = 8001
    rpc_port: int = 8545
    model_path: Path | None = None
    model_url: str | None = None  # an OpenAI-compatible backend instead of the embedded model
    model_name: str = DEFAULT_MODEL_ALIAS
    model_threads: int = max(1, min(4, os.cpu_count() or 1))
    tee: str = "auto"  # the service's TEE backend in provider-only mode
    lock_time: int = 3600
    ready_timeout_s: float = 180.0
    media: MediaOptions = field(default_factory=MediaOptions)  # embeddings, speech, images, transcription

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def up_dir(self) -> Path:
        return self.state_dir / "up"


@dataclass
class RunningStack:
    """The URLs and files of a running stack (valid inside its ``async with``)."""

    broker_url: str
    service_url: str | None
    model_url: str | None
    model: str
    provider: str
    config_file: Path
    log_dir: Path
    processes: ProcessGroup
    rpc_url: str | None = None
    deployment_file: Path | None = None
    serving_url: str | None = None  # the public URL users reach, when not ``broker_url``
    media: tuple[MediaService, ...] = ()

    @property
    def openai_base_url(self) -> str:
        return (self.serving_url or self.broker_url) + "/v1/proxy"

    @property
    def metrics_url(self) -> str:
        return self.broker_url + "/metrics"


def zgserve_command() -> list[str]:
    """How to run this installation's ``zgserve`` (the script beside the interpreter if any)."""
    script = Path(sys.executable).with_name("zgserve")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "from zgserve.cli import main; main()"]


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(host: str, preferred: int) -> int:
    """``preferred`` when it is free on ``host``, else any free port (0 asks for any)."""
    if preferred and port_is_free(host, preferred):
        return preferred
    return free_port(host)


def _url(host: str, port: int) -> str:
    return f"http://{host}:{port}"


def _model_spec(options: UpOptions, port: int) -> ProcessSpec:
    argv = [*zgserve_command(), "model", "--host", options.host, "--port", str(port)]
    argv += ["--n-threads", str(options.model_threads)]
    if options.model_path is not None:
        argv += ["--model", str(options.model_path)]
    return ProcessSpec(
        "model",
        argv,
        options.log_dir / "model.log",
        ready_url=_url(options.host, port) + "/v1/models",
        ready_timeout_s=options.ready_timeout_s,
    )


def _service_spec(
    options: UpOptions, port: int, target_url: str, *, tee: str, store: Path, key_file: Path | None
) -> ProcessSpec:
    argv = [*zgserve_command(), "service", "--host", options.host, "--port", str(port)]
    argv += ["--target-url", target_url, "--tee", tee, "--store-path", str(store)]
    # Simulated mode only: a key kept across restarts keeps the on-chain registration (and the
    # owner's acknowledgement) valid; a fresh devnet needs no such thing.
    env = {"ZG_SERVICE_SIMULATED_KEY_FILE": str(key_file.resolve())} if key_file is not None else {}
    return ProcessSpec(
        "service",
        argv,
        options.log_dir / "service.log",
        ready_url=_url(options.host, port) + "/health",
        ready_timeout_s=options.ready_timeout_s,
        env=env,
    )


def _broker_spec(options: UpOptions, config: Path, health_url: str) -> ProcessSpec:
    return ProcessSpec(
        "broker",
        [*zgserve_command(), "broker", "--config", str(config)],
        options.log_dir / "broker.log",
        ready_url=health_url,
        ready_timeout_s=options.ready_timeout_s,
    )


async def _start_backend(
    group: ProcessGroup,
    steps: Steps,
    options: UpOptions,
    *,
    service_port: int,
    tee: str,
    store: Path,
    key_file: Path | None = None,
    service_ready: asyncio.Event | None = None,
) -> tuple[str, str]:
    """The model server (unless ``model_url`` is given) and the verifiable service, at once.

    Returns (model URL, service URL). The service needs no backend to start, so both
    processes load side by side; ``service_ready`` is set as soon as the service answers.
    """
    service_url = _url(options.host, service_port)
    if options.model_url is not None:
        model_url = options.model_url.rstrip("/")
        model_task = None
    else:
        model_port = pick_port(options.host, options.model_port)
        model_url = _url(options.host, model_port)

        async def start_model() -> None:
            async with steps.step("Embedded model server (llama.cpp) loading the model") as step:
                await group.start(_model_spec(options, model_port))
                step.detail(f"{options.model_name} at {model_url}")

        model_task = asyncio.create_task(start_model())
    try:
        async with steps.step(f"Verifiable service starting ({tee} TEE backend)") as step:
            spec = _service_spec(options, service_port, model_url, tee=tee, store=store, key_file=key_file)
            await group.start(spec)
            step.detail(service_url)
        if service_ready is not None:
            service_ready.set()
        if model_task is not None:
            await model_task
    except BaseException:
        if model_task is not None:
            await _cancel(model_task)
        raise
    return model_url, service_url


def _fresh_state(up_dir: Path) -> None:
    """A new devnet means a new chain: forget the previous run's records and signatures."""
    for name in ("broker.db", "broker.db-wal", "broker.db-shm"):
        (up_dir / name).unlink(missing_ok=True)
    shutil.rmtree(up_dir / "service", ignore_errors=True)


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Stop a background step; its own failure is logged, never raised over the caller's."""
    if not task.done():
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:
        logger.warning("a background step failed while being stopped", exc_info=True)


@contextlib.asynccontextmanager
async def local_network(options: UpOptions, steps: Steps) -> AsyncIterator[tuple[RunningStack, Devnet]]:
    """The whole local network; yields the running stack and its devnet."""
    up_dir = options.up_dir
    up_dir.mkdir(parents=True, exist_ok=True)
    _fresh_state(up_dir)
    service_port = pick_port(options.host, options.service_port)
    rpc_port = pick_port("127.0.0.1", options.rpc_port)
    group = ProcessGroup()
    async with contextlib.AsyncExitStack() as stack:
        # Unwound last to first: the processes stop before the chain they talk to.
        stack.push_async_callback(group.stop_all)
        store = up_dir / "service" / "signatures.sqlite3"
        # Media services sign with the chat service's key: it writes the key file, they read it.
        key_file = up_dir / "service" / "simulated-keys.json" if options.media.any else None
        key_written = asyncio.Event()
        backend: asyncio.Task[tuple[str, str]] = asyncio.create_task(
            _start_backend(
                group,
                steps,
                options,
                service_port=service_port,
                tee="simulated",
                store=store,
                key_file=key_file,
                service_ready=key_written,
            )
        )
        stack.push_async_callback(_cancel, backend)
        media: asyncio.Task[list[MediaService]] | None = None
        if key_file is not None:
            launch = MediaLaunch.for_up(options, key_file, tuple(zgserve_command()))
            media = asyncio.create_task(start_media(group, steps, options.media, launch, key_written))
            stack.push_async_callback(_cancel, media)
        async with steps.step("Local chain: anvil and the official 0G contracts") as step:
            devnet = await stack.enter_async_context(
                start_devnet(users=2, lock_time=options.lock_time, port=rpc_port, progress=steps.record)
            )
            step.detail(devnet.rpc_url)
        stack.push_async_callback(group.stop_all)
        model_url, service_url = await backend
        served = tuple(await media) if media is not None else ()
        running = await _start_local_broker(group, steps, options, devnet, service_url, model_url, served)
        yield running, devnet


async def _start_local_broker(
    group: ProcessGroup,
    steps: Steps,
    options: UpOptions,
    devnet: Devnet,
    service_url: str,
    model_url: str,
    media: tuple[MediaService, ...] = (),
) -> RunningStack:
    deployment = devnet.deployment
    provider = deployment.provider
    if provider is None:
        raise ConfigError("the devnet has no provider account")
    up_dir = options.up_dir
    deployment_file = deployment.save(up_dir / "deployment.json")
    broker_port = pick_port(options.host, options.broker_port)
    broker_url = _url(options.host, broker_port)
    config = provider_config(
        LocalProvider(
            serving_url=broker_url,
            target_url=service_url + "/v1",
            model=options.model_name,
            private_key=provider.private_key,
            deployment_file=deployment_file,
            database_file=up_dir / "broker.db",
            tee_key_file=up_dir / "broker-tee-keys.json",
            host=options.host,
            port=broker_port,
            extra_models=tuple(m.catalog_entry() for m in media),
        )
    )
    config_file = write_private_yaml(up_dir / "provider.yaml", config, _CONFIG_HEADER)
    async with steps.step("Broker starting: registers the service on-chain (100 0G stake)") as step:
        await group.start(_broker_spec(options, config_file, broker_url + "/health"))
        step.detail(broker_url)
    async with steps.step("Contract owner acknowledges the provider's TEE signer"):
        owner = devnet.chain.inference(devnet.owner_wallet())
        await owner.acknowledge_tee_signer_by_owner(provider.address)
    return RunningStack(
        broker_url=broker_url,
        service_url=service_url,
        model_url=model_url,
        model=options.model_name,
        provider=provider.address,
        config_file=config_file,
        log_dir=options.log_dir,
        processes=group,
        rpc_url=devnet.rpc_url,
        deployment_file=deployment_file,
        media=media,
    )


def _local_port(url: str) -> int | None:
    """The port of ``url`` when it names this machine, else None."""
    parts = urlsplit(url)
    if parts.hostname not in {h.strip("[]") for h in _LOCAL_HOSTS}:
        return None
    return parts.port or (443 if parts.scheme == "https" else 80)


@contextlib.asynccontextmanager
async def provider_alone(config_file: Path, options: UpOptions, steps: Steps) -> AsyncIterator[RunningStack]:
    """The provider against the network its configuration names (no devnet, no demo)."""
    from zgserve.broker.settings import load_settings

    settings = load_settings(config_file)  # fails fast, naming every bad key
    net = settings.resolved_network()
    target = settings.target_url
    service_port = _local_port(target)
    if service_port is not None and not port_is_free(options.host, service_port):
        service_port = None  # something already serves targetUrl here: use it
    async with ProcessGroup() as group:
        model_url = service_url = None
        if service_port is not None:
            model_url, service_url = await _start_backend(
                group,
                steps,
                options,
                service_port=service_port,
                tee=options.tee,
                store=options.state_dir / "service" / "signatures.sqlite3",
                key_file=options.state_dir / "service" / "simulated-keys.json",
            )
        host = "127.0.0.1" if settings.server.host in ("0.0.0.0", "::") else settings.server.host
        local_url = _url(host, settings.server.port)
        title = f"Broker starting on chain {net.chain_id}: registers or updates the service"
        async with steps.step(title) as step:
            await group.start(_broker_spec(options, config_file, local_url + "/health"))
            step.detail(settings.serving_url)
        yield RunningStack(
            broker_url=local_url,
            service_url=service_url,
            model_url=model_url,
            model=settings.model,
            provider=_provider_address(settings.provider_key()),
            config_file=config_file,
            log_dir=options.log_dir,
            processes=group,
            rpc_url=_without_secrets(net.rpc_url),
            serving_url=settings.serving_url,
        )


def _without_secrets(url: str) -> str:
    """Scheme, host and port only: RPC URLs often carry an API key in the path or query."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    hidden = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{parts.hostname}{port}{hidden}"


def _provider_address(private_key: str) -> str:
    from zgserve.common.signing import Signer

    return Signer.from_hex(private_key).address
