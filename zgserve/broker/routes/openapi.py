"""``GET /v1/openapi.json``: the OpenAPI 3.1 document of the broker's public routes.

The document describes what a user (or the official SDK) may call: the billed
completions, the anonymous pass-throughs under ``/v1/proxy``, the broker's own
quote and models, a user's fees and settlements, and the health check. The admin
API is left out on purpose: it is served to the operator only.

Request bodies are described by the small models below (OpenAI field names, only
the fields the stack honours); every refusal has the one error shape
``{"error": {"message", "type", "param", "code"}}``. The document is built once,
from plain data, when the route is first called.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from zgserve.broker.routes.openapi_media import MEDIA_MODELS, media_paths

OPENAPI_VERSION = "3.1.0"
_REF = "#/components/schemas/{model}"
_ADDRESS = r"^0x[0-9a-fA-F]{40}$"


class ErrorDetail(BaseModel):
    """The body of every refusal, as the OpenAI API shapes it."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields shared by both completion endpoints: the length and number of answers, sampling."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1, description="lowered to the provider's limit")
    n: int | None = Field(default=None, ge=1, le=8)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    stop: str | list[str] | None = None


class ChatCompletionRequest(_Sampling):
    """``POST /v1/proxy/chat/completions``: billed for its prompt and completion tokens."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(_Sampling):
    """``POST /v1/proxy/completions`` (legacy completions): billed like chat."""

    prompt: str


class Health(BaseModel):
    status: str
    provider: str
    model: str


class UnsettledFee(BaseModel):
    unsettledFee: str = Field(pattern=r"^[0-9]+$", description="neuron, decimal")


_MODELS: tuple[type[BaseModel], ...] = (
    ErrorResponse,
    ChatCompletionRequest,
    CompletionRequest,
    Health,
    UnsettledFee,
    *MEDIA_MODELS,
)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": "#/components/responses/Error"} for s in statuses}


def _param(name: str, where: str, schema: dict[str, Any], *, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema}


_ANY_OBJECT: dict[str, Any] = {"type": "object"}
_NEURON: dict[str, Any] = {"type": "string", "pattern": r"^[0-9]+$", "description": "neuron per token"}
_COUNT: dict[str, Any] = {"type": "integer", "minimum": 0}
# The SDK's ``ProviderModelInfo`` (``types/inference/broker/read-only-model.d.ts``); more keys may come.
_MODEL_INFO: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "owned_by", "type", "pricing"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "owned_by": {"type": "string", "pattern": _ADDRESS},
        "canonical_id": {"type": "string"},
        "type": {"type": "string"},
        "context_length": _COUNT,
        "max_completion_tokens": _COUNT,
        "supported_parameters": {"type": "array", "items": {"type": "string"}},
        "pricing": {
            "type": "object",
            "required": ["prompt", "completion"],
            "properties": {
                "prompt": _NEURON,
                "completion": _NEURON,
                "tiered_pricing": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["max_input_tokens", "input_multiplier", "output_multiplier"],
                        "properties": {
                            "max_input_tokens": _COUNT,
                            "input_multiplier": _COUNT,
                            "output_multiplier": _COUNT,
                            "input_multiplier_denominator": {"type": "integer", "minimum": 1},
                            "output_multiplier_denominator": {"type": "integer", "minimum": 1},
                        },
                    },
                },
                "cache_token_billing": {
                    "type": "object",
                    "required": ["divisor"],
                    "properties": {"divisor": {"type": "integer", "minimum": 1}},
                },
            },
        },
        "verifiability": {"type": "string"},
        "tee_attested": {"type": "boolean"},
        "tee_verifier": {"type": "string"},
        "tee_type": {"type": "string"},
    },
}
_MODEL_LIST: dict[str, Any] = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _MODEL_INFO}},
}
_ADDRESS_PARAM = _param("address", "path", {"type": "string", "pattern": _ADDRESS})
_PAGE = [
    _param("offset", "query", {"type": "integer", "minimum": 0, "maximum": 10**9}),
    _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 500}),
]
_BEARER: list[dict[str, list[str]]] = [{"appSk": []}]


def _completion(model: type[BaseModel], summary: str) -> dict[str, Any]:
    answer = _json(_ANY_OBJECT, "the signed answer (JSON, or SSE when `stream` is true)")
    answer["headers"] = {
        "ZG-Res-Key": {
            "description": "the answer's id: fetch its signature at /v1/proxy/signature/{id}",
            "schema": {"type": "string"},
        }
    }
    answer["content"]["text/event-stream"] = {"schema": {"type": "string"}}
    return {
        "post": {
            "summary": summary,
            "security": _BEARER,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(model)}}},
            "responses": {"200": answer, **_errors(400, 401, 402, 403, 413, 429)},
        }
    }


def _get(
    summary: str,
    schema: dict[str, Any],
    *,
    params: list[dict[str, Any]] | None = None,
    errors: tuple[int, ...] = (),
    secured: bool = False,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": _json(schema, "OK"), **_errors(*errors)},
    }
    if params:
        operation["parameters"] = params
    if secured:
        operation["security"] = _BEARER
    return {"get": operation}


def _paths() -> dict[str, Any]:
    return {
        "/v1/proxy/chat/completions": _completion(ChatCompletionRequest, "A billed chat completion"),
        "/v1/proxy/completions": _completion(CompletionRequest, "A billed legacy completion"),
        **media_paths(),
        "/v1/proxy/models": _get("The service's models", _ANY_OBJECT),
        "/v1/proxy/attestation/report": _get(
            "The service's attestation report (binds its signing key)", _ANY_OBJECT
        ),
        "/v1/proxy/signature/{id}": _get(
            "The signature of one answer",
            _ANY_OBJECT,
            params=[
                _param("id", "path", {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,128}$"}),
                _param("model", "query", {"type": "string", "maxLength": 256}),
            ],
            errors=(400, 404),
        ),
        "/v1/quote": _get("The broker's attestation (its settlement signer)", _ANY_OBJECT),
        "/v1/models": _get("The models this broker sells, with their prices (the SDK reads it)", _MODEL_LIST),
        "/v1/user/{address}/unsettledfee": _get(
            "The token owner's fees not yet settled",
            _ref(UnsettledFee),
            params=[_ADDRESS_PARAM],
            errors=(400, 401, 403),
            secured=True,
        ),
        "/v1/user/{address}/settlements": _get(
            "The token owner's settlements, newest first",
            _ANY_OBJECT,
            params=[_ADDRESS_PARAM, *_PAGE],
            errors=(400, 401, 403),
            secured=True,
        ),
        "/v1/user/{address}/settlements/{nonce}": _get(
            "One settlement with its receipts and their Merkle proofs",
            _ANY_OBJECT,
            params=[_ADDRESS_PARAM, _param("nonce", "path", {"type": "string", "pattern": r"^[0-9]{1,20}$"})],
            errors=(400, 401, 403, 404),
            secured=True,
        ),
        "/health": _get("Liveness", _ref(Health)),
        "/v1/openapi.json": _get("This document", _ANY_OBJECT),
    }


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the broker's public routes (a fresh dict is not needed: read only)."""
    schemas: dict[str, Any] = {}
    for model in _MODELS:
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "zgserve provider broker",
            "version": "1",
            "description": "Billed, verifiable LLM inference on the 0G Compute Network.",
        },
        "paths": _paths(),
        "components": {
            "schemas": schemas,
            "responses": {"Error": _json(_ref(ErrorResponse), "refused: the error says why")},
            "securitySchemes": {
                "appSk": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the official SDK's `app-sk-` token",
                }
            },
        },
    }


async def openapi_json(request: Request) -> Response:
    return JSONResponse(openapi_document())


routes = [Route("/v1/openapi.json", openapi_json, methods=["GET"])]
