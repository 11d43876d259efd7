"""``zgserve service`` (the verifiable service), ``zgserve model`` (the model server alone)
and ``zgserve verify ...`` (the client-side verifier)."""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from pathlib import Path
from typing import Any

import typer

from zgserve.common.errors import ConfigError

verify_app = typer.Typer(
    help="Verify a verifiable service's signatures and attestation.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.command("service", help="Run the verifiable service (signed answers, attestation).")(service)
    app.command("model", help="Run only the embedded llama.cpp model server (SmolLM2 by default).")(model)
    app.add_typer(verify_app, name="verify")


def service(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML settings file."),
    host: str | None = typer.Option(None, help="Listen address (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Listen port (default 8000)."),
    target_url: str | None = typer.Option(
        None, "--target-url", help="OpenAI-compatible backend; default: start the embedded llama.cpp server."
    ),
    tee: str | None = typer.Option(None, help="auto | tdx | dstack | simulated"),
    store_path: Path | None = typer.Option(None, help="SQLite file of the signature store."),
) -> None:
    import uvicorn

    from zgserve.service.app import create_app
    from zgserve.service.server import uvicorn_config
    from zgserve.service.settings import load_settings

    try:
        settings = load_settings(
            config, host=host, port=port, target_url=target_url, tee=tee, store_path=store_path
        )
    except ConfigError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    uvicorn.Server(uvicorn_config(create_app(settings), settings.host, settings.port)).run()


def model(
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8001),
    model_path: Path | None = typer.Option(
        None, "--model", help="GGUF file (default: SmolLM2-135M-Instruct)."
    ),
    n_ctx: int = typer.Option(2048),
    n_threads: int = typer.Option(2),
    alias: str | None = typer.Option(None, "--alias", help="The model name it answers to."),
    embedding: bool = typer.Option(
        False, "--embedding", help="Serve mean-pooled /v1/embeddings instead of completions."
    ),
) -> None:
    from zgserve.service.llama_server import main

    args = ["--host", host, "--port", str(port), "--n-ctx", str(n_ctx), "--n-threads", str(n_threads)]
    if model_path is not None:
        args += ["--model", str(model_path)]
    if alias is not None:
        args += ["--alias", alias]
    if embedding:
        args.append("--embedding")
    main(args)


def _finish(result: Any) -> None:
    typer.echo(result.render())
    raise typer.Exit(0 if result.verified else 1 if result.failed else 3)


async def _get_json(url: str, headers: dict[str, str]) -> Any:
    import aiohttp

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
        session.get(url, headers=headers) as resp,
    ):
        if resp.status != 200:
            raise typer.BadParameter(f"{url} answered {resp.status}: {(await resp.text())[:300]}")
        return await resp.json(content_type=None)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


@verify_app.command("signature")
def verify_signature_cmd(
    request: Path = typer.Option(..., help="File with the exact request body bytes sent."),
    response: Path = typer.Option(..., help="File with the exact response body bytes received."),
    record: Path | None = typer.Option(None, help="Signature record JSON file ({text, signature, ...})."),
    url: str | None = typer.Option(None, help="Service base URL to fetch the record from (with --id)."),
    response_id: str | None = typer.Option(None, "--id", help="Response id (ZG-Res-Key)."),
    address: str | None = typer.Option(None, help="The attested signing address to compare with."),
    prefix: str = typer.Option("/v1", help="API prefix (/v1/proxy behind a 0G broker)."),
) -> None:
    """Check a signature against the bytes you sent and received."""
    from zgserve.client.verify import verify_signature

    if record is not None:
        data = json.loads(record.read_text())
    elif url and response_id:
        data = asyncio.run(_get_json(f"{url.rstrip('/')}{prefix}/signature/{response_id}", {}))
    else:
        raise typer.BadParameter("give --record, or --url with --id")
    _finish(verify_signature(request.read_bytes(), response.read_bytes(), data, expected_address=address))


@verify_app.command("report")
def verify_report_cmd(
    url: str | None = typer.Option(None, help="Service base URL: fetch a report for a fresh nonce."),
    file: Path | None = typer.Option(None, help="A saved report JSON (needs --nonce)."),
    nonce: str | None = typer.Option(None, help="The 64-hex nonce the report must carry."),
    address: str | None = typer.Option(None, help="Expected signing address."),
    offline: bool = typer.Option(False, help="Do not contact NVIDIA's attestation service."),
    prefix: str = typer.Option("/v1", help="API prefix (/v1/proxy behind a 0G broker)."),
) -> None:
    """Check an attestation report's binding, nonce and evidence."""
    from zgserve.client.verify import verify_report

    if file is not None:
        if nonce is None:
            raise typer.BadParameter("a saved report needs the --nonce it was requested with")
        report = json.loads(file.read_text())
        nonce_bytes = bytes.fromhex(nonce)
    elif url is not None:
        nonce_bytes = bytes.fromhex(nonce) if nonce else secrets.token_bytes(32)
        report = asyncio.run(
            _get_json(f"{url.rstrip('/')}{prefix}/attestation/report?nonce={nonce_bytes.hex()}", {})
        )
    else:
        raise typer.BadParameter("give --url or --file")
    _finish(asyncio.run(verify_report(report, nonce_bytes, expected_address=address, online=not offline)))


@verify_app.command("chat")
def verify_chat_cmd(
    url: str = typer.Option(..., help="Service base URL."),
    prompt: str = typer.Option("Say hello in five words.", help="The user message."),
    model_name: str | None = typer.Option(None, "--model", help="Model name to send."),
    stream: bool = typer.Option(False, help="Stream the answer."),
    api_key: str | None = typer.Option(None, help="Bearer token (a 0G broker needs one)."),
    offline: bool = typer.Option(False, help="Do not contact NVIDIA's attestation service."),
    prefix: str = typer.Option("/v1", help="API prefix (/v1/proxy behind a 0G broker)."),
) -> None:
    """Attest the service with a fresh nonce, send one chat request, verify its signature."""
    _finish(asyncio.run(_verify_chat(url.rstrip("/") + prefix, prompt, model_name, stream, api_key, offline)))


async def _verify_chat(
    base: str, prompt: str, model_name: str | None, stream: bool, api_key: str | None, offline: bool
) -> Any:
    import aiohttp

    from zgserve.client.verify import verify_report, verify_signature

    nonce = secrets.token_bytes(32)
    report = await _get_json(f"{base}/attestation/report?nonce={nonce.hex()}", {})
    result = await verify_report(report, nonce, online=not offline)
    payload: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "stream": stream}
    if model_name:
        payload["model"] = model_name
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **_headers(api_key)}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session,
        session.post(f"{base}/chat/completions", data=body, headers=headers) as resp,
    ):
        answer = await resp.read()
        response_id = resp.headers.get("ZG-Res-Key")
    if not response_id:
        sys.stderr.write(answer.decode("utf-8", "replace")[:500] + "\n")
        raise typer.BadParameter("the answer carries no ZG-Res-Key")
    record = await _get_json(f"{base}/signature/{response_id}", {})
    return verify_signature(body, answer, record, expected_address=report.get("signing_address"), into=result)
