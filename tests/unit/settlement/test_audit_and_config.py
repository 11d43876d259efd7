"""The audit helpers that need no broker, and the engine's configuration."""

from __future__ import annotations

import json

import pytest

from zgserve.broker.settlement.config import SettlementConfig
from zgserve.client.audit import find_double_charges, usage_of
from zgserve.common.errors import ConfigError


def test_usage_is_read_from_json_and_from_the_last_sse_event() -> None:
    body = json.dumps({"id": "x", "usage": {"prompt_tokens": 7, "completion_tokens": 3}}).encode()
    assert usage_of(body) == (7, 3)
    sse = (
        b'data: {"id":"x","choices":[]}\n\n'
        b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9}}\n\ndata: [DONE]\n\n'
    )
    assert usage_of(sse) == (5, 9)
    with pytest.raises(ValueError, match="no usage"):
        usage_of(b'{"id": "x"}')


def test_a_response_charged_by_two_settlements_is_found() -> None:
    def settlement(nonce: int, ids: list[str], status: str = "success") -> dict[str, object]:
        return {
            "nonce": str(nonce),
            "status": status,
            "receipts": [{"requestId": f"r-{i}", "signatureId": i} for i in ids],
        }

    assert find_double_charges([settlement(1, ["a", "b"]), settlement(2, ["c"])]) == []
    assert find_double_charges([settlement(1, ["a", "b"]), settlement(2, ["b"])]) == ["b"]
    # A settlement that failed on chain charged nothing: its receipts may be settled again.
    assert find_double_charges([settlement(1, ["a"], "invalid_nonce"), settlement(2, ["a"])]) == []


def test_config_reads_the_broker_section_and_refuses_unknown_keys() -> None:
    cfg = SettlementConfig.from_settings({"enabled": True, "intervalSeconds": 5, "gasPriceCap": 10**9})
    assert (cfg.enabled, cfg.interval_seconds, cfg.gas_price_cap) == (True, 5.0, 10**9)
    assert cfg.policy().batch_size == 50
    assert [cfg.backoff(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert SettlementConfig(backoffMaxSeconds=3).backoff(10) == 3.0  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="intervalSecond"):
        SettlementConfig.from_settings({"intervalSecond": 5})
    with pytest.raises(ConfigError, match="batchSize"):
        SettlementConfig.from_settings({"batchSize": 51})
