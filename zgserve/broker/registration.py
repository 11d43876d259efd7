"""On-chain registration of the provider's service, sent only when something changed.

``addOrUpdateService`` resets the owner's acknowledgement of the TEE signer when
type, model, verifiability, signer or additionalInfo change (not for prices or
URL), so the comparison is exact: additionalInfo is compared as parsed JSON and
addresses case-insensitively, and a restart with the same configuration sends
nothing.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

import aiohttp

from zgserve.broker.catalog import Catalog, catalog_from_settings
from zgserve.broker.core import ServiceState
from zgserve.broker.settings import BrokerSettings
from zgserve.chain.errors import ServiceNotExist
from zgserve.chain.inference import InferenceServing
from zgserve.chain.types import Service, ServiceParams
from zgserve.common.errors import UpstreamUnavailable
from zgserve.common.money import fmt_og
from zgserve.common.pricing import tiers_json

logger = logging.getLogger(__name__)

SyncOutcome = Literal["registered", "updated", "unchanged"]


def _is_multi_model(catalog: Catalog) -> bool:
    return len(catalog) > 1 or catalog.default.is_wildcard


def additional_info(settings: BrokerSettings, target_tee_address: str, catalog: Catalog | None = None) -> str:
    """The additionalInfo JSON: separated target with its TEE address, the catalog, configured extras.

    A multi-model provider says so (``MultiModel``, ``priceDenomination``: what the SDK's
    ``parseMultiModelInfo`` reads) and nothing more: its per-model prices, tiers and cache
    billing are in ``/v1/models``, where the SDK and CLI look for them. A single model's
    tiers and cache billing go on-chain, where ``list-providers`` reads them.
    """
    catalog = catalog or catalog_from_settings(settings)
    info: dict[str, Any] = {"TargetSeparated": True, "TargetTeeAddress": target_tee_address}
    if _is_multi_model(catalog):
        info["MultiModel"] = True
        info["priceDenomination"] = "NATIVE"  # prices are neuron, not a USD feed
    else:
        pricing = catalog.default.pricing
        if pricing.tiers:
            info["tieredPricing"] = {"tiers": tiers_json(pricing, camel=True)}
        if pricing.cache_divisor:
            info["cacheTokenBilling"] = {"divisor": pricing.cache_divisor}
    info.update(settings.registration.additional_info)
    return json.dumps(info, separators=(",", ":"))


def service_params(
    settings: BrokerSettings,
    state: ServiceState,
    *,
    tee_signer: str,
    target_tee_address: str,
    catalog: Catalog | None = None,
) -> ServiceParams:
    """What ``addOrUpdateService`` registers.

    A catalog configured with ``models`` registers its first selectable model as the
    default (what a request without ``model`` means to the SDK) at the catalog's highest
    prices, as the official broker does: the on-chain price bounds what any request
    costs. A provider configured the old way registers ``state`` (the admin API may
    have changed it).
    """
    catalog = catalog or catalog_from_settings(settings)
    model, input_price, output_price = state.model, state.input_price, state.output_price
    if settings.models:
        model = next((m.id for m in catalog if not m.is_wildcard), catalog.default.id)
        input_price, output_price = catalog.onchain_prices()
    return ServiceParams(
        service_type=state.service_type,
        url=state.url,
        model=model,
        verifiability=settings.registration.verifiability,
        input_price=input_price,
        output_price=output_price,
        additional_info=additional_info(settings, target_tee_address, catalog),
        tee_signer_address=tee_signer,
    )


def _same_info(a: str, b: str) -> bool:
    try:
        return bool(json.loads(a) == json.loads(b))
    except ValueError:
        return a == b


def differences(current: Service, wanted: ServiceParams) -> list[str]:
    """Names of the fields that differ between the registered service and ``wanted``."""
    diff = []
    for name in ("service_type", "url", "model", "verifiability", "input_price", "output_price"):
        if getattr(current, name) != getattr(wanted, name):
            diff.append(name)
    if not _same_info(current.additional_info, wanted.additional_info):
        diff.append("additional_info")
    if current.tee_signer_address.lower() != wanted.tee_signer_address.lower():
        diff.append("tee_signer_address")
    return diff


_KEEPS_ACK = {"url", "input_price", "output_price"}


async def sync_service(
    inference: InferenceServing, provider: str, wanted: ServiceParams, *, stake: int
) -> SyncOutcome:
    """Register the service (with ``stake``) or update it if it differs; no transaction otherwise."""
    try:
        current = await inference.get_service(provider)
    except ServiceNotExist:
        current = None
    if current is None:
        logger.info("registering the service on-chain with a stake of %s", fmt_og(stake))
        await inference.add_or_update_service(wanted, stake=stake)
        return "registered"
    diff = differences(current, wanted)
    if not diff:
        logger.info("on-chain service is up to date")
        return "unchanged"
    logger.info("updating the on-chain service: %s changed", ", ".join(diff))
    if set(diff) - _KEEPS_ACK:
        logger.warning(
            "this update resets the owner's acknowledgement of the TEE signer until re-acknowledged"
        )
    await inference.add_or_update_service(wanted, stake=0)
    return "updated"


async def fetch_service_signer(http: aiohttp.ClientSession, target_url: str) -> str:
    """The verifiable service's signing address, from its attestation report."""
    url = target_url + "/attestation/report"
    try:
        async with http.get(url) as resp:
            if resp.status != 200:
                raise UpstreamUnavailable(f"{url} answered {resp.status}")
            report = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise UpstreamUnavailable(f"cannot read the service's attestation report at {url}: {exc}") from exc
    address = report.get("signing_address") if isinstance(report, dict) else None
    if not isinstance(address, str) or not address.startswith("0x"):
        raise UpstreamUnavailable(f"{url} has no signing_address")
    return address
