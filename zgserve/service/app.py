"""The verifiable service's ASGI app: explicit wiring at start-up, errors mapped once.

``create_app(settings, deps)`` builds nothing at import time; the lifespan starts,
in order: the embedded model server (when there is no ``target_url``), the
backend session, the signature store, the TEE backend and its signing key, GPU
evidence, the report service, and the signing proxy; shutdown goes in reverse.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from zgserve.common.errors import ZgError
from zgserve.common.signing import Signer
from zgserve.service.attestation import (
    GpuEvidenceSource,
    TeeBackend,
    get_gpu_evidence_source,
    get_tee_backend,
)
from zgserve.service.llama import LlamaConfig, LlamaServer
from zgserve.service.outbound import RequestLimits
from zgserve.service.params import ParamPolicy
from zgserve.service.proxy import SigningProxy
from zgserve.service.reports import ReportService
from zgserve.service.routes import (
    CompletionFastPath,
    ServiceRuntime,
    build_routes,
    completion_endpoints,
    handle_error,
)
from zgserve.service.settings import ServiceSettings
from zgserve.service.store import SignatureStore
from zgserve.service.tokens import TokenCounter
from zgserve.service.upstream import Upstream

logger = logging.getLogger(__name__)


@dataclass
class ServiceDeps:
    """Parts to use instead of building them from settings (tests, embedding)."""

    tee: TeeBackend | None = None
    gpu: GpuEvidenceSource | None = None
    signer: Signer | None = None


def create_app(settings: ServiceSettings, deps: ServiceDeps | None = None) -> CompletionFastPath:
    """The service app for ``settings``; ``deps`` replaces parts that would be built from them."""
    deps = deps or ServiceDeps()
    runtime = ServiceRuntime(
        policy=ParamPolicy(
            allowed=frozenset(settings.allowed_params),
            refused=frozenset(settings.refused_params),
            allow_json_schema=settings.allow_json_schema,
        ),
        limits=RequestLimits(
            max_request_bytes=settings.max_request_bytes,
            max_output_tokens=settings.max_output_tokens,
            max_choices=settings.max_choices,
            default_model=settings.llama.model_alias if settings.target_url is None else None,
            embedding_token_inputs=settings.embedding_token_inputs,
        ),
        retention_s=settings.signature_retention_s,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            target_url = settings.target_url
            if target_url is None:
                llama = LlamaServer(LlamaConfig.from_settings(settings.llama))
                await llama.start()
                stack.push_async_callback(llama.stop)
                target_url = llama.base_url

            upstream = Upstream(
                target_url,
                api_key=settings.target_api_key.get_secret_value() if settings.target_api_key else None,
                connect_timeout_s=settings.connect_timeout_s,
                read_timeout_s=settings.read_timeout_s,
                connections=settings.upstream_connections,
            )
            await upstream.start()
            stack.push_async_callback(upstream.close)

            store = SignatureStore(
                settings.store_path,
                retention_s=settings.signature_retention_s,
                flush_interval_s=settings.store_flush_interval_s,
            )
            await store.open()
            stack.push_async_callback(store.close)

            tee = deps.tee or get_tee_backend(
                settings.tee,
                dstack_socket=settings.dstack_socket,
                simulated_key_file=settings.simulated_key_file,
                require_hardware=settings.require_tee,
            )
            stack.push_async_callback(tee.close)
            signer = deps.signer or await tee.signing_key("service")
            gpu = deps.gpu if deps.gpu is not None else get_gpu_evidence_source(settings.gpu_evidence)

            reports = ReportService(tee, gpu, signer.address, refresh_s=settings.report_refresh_s)
            await reports.start()
            stack.push_async_callback(reports.stop)

            counter = TokenCounter(upstream.session, upstream.base_url, upstream.headers)
            runtime.proxy = SigningProxy(
                upstream, signer, store, counter, count_timeout_s=settings.prompt_count_timeout_s
            )
            runtime.upstream = upstream
            runtime.store = store
            runtime.reports = reports
            runtime.signer = signer
            runtime.tee_name = tee.name
            logger.info(
                "verifiable service: backend %s, TEE %s%s, signing address %s",
                target_url,
                tee.name,
                "" if tee.is_hardware else " (NOT hardware: reports say so)",
                signer.address,
            )
            yield

    app = Starlette(
        routes=build_routes(runtime),
        lifespan=lifespan,
        # ZgError and HTTPException are answered by Starlette's exception middleware; anything else
        # reaches the server-error middleware, which answers 500 JSON and lets the server log it.
        exception_handlers={ZgError: handle_error, HTTPException: handle_error, Exception: handle_error},
    )
    # Each route has one spelling: a redirect (say from a trailing slash) would be followed by a client
    # to an answer that no broker in front of us billed.
    app.router.redirect_slashes = False
    return CompletionFastPath(app, completion_endpoints(runtime))
