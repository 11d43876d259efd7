"""The local 0G network: anvil, the official contracts behind proxies, funded wallets.

Kept import-light (the CLI imports this package at start-up); import the parts directly:

* :mod:`zgserve.devnet.network` — ``start_devnet(...)`` and ``Devnet`` (what tests use);
* :mod:`zgserve.devnet.deployment` — the ``Deployment`` file every command shares;
* :mod:`zgserve.devnet.anvil`, :mod:`~zgserve.devnet.deploy`, :mod:`~zgserve.devnet.artifacts`,
  :mod:`~zgserve.devnet.node` — the steps, and where the Node tools and caches live;
* :mod:`zgserve.devnet.testing` — helpers for tests (fresh registered providers).
"""
