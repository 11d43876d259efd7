"""Fixtures of the settlement tests: a provider with a settlement signer, users, a journal database.

* ``make_env`` (function): ``async with make_env(on=None, db="sqlite"|"postgres") as env``
  gives a :class:`SettlementEnv`: a fresh provider registered on a devnet of its own
  (or ``on``) whose ``teeSignerAddress`` is the simulated TEE's
  ``settlement`` key in ``env.key_file`` -- exactly what a broker with that
  configuration signs with -- plus a migrated database and a broker YAML file
  (``env.config_file``) for ``zgserve settle`` processes.
* ``env.user(amount)``: a fresh user with a sub-account of ``amount`` with the provider.
* ``env.record(user, n, fee)``: ``n`` charged requests stored as the broker stores them.
* ``env.engine(**settlement_keys)``: an in-process :class:`SettlementEngine` (``clock=``
  gives it a clock of the test's own, ``chain=`` a client of its own, ``lease=`` a lease).
* ``env.settle_process(*args, crash_at=None)``: ``python -m zgserve.broker.settlement ...``
  as a real process.
* ``env.spawn(*args)``: the same, in the background (e.g. ``run``, the settlement loop).
* ``env.check_exactly_once()``: chain totals equal the records, every record settled once.
* ``env.batches()``, ``env.candidates()``: the journal's batches and candidate transactions.
* ``start_broker``, ``funded_user``, ``service_url``: the broker tests' fixtures (a real
  broker in this event loop); ``deps=engine_deps(...)`` gives it the engine with test timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

# The broker's fixtures (real broker, verifiable service and fake backend on loopback ports).
from tests.integration.broker.conftest import (  # noqa: F401 - fixtures used by this directory's tests
    fake_backend,
    funded_user,
    service_url,
    start_broker,
    throwaway_database,
)
from zgserve.broker.app import BrokerDeps
from zgserve.broker.db import create_engine, repo
from zgserve.broker.db.models import FeeRecord, RequestRow
from zgserve.broker.settlement import journal
from zgserve.broker.settlement.builder import SigningContext
from zgserve.broker.settlement.config import SettlementConfig
from zgserve.broker.settlement.engine import CRASH_ENV, SettlementEngine
from zgserve.broker.settlement.lease import Lease
from zgserve.broker.settlement.models import BatchRow, EntryRow, TransactionRow
from zgserve.broker.settlement.wiring import settlement_factory
from zgserve.chain import ChainClient, TxPolicy
from zgserve.common.money import OG
from zgserve.common.signing import Signer
from zgserve.devnet.deployment import DevAccount
from zgserve.devnet.network import Devnet, start_devnet
from zgserve.devnet.testing import PROVIDER_STAKE, service_params
from zgserve.service.attestation.simulated import SimulatedTee

ROOT = Path(__file__).resolve().parents[3]
INPUT_PRICE = 1_000_000_000
OUTPUT_PRICE = 2_000_000_000
# Fast loops for tests; every other key keeps its production default.
TEST_SETTLEMENT = {
    "intervalSeconds": 0.2,
    "minRoundGapSeconds": 0.05,
    "backoffInitialSeconds": 0.2,
    "leaseSeconds": 1.0,  # a killed process's lease passes to its successor after 1 s
}


# Transactions pay the node's price without markup, capped: the default 10 % markup feeds back
# into anvil's next price suggestion and compounds over a long test session.
TEST_TX_POLICY = TxPolicy(gas_price_buffer_percent=0, gas_price_cap=50 * 10**9)


@dataclass
class SettlementEnv:
    net: Devnet
    chain: ChainClient  # sends with TEST_TX_POLICY
    provider: DevAccount
    signer: Signer
    key_file: Path
    db: AsyncEngine
    db_url: str
    workdir: Path
    users: list[DevAccount] = field(default_factory=list)
    initial_balances: dict[str, int] = field(default_factory=dict)

    @property
    def owner(self) -> Any:
        """The contracts' owner, sending through this env's client."""
        assert self.net.deployment.owner is not None
        return self.chain.wallet(self.net.deployment.owner.private_key)

    @property
    def inference(self) -> Any:
        return self.chain.inference(self.chain.wallet(self.provider.private_key))

    async def user(self, amount: int = 2 * OG, ledger: int = 10 * OG) -> DevAccount:
        user = await self.net.new_account()
        ledger_contract = self.chain.ledger(self.chain.wallet(user.private_key))
        await ledger_contract.add_ledger(max(ledger, amount + 3 * OG))
        await ledger_contract.transfer_fund(self.provider.address, amount)
        self.users.append(user)
        self.initial_balances[user.address.lower()] = amount
        return user

    async def record(
        self, user: DevAccount, n: int = 1, *, fee: int | None = None, tokens: tuple[int, int] = (11, 3)
    ) -> list[FeeRecord]:
        """Store ``n`` charged requests of ``user`` (fee from tokens and prices unless given)."""
        records = [
            FeeRecord(
                request_id=uuid.uuid4().hex,
                user=user.address.lower(),
                model="fake-model",
                endpoint="/v1/chat/completions",
                stream=False,
                input_tokens=tokens[0],
                output_tokens=tokens[1],
                input_price=INPUT_PRICE,
                output_price=OUTPUT_PRICE,
                fee=fee if fee is not None else tokens[0] * INPUT_PRICE + tokens[1] * OUTPUT_PRICE,
                response_id=f"chatcmpl-{uuid.uuid4().hex[:12]}",
                status="complete",
                created_at=datetime.now(UTC),
            )
            for _ in range(n)
        ]
        async with self.db.begin() as conn:
            await repo.insert_records(conn, records)
        return records

    def engine(
        self,
        *,
        clock: Callable[[], float] = time.time,
        chain: ChainClient | None = None,
        lease: Lease | None = None,
        **settlement: Any,
    ) -> SettlementEngine:
        """An engine on this env's client, or on ``chain`` (another replica's own nonce sequence)."""
        cfg = SettlementConfig.model_validate({"enabled": True, **TEST_SETTLEMENT, **settlement})
        chain = chain or self.chain
        inference = chain.inference(chain.wallet(self.provider.private_key))
        return SettlementEngine(
            db=self.db,
            chain=chain,
            inference=inference,
            signing=SigningContext(
                chain_id=self.net.deployment.chain_id,
                contract=inference.address,
                provider=self.provider.address,
                signer=self.signer,
            ),
            config=cfg,
            clock=clock,
            lease=lease,
        )

    @property
    def config_file(self) -> Path:
        path = self.workdir / "broker.yaml"
        if not path.exists():
            dep = self.net.deployment.save(self.workdir / "deployment.json")
            values = {
                "servingUrl": "http://127.0.0.1:1",
                "targetUrl": "http://127.0.0.1:1",
                "model": "fake-model",
                "inputPrice": INPUT_PRICE,
                "outputPrice": OUTPUT_PRICE,
                "privateKeys": [self.provider.private_key],
                "network": {"deployment": str(dep)},
                "database": {"url": self.db_url},
                "tee": {"backend": "simulated", "keyFile": str(self.key_file)},
            }
            path.write_text(yaml.safe_dump(values))
        return path

    async def settle_process(
        self, *args: str, crash_at: str | None = None, limit_s: float = 60.0
    ) -> tuple[int, str]:
        """Run ``python -m zgserve.broker.settlement <args> -c broker.yaml``; (exit code, output)."""
        env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
        if crash_at:
            env[CRASH_ENV] = crash_at
        options = [x for k, v in TEST_SETTLEMENT.items() for x in ("-o", f"{k}={v}")]
        if args and args[0] == "now":
            options += ["--wait", "20"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "zgserve.broker.settlement",
            *args,
            "-c",
            str(self.config_file),
            *options,
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), limit_s)
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace")

    async def spawn(self, *args: str) -> asyncio.subprocess.Process:
        """Start ``python -m zgserve.broker.settlement <args> -c broker.yaml`` in the background."""
        options = [x for k, v in TEST_SETTLEMENT.items() for x in ("-o", f"{k}={v}")]
        env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "zgserve.broker.settlement",
            *args,
            "-c",
            str(self.config_file),
            *options,
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )

    async def recorded_fees(self) -> dict[str, int]:
        async with self.db.connect() as conn:
            rows = await conn.execute(select(RequestRow.user, RequestRow.fee))
            out: dict[str, int] = {}
            for user, fee in rows:
                out[user] = out.get(user, 0) + int(fee)
        return out

    async def check_exactly_once(self) -> int:
        """Every record settled by exactly one successful entry; chain balances moved by exactly that.

        Returns the total settled.
        """
        async with self.db.connect() as conn:
            unsettled = await repo.total_unsettled(conn)
            entries = (
                await conn.execute(select(EntryRow.user, EntryRow.status, EntryRow.paid, EntryRow.total_fee))
            ).all()
            open_batches = await journal.open_batches(conn)
            rows = (await conn.execute(select(RequestRow.settlement_id, RequestRow.settled))).all()
        assert unsettled == 0
        assert not open_batches
        assert all(settled and sid is not None for sid, settled in rows)
        recorded = await self.recorded_fees()
        paid: dict[str, int] = {}
        for user, status, amount, _total in entries:
            if status in ("success", "partial"):
                paid[user] = paid.get(user, 0) + int(amount)
        assert paid == recorded, (paid, recorded)
        accounts = await self.inference.get_batch_accounts_by_users([u.address for u in self.users])
        for user, account in zip(self.users, accounts, strict=True):
            spent = self.initial_balances[user.address.lower()] - account.balance
            assert spent == recorded.get(user.address.lower(), 0), user.address
        return sum(recorded.values())

    async def batches(self) -> list[tuple[str, str, int | None]]:
        async with self.db.connect() as conn:
            rows = await conn.execute(
                select(BatchRow.state, BatchRow.tx_hash, BatchRow.gas_used).order_by(BatchRow.id)
            )
            return [(str(r[0]), str(r[1]), r[2]) for r in rows]

    async def candidates(self) -> list[tuple[str, int]]:
        """Every journaled candidate transaction as (hash, gas price), oldest first."""
        async with self.db.connect() as conn:
            rows = await conn.execute(
                select(TransactionRow.tx_hash, TransactionRow.gas_price).order_by(TransactionRow.id)
            )
            return [(str(r[0]), int(r[1])) for r in rows]


async def register_provider(net: Devnet, chain: ChainClient, key_file: Path) -> tuple[DevAccount, Signer]:
    """A fresh provider whose service names the simulated TEE's settlement key as signer."""
    provider = await net.new_account()
    tee = SimulatedTee(key_file)
    signer = await tee.signing_key("settlement")
    await tee.close()
    wallet = chain.wallet(provider.private_key)
    params = service_params(signer.address, input_price=INPUT_PRICE, output_price=OUTPUT_PRICE)
    await chain.inference(wallet).add_or_update_service(params, stake=PROVIDER_STAKE)
    assert net.deployment.owner is not None
    owner = chain.wallet(net.deployment.owner.private_key)
    await chain.inference(owner).acknowledge_tee_signer_by_owner(provider.address)
    return provider, signer


