"""Settlement of recorded fees on-chain: exactly once, before they can escape, with the least gas.

Modules, top to bottom: ``wiring`` (the factory the broker calls) and ``routes``
(HTTP); ``engine`` (rounds and the loop), ``policy`` (when to settle, pure),
``builder`` (receipts to signed entries), ``recovery`` (outcomes, reconciliation),
``lease`` (one settler per database); ``journal`` and ``models`` (the database),
``receipts`` (the Merkle commitment behind ``requestsHash``), ``metrics``, ``cli``.

Nothing is imported here, so ``zgserve.client.audit`` can use ``receipts`` alone.
"""
