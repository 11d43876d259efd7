"""``zgserve up``: the whole network on this machine with a demo user, or the provider alone.

Only typer is imported at module level so that ``zgserve --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from zgserve.devnet.network import Devnet
    from zgserve.stack.local import RunningStack, UpOptions
    from zgserve.stack.steps import Steps

DEFAULT_MODEL_ALIAS = "SmolLM2-135M-Instruct"


def register(app: typer.Typer) -> None:
    """Add the ``up`` and ``probe`` commands to the root app."""
    app.command("up")(up)
    app.command("probe")(probe)


def probe(
    tee: str = typer.Option("auto", "--tee", help="auto, tdx, dstack or simulated."),
    dstack_socket: Path | None = typer.Option(None, "--dstack-socket", help="The guest agent's socket."),
    gpu: str = typer.Option("auto", "--gpu", help="auto, nvml or off."),
    online: bool = typer.Option(False, "--online", help="Also ask NVIDIA's NRAS about the GPU evidence."),
    as_json: bool = typer.Option(False, "--json", help="Everything as JSON (the report and quote included)."),
) -> None:
    """What this machine offers for attestation, a fresh report, and the verifiers' verdicts."""
    from rich.console import Console

    from zgserve.stack import probe as probing

    result = asyncio.run(probing.probe(tee=tee, dstack_socket=dstack_socket, gpu=gpu, online=online))
    if as_json:
        print(probing.dump(result))
    else:
        probing.render(result, Console(highlight=False))
    raise typer.Exit(1 if result.errors else 0)


def up(
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="Run the provider alone (service + broker) with this broker YAML, against its network.",
    ),
    demo: bool = typer.Option(True, "--demo/--no-demo", help="Run the demo user's journey (local network)."),
    exit_after_demo: bool = typer.Option(
        False, "--exit-after-demo", help="Stop after the demo; exit status 0 only if everything verified."
    ),
    state_dir: Path = typer.Option(Path(".zg"), "--state-dir", help="Where configs, databases and logs go."),
    port: int = typer.Option(
        3080, "--port", help="Broker port of the local network; if taken, any free one (0: any)."
    ),
    service_port: int = typer.Option(8000, "--service-port", help="Verifiable service port (same rule)."),
    model_port: int = typer.Option(8001, "--model-port", help="Embedded model server port (same rule)."),
    rpc_port: int = typer.Option(8545, "--rpc-port", help="Local chain RPC port (same rule)."),
    model_path: Path | None = typer.Option(
        None, "--model", help="GGUF file for the embedded model server (default: SmolLM2-135M-Instruct)."
    ),
    model_url: str | None = typer.Option(
        None, "--model-url", help="Use this OpenAI-compatible backend instead of the embedded model."
    ),
    model_name: str = typer.Option(
        DEFAULT_MODEL_ALIAS, "--model-name", help="Model name served and registered."
    ),
    threads: int = typer.Option(
        max(1, min(4, os.cpu_count() or 1)), "--threads", min=1, help="CPU threads of the model server."
    ),
    tee: str = typer.Option(
        "auto", "--tee", help="TEE backend of the service with --config: auto | tdx | dstack | simulated."
    ),
    embeddings: bool = typer.Option(
        False, "--embeddings", help="Also sell embeddings (embedded SmolLM2, mean-pooled; local network)."
    ),
    speech: bool = typer.Option(
        False, "--speech", help="Also sell text-to-speech (espeak-ng, WAV; local network)."
    ),
    media: bool = typer.Option(False, "--media", help="Both: --embeddings --speech."),
    image_url: str | None = typer.Option(
        None, "--image-url", help="Also sell images from this OpenAI-compatible backend (/v1/images/...)."
    ),
    image_model: str = typer.Option("image", "--image-model", help="The image model's name."),
    transcription_url: str | None = typer.Option(
        None,
        "--transcription-url",
        help="Also sell transcriptions from this OpenAI-compatible backend (/v1/audio/transcriptions).",
    ),
    transcription_model: str = typer.Option(
        "transcription", "--transcription-model", help="The transcription model's name."
    ),
) -> None:
    """Start a verified, billed, settled 0G provider: the whole local network, or with --config alone."""
    from zgserve.common.errors import ConfigError
    from zgserve.stack.local import UpOptions
    from zgserve.stack.media import MediaOptions

    launched_at = time.monotonic() - _process_age_s()
    if config is not None and exit_after_demo:
        raise typer.BadParameter("--exit-after-demo needs the local network (no --config)")
    if exit_after_demo and not demo:
        raise typer.BadParameter("--exit-after-demo needs the demo (drop --no-demo)")
    served = MediaOptions(
        embeddings=embeddings or media,
        speech=speech or media,
        image_url=image_url,
        image_model=image_model,
        transcription_url=transcription_url,
        transcription_model=transcription_model,
    )
    if served.any and config is not None:
        raise typer.BadParameter("with --config, list media models in the file's catalog (models[].type)")
    try:
        served.check()
    except ConfigError as exc:
        raise typer.BadParameter(exc.message) from exc
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger().setLevel(logging.WARNING)  # the progress lines say what happens
    options = UpOptions(
        state_dir=state_dir,
        broker_port=port,
        service_port=service_port,
        model_port=model_port,
        rpc_port=rpc_port,
        model_path=model_path,
        model_url=model_url,
        model_name=model_name,
        model_threads=threads,
        tee=tee,
        media=served,
    )
    with_demo = demo and config is None
    run = _run(options, config=config, demo=with_demo, exit_after=exit_after_demo, t0=launched_at)
    code = asyncio.run(_guarded(run))
    raise typer.Exit(code)


