"""The answers a user keeps for a later audit of a provider's settlements.

A provider settles with receipts; each request receipt is checked against the
answer the user received (:mod:`zgserve.client.audit`), so the user has to keep the
exact bytes. ``zgserve user chat`` appends every completed exchange to a history
file, by default ``$XDG_DATA_HOME/zgserve/exchanges/<user>-<provider>.jsonl``
(``~/.local/share`` when ``XDG_DATA_HOME`` is unset), created with mode 0600.

One JSON object per line, format version 1::

    {"v": 1, "chat_id": "chatcmpl-...", "provider": "0xProvider", "user": "0xUser",
     "time": 1718000000, "content_type": "application/json",
     "request": "<base64 of the request body>", "response": "<base64 of the response body>"}

``chat_id`` is the ``ZG-Res-Key`` the receipt names; ``request`` and ``response`` are
the bytes as sent and received (a streamed answer is the whole SSE body), which the
service's signature covers and from which the usage is read; ``time`` is Unix seconds.
Readers skip lines of other versions, other providers or users, and lines they
cannot parse, and count them.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from eth_utils.address import to_checksum_address

from zgserve.client.openai_client import CHAT_ID_HEADER, Exchange

FORMAT_VERSION = 1


def data_dir() -> Path:
    """``$XDG_DATA_HOME/zgserve``, else ``~/.local/share/zgserve``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "zgserve"


def default_path(user: str, provider: str) -> Path:
    """Where ``zgserve user chat`` keeps the exchanges of ``user`` with ``provider``."""
    name = f"{to_checksum_address(user)}-{to_checksum_address(provider)}.jsonl"
    return data_dir() / "exchanges" / name


def encode(exchange: Exchange, *, user: str, provider: str, at: float | None = None) -> str | None:
    """One history line (no newline) for a completed exchange; None if there is nothing to keep."""
    chat_id = exchange.chat_id
    if exchange.status != 200 or not exchange.complete or not chat_id:
        return None
    record = {
        "v": FORMAT_VERSION,
        "chat_id": chat_id,
        "provider": to_checksum_address(provider),
        "user": to_checksum_address(user),
        "time": int(time.time() if at is None else at),
        "content_type": exchange.response_headers.get("content-type", ""),
        "request": base64.b64encode(exchange.request_body).decode("ascii"),
        "response": base64.b64encode(exchange.response_body).decode("ascii"),
    }
    return json.dumps(record, separators=(",", ":"))


def append(path: Path, exchange: Exchange, *, user: str, provider: str) -> bool:
    """Append ``exchange`` to the history at ``path`` (created 0600); False if it was not kept."""
    line = encode(exchange, user=user, provider=provider)
    if line is None:
        return False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(line + "\n")
    return True


@dataclass
class History:
    """The exchanges read back from a history file, and how many lines were passed over."""

    exchanges: list[Exchange] = field(default_factory=list)
    skipped: int = 0


def decode(line: str) -> tuple[str, str, Exchange]:
    """``(user, provider, exchange)`` of one history line; ValueError if it is not version 1."""
    try:
        record = json.loads(line)
        if not isinstance(record, dict) or record.get("v") != FORMAT_VERSION:
            raise ValueError("not a version 1 history line")
        chat_id = str(record["chat_id"])
        exchange = Exchange(
            method="POST",
            url="",
            request_body=base64.b64decode(record["request"], validate=True),
            status=200,
            response_headers={
                CHAT_ID_HEADER.lower(): chat_id,
                "content-type": str(record.get("content_type") or ""),
            },
            response_body=base64.b64decode(record["response"], validate=True),
            complete=True,
        )
        return str(record["user"]), str(record["provider"]), exchange
    except (KeyError, TypeError, binascii.Error) as exc:
        raise ValueError(f"malformed history line: {exc}") from exc


def load(path: Path, *, user: str, provider: str) -> History:
    """The exchanges of ``user`` with ``provider`` kept at ``path`` (empty if there is no file)."""
    history = History()
    if not path.exists():
        return history
    user, provider = user.lower(), provider.lower()
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                owner, served_by, exchange = decode(line)
            except ValueError:
                history.skipped += 1
                continue
            if owner.lower() != user or served_by.lower() != provider:
                history.skipped += 1
                continue
            history.exchanges.append(exchange)
    return history
