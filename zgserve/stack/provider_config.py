"""The broker configuration ``zgserve up`` writes for the local network (official YAML keys).

It is an ordinary provider file (see ``config.example.yaml``) that points at the devnet's
deployment file, so ``zgserve broker --config .zg/up/provider.yaml`` runs the same broker
by hand. It holds the devnet provider's development key, so it is written private (0600).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_INPUT_PRICE = 1_000_000_000  # neuron per prompt token
DEFAULT_OUTPUT_PRICE = 2_000_000_000  # neuron per completion token
# The catalog's second model: the same weights sold cheaper with shorter answers (a "mini" tier).
MINI_SUFFIX = "-mini"
MINI_MAX_OUTPUT_TOKENS = 16


@dataclass(frozen=True)
class LocalProvider:
    """What the local broker needs to know; everything else keeps the broker's defaults."""

    serving_url: str
    target_url: str
    model: str
    private_key: str
    deployment_file: Path
    database_file: Path
    tee_key_file: Path
    host: str
    port: int
    input_price: int = DEFAULT_INPUT_PRICE
    output_price: int = DEFAULT_OUTPUT_PRICE
    settlement_interval_s: float = 60.0
    extra_models: tuple[dict[str, Any], ...] = ()  # catalog entries beside chat (media, own targetUrl)


def provider_config(p: LocalProvider) -> dict[str, Any]:
    """The YAML document as a mapping, with the keys the broker's settings accept."""
    return {
        "servingUrl": p.serving_url,
        "targetUrl": p.target_url,
        "model": p.model,
        "inputPrice": p.input_price,
        "outputPrice": p.output_price,
        # A catalog of two: the model itself, and a cheaper variant with a short output cap that
        # the backend serves under the same name.
        "models": [
            {"id": p.model, "inputPrice": p.input_price, "outputPrice": p.output_price},
            {
                "id": p.model + MINI_SUFFIX,
                "inputPrice": p.input_price // 2,
                "outputPrice": p.output_price // 2,
                "maxOutputTokens": MINI_MAX_OUTPUT_TOKENS,
                "upstreamModel": p.model,
            },
            *p.extra_models,
        ],
        "privateKeys": [p.private_key],
        "network": {"deployment": str(p.deployment_file.resolve())},
        "server": {"host": p.host, "port": p.port},
        "database": {"url": f"sqlite+aiosqlite:///{p.database_file.resolve()}"},
        # A devnet has no TEE: the settlement key is simulated, and every report says so.
        "tee": {"backend": "simulated", "keyFile": str(p.tee_key_file.resolve())},
        "auth": {"accountCacheSeconds": 1},
        "settlement": {"enabled": True, "intervalSeconds": p.settlement_interval_s},
    }


def write_private_yaml(path: Path, data: dict[str, Any], header: str = "") -> Path:
    """Write ``data`` as YAML atomically, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = header + yaml.safe_dump(data, sort_keys=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")  # mode 0600
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path
