"""Fixtures shared by the whole suite: one local 0G network per test session, and helpers.

* ``devnet`` (session): anvil with the official contracts, 8 funded users, lock time 3600 s.
  Shared by every test, so tests must not depend on its global state: use ``new_account``
  for wallets of your own, and ``private_devnet`` when you move the chain clock.
* ``deployment`` / ``deployment_file`` (session): its :class:`Deployment`, and the same
  written to a JSON file (what ``zgserve devnet --out`` writes).
* ``chain`` (session): a :class:`ChainClient` for it.
* ``new_account`` (function): ``await new_account(balance=...)`` gives a fresh funded key.
* ``register_provider`` (function): ``await register_provider(on=None, **service_fields)``
  gives a fresh provider (``zgserve.devnet.testing.RegisteredProvider``) with a registered,
  owner-acknowledged service and its own TEE signer key, on the session devnet or on the
  devnet passed as ``on``.
* ``private_devnet`` (function): a devnet of the test's own (about 0.2 s to start).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from zgserve.chain import ChainClient
from zgserve.common.money import OG
from zgserve.devnet.deployment import Deployment, DevAccount
from zgserve.devnet.network import Devnet, start_devnet
from zgserve.devnet.testing import NewAccount, RegisteredProvider, RegisterProvider, register_provider_on

SESSION_USERS = 8


@pytest.fixture(scope="session")
async def devnet() -> AsyncIterator[Devnet]:
    async with start_devnet(users=SESSION_USERS, lock_time=3600) as net:
        yield net


@pytest.fixture(scope="session")
def deployment(devnet: Devnet) -> Deployment:
    return devnet.deployment


@pytest.fixture(scope="session")
def deployment_file(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return deployment.save(tmp_path_factory.mktemp("devnet") / "deployment.json")


@pytest.fixture(scope="session")
def chain(devnet: Devnet) -> ChainClient:
    return devnet.chain


@pytest.fixture
async def private_devnet() -> AsyncIterator[Devnet]:
    async with start_devnet(users=2, lock_time=3600) as net:
        yield net


@pytest.fixture
def new_account(devnet: Devnet) -> NewAccount:
    async def make(balance: int = 10_000 * OG) -> DevAccount:
        return await devnet.new_account(balance)

    return make


@pytest.fixture
def register_provider(devnet: Devnet) -> RegisterProvider:
    async def make(*, on: Devnet | None = None, **overrides: Any) -> RegisteredProvider:
        return await register_provider_on(on or devnet, **overrides)

    return make
