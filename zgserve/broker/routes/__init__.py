"""HTTP routes of the broker: ``proxy`` (raw ASGI, the hot path), ``user``, ``admin``, ``ops``."""
