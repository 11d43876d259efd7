"""The provider broker: authenticated, metered and recorded access to the verifiable service.

Layers, top to bottom: ``app`` (wiring) and ``routes/`` (thin HTTP handlers),
``auth`` / ``billing`` / ``metering`` / ``registration`` (logic), ``db/`` and
:mod:`zgserve.chain` (storage and the contracts).
"""
