"""Prices and models changed without downtime: the config file read again on ``SIGHUP``.

What a reload changes: the catalog (``model``, ``inputPrice``, ``outputPrice``,
``models[]``), on-chain first (``addOrUpdateService`` when the registered service
differs), then billing, in one step of the event loop. A request admitted before the
swap keeps the prices it was admitted with (its pricing is taken at admission), so
no request is ever billed at two prices. Anything else in the file needs a restart
and is named in the log; a file that does not load, or a catalog that needs a
service the broker has no connection pool for, is refused and the running
configuration stays.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from zgserve.broker import registration
from zgserve.broker.catalog import catalog_from_settings
from zgserve.broker.core import BrokerCore, ServiceState
from zgserve.broker.settings import BrokerSettings, load_settings
from zgserve.common.errors import ZgError

logger = logging.getLogger(__name__)

CATALOG_KEYS = ("model", "input_price", "output_price", "models")


async def reload_catalog(core: BrokerCore, path: Path) -> str:
    """Apply the catalog of ``path``; ``updated`` / ``registered`` / ``unchanged`` / ``refused``."""
    try:
        new = load_settings(path)
    except ZgError as exc:
        logger.error("reload refused, the running configuration stays: %s", exc.message)
        return "refused"
    old = core.settings
    known = {old.target_url, *core.model_upstreams}
    unknown = {m.target_url for m in new.models if m.target_url and m.target_url not in known}
    if unknown:
        logger.error("reload refused: new model services need a restart: %s", ", ".join(sorted(unknown)))
        return "refused"
    catalog = catalog_from_settings(new)
    state = ServiceState(
        url=core.service.url,
        model=new.model,
        service_type=core.service.service_type,
        input_price=new.input_price,
        output_price=new.output_price,
        tee_address=core.service.tee_address,
    )
    outcome = "unchanged"
    if core.inference is not None and state.tee_address:
        params = registration.service_params(
            new,
            state,
            tee_signer=core.settlement_signer.address,
            target_tee_address=state.tee_address,
            catalog=catalog,
        )
        try:
            outcome = await registration.sync_service(
                core.inference, core.provider_address, params, stake=old.registration.stake
            )
        except ZgError as exc:
            # Billing must never run ahead of what is registered: keep both as they were.
            logger.error("reload refused, the on-chain update failed: %s", exc.message)
            return "refused"
    # On-chain is done: billing follows in this one step (no await from here on).
    core.settings = old.model_copy(update={key: getattr(new, key) for key in CATALOG_KEYS})
    core.catalog = catalog
    core.service = state
    others = _restart_needed(old, new)
    if others:
        logger.warning("reload: changes to %s take effect after a restart", ", ".join(others))
    logger.info("reload: catalog of %d model(s) in force (on-chain: %s)", len(catalog), outcome)
    return outcome


def _restart_needed(old: BrokerSettings, new: BrokerSettings) -> list[str]:
    fields = type(old).model_fields
    return [name for name in fields if name not in CATALOG_KEYS and getattr(old, name) != getattr(new, name)]


def install_sighup(core_of: Callable[[], BrokerCore | None], path: Path) -> Callable[[], None]:
    """Reload ``path`` on SIGHUP (one reload at a time); returns the function that uninstalls it."""
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[str]] = set()

    def on_signal() -> None:
        core = core_of()
        if core is None or running:
            return
        task = loop.create_task(reload_catalog(core, path))
        running.add(task)
        task.add_done_callback(running.discard)

    loop.add_signal_handler(signal.SIGHUP, on_signal)

    def uninstall() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return uninstall