def _process_age_s() -> float:
    """Seconds since this process started (Linux), so start-up time counts too; else 0."""
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


async def _guarded(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main``; the first SIGINT/SIGTERM cancels it (everything stops in order), later ones wait."""
    task = asyncio.create_task(main)
    loop = asyncio.get_running_loop()
    stopping = False

    def on_signal() -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        return await task
    except asyncio.CancelledError:
        return 0 if stopping else 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _run(options: UpOptions, *, config: Path | None, demo: bool, exit_after: bool, t0: float) -> int:
    from rich.console import Console

    from zgserve.common.errors import ZgError
    from zgserve.stack.steps import Steps

    console = Console(highlight=False)
    if not console.is_terminal:  # logs: keep each line whole, greppable
        console = Console(highlight=False, soft_wrap=True, width=120)
    steps = Steps(console)
    try:
        with steps:
            if config is not None:
                return await _provider_alone(console, steps, config, options)
            return await _local(console, steps, options, demo=demo, exit_after=exit_after, t0=t0)
    except ZgError as exc:
        steps.close()
        console.print(f"[bold red]error:[/] {exc.message}")
        return 1
    except Exception as exc:
        steps.close()
        if logging.getLogger().level <= logging.DEBUG:
            console.print_exception()
        console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc} [dim](-v shows the traceback)[/]")
        console.print(f"[dim]Logs of every process are in {options.log_dir}/[/]")
        return 1
    except asyncio.CancelledError:
        steps.close()
        console.print("[bold]Stopped.[/] Every process has exited.")
        raise


async def _local(
    console: Console, steps: Steps, options: UpOptions, *, demo: bool, exit_after: bool, t0: float
) -> int:
    from zgserve.stack.local import local_network

    console.print("[bold]Starting a local 0G network with a verifiable provider[/]")
    async with local_network(options, steps) as (stack, devnet):
        ok = True
        if demo:
            ok = await _demo(console, steps, stack, devnet, t0)
        steps.close()
        if exit_after:
            console.print("[dim]Stopping every process (--exit-after-demo)…[/]")
            return 0 if ok else 1
        _print_up(console, stack)
        await _until_a_child_exits(console, stack)
        return 1


async def _demo(console: Console, steps: Steps, stack: RunningStack, devnet: Devnet, t0: float) -> bool:
    from zgserve.stack.demo import DemoUser
    from zgserve.stack.report import print_demo_report

    user = devnet.deployment.users[0]
    runner = DemoUser(
        devnet.chain, user.private_key, stack.provider, stack.broker_url, steps=steps, launched_at=t0
    )
    try:
        report = await runner.run()
    finally:
        steps.close()
    print_demo_report(console, report)
    return report.ok


async def _provider_alone(console: Console, steps: Steps, config: Path, options: UpOptions) -> int:
    from zgserve.stack.local import provider_alone

    console.print(f"[bold]Starting the provider from {config}[/]")
    async with provider_alone(config, options, steps) as stack:
        steps.close()
        _print_up(console, stack)
        await _until_a_child_exits(console, stack)
        return 1


def _print_up(console: Console, stack: RunningStack) -> None:
    from zgserve.stack.report import print_urls

    print_urls(console, stack)
    console.print("[bold]Press Ctrl-C to stop every process.[/]")


async def _until_a_child_exits(console: Console, stack: RunningStack) -> None:
    """Serve until the command is stopped (cancelled) or a child exits on its own (then say which)."""
    crashed = await stack.processes.wait_for_exit()
    console.print(
        f"[bold red]{crashed.name} exited with status {crashed.returncode}[/]; last lines of its log:\n"
        f"{crashed.log_tail()}"
    )
