"""Fixtures of the broker integration tests: real servers on ephemeral loopback ports.

* ``fake_backend`` (session): the fake OpenAI backend.
* ``service_url`` (session): the verifiable service in front of it (simulated TEE).
* ``start_broker`` (function): ``async with start_broker(**overrides) as broker`` runs a
  broker for a fresh provider on the session devnet, registered and acknowledged by
  the owner; ``broker.url``, ``broker.core``, ``broker.provider``.
* ``funded_user`` (function): ``await funded_user(provider, amount)`` gives a fresh user
  with a ledger and a sub-account of ``amount`` with ``provider`` (acknowledged).
* ``pg_database``: ``async with pg_database() as url`` is a throwaway PostgreSQL database.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.asgi import serve
from tests.fakes.openai_backend import FakeOpenAIBackend
from zgserve.broker.app import BrokerDeps, create_app
from zgserve.broker.auth import token_digest_message
from zgserve.broker.core import BrokerCore
from zgserve.broker.settings import load_settings
from zgserve.common.money import OG
from zgserve.common.net import free_port
from zgserve.common.signing import Signer, eip191_digest
from zgserve.devnet.deployment import DevAccount
from zgserve.devnet.network import Devnet

PG_DSN = os.environ.get("ZGSERVE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
INPUT_PRICE = 1_000_000_000
OUTPUT_PRICE = 2_000_000_000


@contextlib.asynccontextmanager
async def throwaway_database() -> AsyncIterator[str]:
    """Create a fresh database, yield its SQLAlchemy URL, drop it afterwards."""
    name = f"zgserve_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(PG_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
def pg_database() -> Callable[[], contextlib.AbstractAsyncContextManager[str]]:
    return throwaway_database


@pytest.fixture(scope="session")
async def fake_backend() -> AsyncIterator[FakeOpenAIBackend]:
    async with FakeOpenAIBackend() as backend:
        yield backend


@pytest.fixture(scope="session")
async def service_url(
    fake_backend: FakeOpenAIBackend, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    from zgserve.service.app import create_app as create_service
    from zgserve.service.settings import load_settings as load_service_settings

    store = tmp_path_factory.mktemp("service") / "signatures.sqlite3"
    settings = load_service_settings(
        target_url=fake_backend.url,
        tee="simulated",
        gpu_evidence="off",
        store_path=store,
        allowed_params=["fake"],  # the fake backend's behaviour field
    )
    async with serve(create_service(settings)) as url:
        yield url


@dataclass
class RunningBroker:
    url: str
    provider: DevAccount
    app: Any

    @property
    def core(self) -> BrokerCore:
        core: BrokerCore = self.app.state.core
        return core


StartBroker = Callable[..., contextlib.AbstractAsyncContextManager[RunningBroker]]


@pytest.fixture
def start_broker(devnet: Devnet, deployment_file: Path, service_url: str, tmp_path: Path) -> StartBroker:
    @contextlib.asynccontextmanager
    async def start(
        *,
        acknowledge: bool = True,
        deps: BrokerDeps | None = None,
        on: Devnet | None = None,
        **overrides: Any,
    ) -> AsyncIterator[RunningBroker]:
        net = on or devnet
        provider = await net.new_account()
        port = free_port()
        dep_file = deployment_file if on is None else on.deployment.save(tmp_path / f"deployment-{port}.json")
        values: dict[str, Any] = {
            "servingUrl": f"http://127.0.0.1:{port}",
            "targetUrl": service_url + "/v1",
            "model": "fake-model",
            "inputPrice": INPUT_PRICE,
            "outputPrice": OUTPUT_PRICE,
            "privateKeys": [provider.private_key],
            "network": {"deployment": str(dep_file)},
            "database": {"url": f"sqlite+aiosqlite:///{tmp_path}/broker-{port}.db"},
            "tee": {"backend": "simulated", "keyFile": str(tmp_path / f"tee-{port}.json")},
            "auth": {"accountCacheSeconds": 0.5},
            # The settlement loop has its own suites; here fees stay unsettled unless a test settles.
            "settlement": {"enabled": False},
            # The suites send bursts of one user: limits have their own tests (test_broker_limits).
            "limits": {"maxGlobalConcurrent": 0, "maxPerUserConcurrent": 0, "perUserRPM": 0},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                values[key] = values[key] | value
            else:
                values[key] = value
        app = create_app(load_settings(None, **values), deps)
        async with serve(app, port) as url:
            if acknowledge:
                owner = net.chain.inference(net.owner_wallet())
                await owner.acknowledge_tee_signer_by_owner(provider.address)
            yield RunningBroker(url=url, provider=provider, app=app)

    return start


FundedUser = Callable[..., Awaitable[DevAccount]]


@pytest.fixture
def funded_user(devnet: Devnet) -> FundedUser:
    async def make(
        provider: str, amount: int = 2 * OG, ledger: int = 10 * OG, on: Devnet | None = None
    ) -> DevAccount:
        net = on or devnet
        user = await net.new_account()
        ledger_contract = net.chain.ledger(net.chain.wallet(user.private_key))
        await ledger_contract.add_ledger(max(ledger, amount + 3 * OG))
        await ledger_contract.transfer_fund(provider, amount)
        return user

    return make


def make_token(
    user_key: str,
    provider: str,
    *,
    expires_in_ms: int = 3_600_000,
    generation: int = 0,
    token_id: int = 255,
    sign_with: str | None = None,
) -> str:
    """An ``Authorization`` header exactly as SDK 0.9.0 builds it."""
    signer = Signer.from_hex(user_key)
    now = int(time.time() * 1000)
    raw = json.dumps(
        {
            "address": signer.address,
            "provider": provider,
            "timestamp": now,
            "expiresAt": now + expires_in_ms if expires_in_ms else 0,
            "nonce": f"{now}-{uuid.uuid4().hex[:10]}".ljust(32, "0"),
            "generation": generation,
            "tokenId": token_id,
        },
        separators=(",", ":"),
    )
    key = Signer.from_hex(sign_with) if sign_with else signer
    signature = key.sign_digest(eip191_digest(token_digest_message(raw)))
    return "Bearer app-sk-" + base64.b64encode(f"{raw}|{signature}".encode()).decode()
