"""SignatureStore: every signature kept for a retention period, durable across restarts.

Writes never wait for the disk on the request path: ``put`` places the entry in
memory (where lookups find it at once) and queues it; a writer task flushes the
queue to SQLite in batches every ``flush_interval_s`` (50 ms by default) through
one dedicated thread. ``close`` flushes what is left, so a clean shutdown loses
nothing; a crash loses at most the last flush interval. Entries older than the
retention (24 h by default) are deleted periodically and never returned. The
store is not capped by count: the memory part is only a cache of recent entries.

A stream that did not complete is recorded with its reason, so that a lookup
can say why there is no signature instead of "unknown id".
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS signatures (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    text TEXT,
    signature TEXT,
    signing_address TEXT,
    signing_algo TEXT NOT NULL,
    incomplete_reason TEXT
);
CREATE INDEX IF NOT EXISTS signatures_created_at ON signatures (created_at);
"""
_COLUMNS = "id, created_at, text, signature, signing_address, signing_algo, incomplete_reason"


@dataclass(frozen=True, slots=True)
class SignatureEntry:
    """A signature record, or the reason why a response has none."""

    response_id: str
    created_at: float
    text: str | None
    signature: str | None
    signing_address: str | None
    signing_algo: str = "ecdsa"
    incomplete_reason: str | None = None

    @property
    def complete(self) -> bool:
        return self.signature is not None

    def row(self) -> tuple[Any, ...]:
        return (
            self.response_id,
            self.created_at,
            self.text,
            self.signature,
            self.signing_address,
            self.signing_algo,
            self.incomplete_reason,
        )


class SignatureStore:
    """Signatures by response id: memory first, SQLite behind a write-behind queue."""

    def __init__(
        self,
        path: Path | str,
        *,
        retention_s: float = 24 * 3600,
        flush_interval_s: float = 0.05,
        memory_entries: int = 50_000,
        purge_interval_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if retention_s <= 0:
            raise ValueError("retention_s must be positive")
        self.path = path
        self.retention_s = retention_s
        self.flush_interval_s = flush_interval_s
        self.memory_entries = memory_entries
        self.purge_interval_s = purge_interval_s or min(60.0, retention_s / 10)
        self._clock = clock
        self._recent: OrderedDict[str, SignatureEntry] = OrderedDict()
        self._pending: dict[str, SignatureEntry] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._flush_lock = asyncio.Lock()

    # -- life cycle ---------------------------------------------------------

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="signature-store")
        await self._run(self._open_db)
        self._tasks = [
            asyncio.create_task(self._writer(), name="signature-store-writer"),
            asyncio.create_task(self._purger(), name="signature-store-purger"),
        ]

    async def close(self) -> None:
        """Flush everything queued, stop the background tasks, close the database."""
        self._closing = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._executor is not None:
            try:
                await self.flush()
            finally:
                await self._run(self._close_db)
                self._executor.shutdown(wait=True)
                self._executor = None

    async def __aenter__(self) -> SignatureStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the request path ---------------------------------------------------

    def put(self, entry: SignatureEntry) -> None:
        """Record ``entry`` now (visible to ``get`` at once); it reaches disk within a flush interval."""
        recent = self._recent
        recent[entry.response_id] = entry
        recent.move_to_end(entry.response_id)
        if len(recent) > self.memory_entries:
            recent.popitem(last=False)
        self._pending[entry.response_id] = entry
        if not self._wake.is_set():
            self._wake.set()

    def add_signature(self, response_id: str, text: str, signature: str, address: str) -> None:
        self.put(SignatureEntry(response_id, self._clock(), text, signature, address))

    def add_incomplete(self, response_id: str, reason: str) -> None:
        """Record that ``response_id`` has no signature and why (e.g. the client disconnected)."""
        self.put(SignatureEntry(response_id, self._clock(), None, None, None, incomplete_reason=reason))

    async def get(self, response_id: str) -> SignatureEntry | None:
        """The entry for ``response_id`` unless unknown or older than the retention."""
        entry = self._recent.get(response_id) or self._pending.get(response_id)
        if entry is None and self._executor is not None:
            entry = await self._run(self._select, response_id)
        if entry is None or entry.created_at < self._clock() - self.retention_s:
            return None
        return entry

    # -- background work ----------------------------------------------------

    async def flush(self) -> int:
        """Write every queued entry; returns how many were written."""
        async with self._flush_lock:
            if not self._pending or self._executor is None:
                return 0
            batch = list(self._pending.values())
            await self._run(self._write, [e.row() for e in batch])
            for entry in batch:
                # A newer entry under the same id may have arrived meanwhile: keep it queued.
                if self._pending.get(entry.response_id) is entry:
                    del self._pending[entry.response_id]
            return len(batch)

    async def purge_expired(self) -> int:
        """Delete entries past the retention; returns how many rows went."""
        cutoff = self._clock() - self.retention_s
        for key in [k for k, e in self._recent.items() if e.created_at < cutoff]:
            del self._recent[key]
        if self._executor is None:
            return 0
        return int(await self._run(self._delete_before, cutoff))

    async def count(self) -> int:
        """Entries on disk (after a flush); for tests and metrics."""
        await self.flush()
        return int(await self._run(self._count))

    async def _writer(self) -> None:
        backoff = self.flush_interval_s
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.flush_interval_s)  # let a batch gather
            try:
                await self.flush()
                backoff = self.flush_interval_s
            except Exception:
                logger.exception("signature store flush failed; retrying in %.1f s", backoff)
                self._wake.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _purger(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.purge_interval_s)
            try:
                removed = await self.purge_expired()
                if removed:
                    logger.debug("purged %d expired signatures", removed)
            except Exception:
                logger.exception("signature store purge failed")

    # -- the database thread ------------------------------------------------

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._executor is not None, "SignatureStore is not open"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open_db(self) -> None:
        if str(self.path) != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        self._conn = conn

    def _close_db(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        conn = self._db()
        conn.execute("BEGIN")
        try:
            conn.executemany(f"INSERT OR REPLACE INTO signatures ({_COLUMNS}) VALUES (?,?,?,?,?,?,?)", rows)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _select(self, response_id: str) -> SignatureEntry | None:
        row = self._db().execute(f"SELECT {_COLUMNS} FROM signatures WHERE id = ?", (response_id,)).fetchone()
        return SignatureEntry(*row) if row else None

    def _delete_before(self, cutoff: float) -> int:
        return int(self._db().execute("DELETE FROM signatures WHERE created_at < ?", (cutoff,)).rowcount)

    def _count(self) -> int:
        return int(self._db().execute("SELECT COUNT(*) FROM signatures").fetchone()[0])
