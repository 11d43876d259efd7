"""A provider as its users see it: its on-chain service and the HTTP surface behind its url.

Paths follow the official SDK (spec §5): ``{url}/v1/proxy`` is the OpenAI base URL,
``{url}/v1/proxy/signature/{chatID}?model=`` gives a response's signature (no auth),
``{url}/v1/user/{addr}/unsettledfee`` the fee recorded and not yet settled (Bearer),
``{url}/v1/quote`` the broker's attestation, ``{url}/v1/models`` the models served.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from zgserve.chain.types import Service
from zgserve.common import money
from zgserve.common.errors import NotFound, UpstreamError, UpstreamUnavailable

# Verifiability kinds for which the SDK's processResponse checks signatures at all.
SIGNED_VERIFIABILITY = ("OpML", "TeeML", "ZKML")
SDK_SERVICE_TYPES = ("chatbot", "text-to-image", "image-editing", "speech-to-text")


def additional_info(service: Service) -> dict[str, Any] | None:
    """The service's ``additionalInfo`` JSON object, or None if it is empty or not an object."""
    try:
        info = json.loads(service.additional_info) if service.additional_info else None
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def response_signer(service: Service) -> str:
    """The address that must have signed responses, by the SDK's rule (spec §6).

    ``teeSignerAddress``, unless ``additionalInfo.TargetSeparated`` is true for a
    non-centralized provider that names ``TargetTeeAddress``.
    """
    info = additional_info(service) or {}
    target = info.get("TargetTeeAddress")
    if info.get("TargetSeparated") is True and info.get("ProviderType") != "centralized" and target:
        return str(target)
    return service.tee_signer_address


def sdk_would_verify(service: Service) -> str | None:
    """Why the SDK's ``processResponse`` would return false before checking a signature, or None."""
    if service.verifiability not in SIGNED_VERIFIABILITY:
        return f"verifiability {service.verifiability!r} is not one of {', '.join(SIGNED_VERIFIABILITY)}"
    if not service.tee_signer_acknowledged:
        return "the contract owner has not acknowledged the provider's TEE signer"
    if additional_info(service) is None:
        return "the service's additionalInfo is empty or not a JSON object"
    return None


@dataclass(frozen=True)
class SignatureRecord:
    """``GET .../signature/{id}``: the signed text and its EIP-191 signature."""

    text: str
    signature: str
    signing_address: str | None = None
    signing_algo: str | None = None


class ProviderHttp:
    """HTTP calls to one provider's url over a shared aiohttp session (owned by the caller)."""

    def __init__(self, session: aiohttp.ClientSession, service: Service) -> None:
        self.session = session
        self.service = service
        self.url = service.url.rstrip("/")

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1/proxy"

    async def _get(self, path: str, *, headers: dict[str, str] | None = None) -> Any:
        url = self.url + path
        try:
            async with self.session.get(url, headers=headers) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"provider {self.service.provider} at {self.url}: {exc!r}") from exc
        if status == 404:
            raise NotFound(f"GET {url}: 404 {_error_text(body)}")
        if status != 200:
            raise UpstreamError(f"GET {url}: HTTP {status} {_error_text(body)}")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise UpstreamError(f"GET {url}: the answer is not JSON") from exc

    async def signature(self, chat_id: str) -> SignatureRecord:
        """The signature of response ``chat_id`` (404 while unknown or for an unfinished stream)."""
        path = f"/v1/proxy/signature/{quote(chat_id, safe='')}?model={quote(self.service.model, safe='')}"
        data = await self._get(path)
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            raise UpstreamError(f"signature answer for {chat_id} has no text")
        return SignatureRecord(
            text=data["text"],
            signature=str(data.get("signature", "")),
            signing_address=data.get("signing_address"),
            signing_algo=data.get("signing_algo"),
        )

    async def unsettled_fee(self, user: str, headers: dict[str, str]) -> int:
        """What the provider has recorded for ``user`` and not yet settled, in neuron."""
        data = await self._get(f"/v1/user/{user}/unsettledfee", headers=headers)
        try:
            return money.parse(data["unsettledFee"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(f"unsettledfee answer is malformed: {exc}") from exc

    async def quote(self) -> dict[str, Any]:
        """The broker's attestation report (``/v1/quote``), as JSON."""
        data = await self._get("/v1/quote")
        if not isinstance(data, dict):
            raise UpstreamError("/v1/quote is not a JSON object")
        return data

    async def attestation_report(self, nonce: bytes | None = None) -> dict[str, Any]:
        """The verifiable service's report through the broker (``/v1/proxy/attestation/report``)."""
        query = f"?model={quote(self.service.model, safe='')}"
        if nonce is not None:
            query += f"&nonce={nonce.hex()}"
        data = await self._get("/v1/proxy/attestation/report" + query)
        if not isinstance(data, dict):
            raise UpstreamError("the attestation report is not a JSON object")
        return data

    async def models(self) -> list[dict[str, Any]]:
        data = await self._get("/v1/models")
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise UpstreamError("/v1/models has no 'data' list")
        return [m for m in items if isinstance(m, dict)]


def _error_text(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message", ""))
    return str(data)[:200]