MakeEnv = Callable[..., contextlib.AbstractAsyncContextManager[SettlementEnv]]


@pytest.fixture
def make_env(tmp_path: Path) -> MakeEnv:
    @contextlib.asynccontextmanager
    async def make(*, on: Devnet | None = None, db: str = "sqlite") -> AsyncIterator[SettlementEnv]:
        workdir = tmp_path / uuid.uuid4().hex[:8]
        workdir.mkdir()
        key_file = workdir / "tee.json"
        async with contextlib.AsyncExitStack() as stack:
            net = on or await stack.enter_async_context(start_devnet(users=0))
            chain = ChainClient(net.network_config(TEST_TX_POLICY), abis=net.chain.abis)
            await chain.open()
            stack.push_async_callback(chain.close)
            provider, signer = await register_provider(net, chain, key_file)
            if db == "postgres":
                url = await stack.enter_async_context(throwaway_database())
            else:
                url = f"sqlite+aiosqlite:///{workdir}/broker.db"
            engine = create_engine(url)
            stack.push_async_callback(engine.dispose)
            await journal.migrate(engine)
            yield SettlementEnv(net, chain, provider, signer, key_file, engine, url, workdir)

    return make


def report_json(output: str) -> dict[str, Any]:
    """The JSON report a ``settle now`` process printed (the last JSON object in its output)."""
    start = output.rfind("\n{")
    start = start + 1 if start >= 0 else output.find("{")
    data, _ = json.JSONDecoder().raw_decode(output[start:])
    return dict(data)


def engine_deps(**settlement: Any) -> BrokerDeps:
    """Broker dependencies that plug in the settlement engine with test timings."""
    cfg = SettlementConfig.model_validate({"enabled": True, **TEST_SETTLEMENT, **settlement})
    return BrokerDeps(settlement_factory=lambda core: settlement_factory(core, config=cfg))
