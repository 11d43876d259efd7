"""Plugging the engine into the broker: the factory ``create_app`` calls, and the routes.

The broker (``zgserve.broker.app``) builds the engine from its core once everything
else is up, whenever it has a chain connection::

    core.settlement = settlement_factory(core)   # or BrokerDeps(settlement_factory=...)
    await core.settlement.start()                # the loop runs only if settlement.enabled
    ...
    await core.settlement.stop()                 # on shutdown; settles first if settleOnShutdown

``POST /v1/settle`` calls ``core.settlement.settle(users)``; the broker also serves
:data:`zgserve.broker.settlement.routes.routes`. :func:`standalone_engine` is the same
engine for ``zgserve settle`` processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from zgserve.broker.core import BrokerCore
from zgserve.broker.settings import BrokerSettings
from zgserve.broker.settlement import journal
from zgserve.broker.settlement.builder import SigningContext
from zgserve.broker.settlement.config import SettlementConfig
from zgserve.broker.settlement.engine import SettlementEngine
from zgserve.broker.settlement.metrics import SettlementMetrics
from zgserve.common.errors import ConfigError


def settlement_factory(core: BrokerCore, config: SettlementConfig | None = None) -> SettlementEngine:
    """A :class:`SettlementEngine` over the broker's database, chain, wallet and signer.

    Its metrics join the broker's registry (one ``/metrics``); settled users' cached
    balances and unsettled sums are invalidated through ``core.on_settled``. The loop
    runs only when ``settlement.enabled``; ``settle()`` (``POST /v1/settle``) works always.
    """
    if core.chain is None or core.inference is None:
        raise ConfigError("the settlement engine needs a chain connection (network settings)")
    cfg = config or SettlementConfig.from_settings(core.settings.settlement)

    def on_settled(users: list[str], amount: int) -> None:
        core.on_settled(users, amount=amount)

    return SettlementEngine(
        db=core.db,
        chain=core.chain,
        inference=core.inference,
        signing=SigningContext(
            chain_id=core.chain.config.chain_id,
            contract=core.inference.address,
            provider=core.provider_address,
            signer=core.settlement_signer,
        ),
        config=cfg,
        metrics=SettlementMetrics(core.metrics.registry),
        on_settled=on_settled,
    )


@contextlib.asynccontextmanager
async def standalone_engine(
    settings: BrokerSettings, config: SettlementConfig | None = None
) -> AsyncIterator[SettlementEngine]:
    """An engine outside the broker process (``zgserve settle``), from the broker's own settings.

    Same database, provider wallet and settlement signer (the TEE backend's
    ``settlement`` key) as the broker, so the lease and the journal are shared with it.
    """
    from zgserve.broker.db import create_engine
    from zgserve.chain import ChainClient, NetworkConfig
    from zgserve.service.attestation import get_tee_backend

    cfg = config or SettlementConfig.from_settings(settings.settlement)
    async with contextlib.AsyncExitStack() as stack:
        db = create_engine(
            settings.database.url,
            sqlite_synchronous=settings.database.sqlite_synchronous,
            pool_size=settings.database.pool_size,
        )
        stack.push_async_callback(db.dispose)
        await journal.migrate(db)
        net = settings.resolved_network()
        chain = ChainClient(
            NetworkConfig(
                rpc_url=net.rpc_url,
                chain_id=net.chain_id,
                ledger=net.ledger_address,
                inference=net.inference_address,
                service_name=net.service_name,
            )
        )
        await chain.open()
        stack.push_async_callback(chain.close)
        inference = chain.inference(chain.wallet(settings.provider_key()))
        tee = get_tee_backend(settings.tee.backend, simulated_key_file=settings.tee.key_file)  # type: ignore[arg-type]
        try:
            signer = await tee.signing_key("settlement")
        finally:
            await tee.close()
        yield SettlementEngine(
            db=db,
            chain=chain,
            inference=inference,
            signing=SigningContext(
                chain_id=net.chain_id,
                contract=inference.address,
                provider=inference.sender.address,
                signer=signer,
            ),
            config=cfg,
        )
