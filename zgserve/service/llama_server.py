"""The embedded model server: llama-cpp-python's OpenAI server plus a vLLM-style ``/tokenize``.

Run as a separate process (``python -m zgserve.service.llama_server`` or
``zgserve model``); it needs ``llama-cpp-python[server]``, which the rest of the
service does not import.

``POST /tokenize`` takes ``{"prompt": str, "add_special_tokens": bool}`` or
``{"messages": [...], "tools"?: [...]}`` and answers ``{"count", "tokens"}``. Chat
prompts are rendered with the GGUF's chat template and tokenized exactly as
llama-cpp-python's chat handler does, so the count equals the ``prompt_tokens``
of a non-streamed answer. llama-cpp-python's server sends no ``usage`` in streams;
the service uses this endpoint to count it.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse


def _chat_formatter(llama: Any) -> Any | None:
    """The Jinja2 formatter the model's chat handler uses, when the GGUF carries a template."""
    from llama_cpp import llama_chat_format

    template = llama.metadata.get("tokenizer.chat_template")
    if template is None or llama.chat_format != "chat_template.default":
        return None
    model = llama._model
    eos_id, bos_id = llama.token_eos(), llama.token_bos()
    return llama_chat_format.Jinja2ChatFormatter(
        template=template,
        eos_token=model.token_get_text(eos_id) if eos_id != -1 else "",
        bos_token=model.token_get_text(bos_id) if bos_id != -1 else "",
        stop_token_ids=[eos_id],
    )


def build_app(
    model_path: str,
    alias: str,
    *,
    n_ctx: int = 2048,
    n_threads: int = 2,
    host: str = "127.0.0.1",
    port: int = 0,
) -> Any:
    """llama-cpp-python's FastAPI app for ``model_path`` with the ``/tokenize`` route added."""
    from llama_cpp.server import app as llama_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    server = ServerSettings(host=host, port=port, interrupt_requests=False, disable_ping_events=True)
    model = ModelSettings(
        model=model_path,
        model_alias=alias,
        n_ctx=n_ctx,
        n_threads=n_threads,
        n_threads_batch=n_threads,
        verbose=False,
    )
    app = llama_app.create_app(server_settings=server, model_settings=[model])
    formatters: dict[str, Any] = {}

    async def tokenize(request: Request) -> JSONResponse:
        body = await request.json()
        if not isinstance(body, dict):
            return JSONResponse({"error": {"message": "expected a JSON object"}}, status_code=400)
        proxy: Any = llama_app._llama_proxy
        llama = proxy(body.get("model") or alias)  # the loaded model, read-only use
        if "messages" in body:
            if "formatter" not in formatters:
                formatters["formatter"] = _chat_formatter(llama)
            formatter = formatters["formatter"]
            if formatter is None:
                return JSONResponse({"error": {"message": "no chat template to apply"}}, status_code=501)
            result = formatter(messages=body["messages"], tools=body.get("tools"))
            tokens = llama.tokenize(
                result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
            )
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                return JSONResponse({"error": {"message": "'prompt' must be a string"}}, status_code=400)
            add_special = bool(body.get("add_special_tokens", True))
            tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=add_special, special=True)
        return JSONResponse({"count": len(tokens), "tokens": list(tokens), "max_model_len": n_ctx})

    app.add_route("/tokenize", tokenize, methods=["POST"])
    return app


def build_embedding_app(model_path: str, alias: str, *, n_ctx: int = 2048, n_threads: int = 2) -> Any:
    """An OpenAI ``/v1/embeddings`` server over one llama.cpp model, mean-pooled.

    llama-cpp-python's own server cannot choose the pooling (a model without a pooling type
    in its GGUF, like SmolLM2, answers one vector per token) and swaps models in one process,
    so embeddings run in a process of their own. ``usage.prompt_tokens`` is llama.cpp's count.
    """
    import asyncio

    import llama_cpp
    from starlette.applications import Starlette
    from starlette.routing import Route

    llama = llama_cpp.Llama(
        model_path,
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        n_ctx=n_ctx,
        n_threads=n_threads,
        n_threads_batch=n_threads,
        verbose=False,
    )
    lock = asyncio.Lock()  # one llama.cpp context: one request at a time

    def error(message: str, status: int = 400) -> JSONResponse:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)

    async def embeddings(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return error("expected a JSON object")
        if not isinstance(body, dict) or body.get("input") in (None, "", []):
            return error("'input' is required")
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if texts and all(isinstance(t, int) for t in texts):
            texts = [texts]
        inputs: list[str] = []
        for item in texts:
            if isinstance(item, list):  # token ids: detokenized, then embedded as text
                item = llama.detokenize([int(t) for t in item]).decode("utf-8", "replace")
            if not isinstance(item, str):
                return error("'input' items must be strings or token lists")
            inputs.append(item)
        async with lock:
            try:
                result = await asyncio.to_thread(llama.create_embedding, inputs, model=alias)
            except ValueError as exc:  # e.g. an input longer than the context
                return error(str(exc))
        return JSONResponse(dict(result))

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": alias, "object": "model", "owned_by": "me"}]})

    return Starlette(
        routes=[
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    from zgserve.service.llama import DEFAULT_ALIAS, smollm2_model_path

    parser = argparse.ArgumentParser(description="zgserve embedded llama.cpp model server")
    parser.add_argument("--model", default=None, help="GGUF path (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--alias", default=DEFAULT_ALIAS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--n-threads", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--embedding", action="store_true", help="serve /v1/embeddings only")
    args = parser.parse_args(argv)
    model = args.model or str(smollm2_model_path())
    if args.embedding:
        app = build_embedding_app(model, args.alias, n_ctx=args.n_ctx, n_threads=args.n_threads)
    else:
        app = build_app(
            model, args.alias, n_ctx=args.n_ctx, n_threads=args.n_threads, host=args.host, port=args.port
        )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
