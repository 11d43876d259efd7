"""The history file ``zgserve user chat`` keeps for ``zgserve user audit``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_utils.address import to_checksum_address

from zgserve.client import history
from zgserve.client.audit import HeldResponse
from zgserve.client.openai_client import Exchange

USER = "0x" + "ab" * 20
PROVIDER = "0x" + "cd" * 20
OTHER = "0x" + "ef" * 20
REQUEST = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
RESPONSE = b'{"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}'


def _exchange(**overrides: object) -> Exchange:
    fields: dict[str, object] = {
        "method": "POST",
        "url": "http://provider/v1/proxy/chat/completions",
        "request_body": REQUEST,
        "status": 200,
        "response_headers": {"zg-res-key": "chatcmpl-1", "content-type": "application/json"},
        "response_body": RESPONSE,
        "complete": True,
    }
    fields.update(overrides)
    return Exchange(**fields)  # type: ignore[arg-type]


def test_default_path_is_under_xdg_data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    path = history.default_path(USER, PROVIDER)
    assert path.parent == tmp_path / "zgserve" / "exchanges"
    assert path.name == f"{to_checksum_address(USER)}-{to_checksum_address(PROVIDER)}.jsonl"


def test_round_trip_keeps_the_exact_bytes(tmp_path: Path) -> None:
    path = tmp_path / "new" / "history.jsonl"
    assert history.append(path, _exchange(), user=USER, provider=PROVIDER)
    assert history.append(path, _exchange(), user=USER, provider=PROVIDER)
    assert path.stat().st_mode & 0o777 == 0o600
    record = json.loads(path.read_text().splitlines()[0])
    assert record["v"] == 1
    assert record["chat_id"] == "chatcmpl-1"

    kept = history.load(path, user=to_checksum_address(USER), provider=PROVIDER)
    assert kept.skipped == 0
    assert len(kept.exchanges) == 2
    exchange = kept.exchanges[0]
    assert exchange.chat_id == "chatcmpl-1"
    assert (exchange.request_body, exchange.response_body) == (REQUEST, RESPONSE)
    held = HeldResponse.from_exchange("chatcmpl-1", exchange.request_body, exchange.response_body)
    assert (held.prompt_tokens, held.completion_tokens) == (3, 5)


def test_incomplete_or_failed_exchanges_are_not_kept(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    assert not history.append(path, _exchange(complete=False), user=USER, provider=PROVIDER)
    assert not history.append(path, _exchange(status=402), user=USER, provider=PROVIDER)
    assert not path.exists()


def test_load_skips_other_accounts_versions_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    history.append(path, _exchange(), user=USER, provider=PROVIDER)
    history.append(path, _exchange(), user=USER, provider=OTHER)
    line = json.loads(path.read_text().splitlines()[0])
    with path.open("a") as out:
        out.write(json.dumps({**line, "v": 2}) + "\n")
        out.write(json.dumps({**line, "response": "not base64!"}) + "\n")
        out.write("{truncated\n\n")
    kept = history.load(path, user=USER, provider=PROVIDER)
    assert len(kept.exchanges) == 1
    assert kept.skipped == 4
    assert history.load(tmp_path / "missing.jsonl", user=USER, provider=PROVIDER).exchanges == []
