"""Record writer: every write returns only once its record is committed, on either path."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path

import pytest

from zgserve.broker.db import create_engine, migrate
from zgserve.broker.db.models import FeeRecord, utcnow
from zgserve.broker.db.sink import SqliteSink
from zgserve.broker.errors import RecordFailed
from zgserve.broker.records import RecordWriter


def record(fee: int = 7) -> FeeRecord:
    return FeeRecord(
        request_id=uuid.uuid4().hex,
        user="0x" + "ab" * 20,
        model="m",
        endpoint="/chat/completions",
        stream=False,
        input_tokens=1,
        output_tokens=2,
        input_price=3,
        output_price=2,
        fee=fee,
        response_id="chatcmpl-1",
        status="complete",
        created_at=utcnow(),
    )


async def database(tmp_path: Path) -> str:
    path = tmp_path / "broker.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    await migrate(engine)
    await engine.dispose()
    return str(path)


def stored(path: str) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT request_id, fee FROM broker_requests ORDER BY id").fetchall()


class CountingSink(SqliteSink):
    def __init__(self, path: str) -> None:
        super().__init__(path, "FULL")
        self.batches: list[int] = []

    def commit(self, records: list[FeeRecord], *, wait: bool = True) -> None:
        super().commit(records, wait=wait)
        self.batches.append(len(records))


async def test_alone_commits_inline_and_concurrent_writes_share_commits(tmp_path: Path) -> None:
    path = await database(tmp_path)
    sink = CountingSink(path)
    writer = RecordWriter(sink)
    await writer.start()
    try:
        first = record()
        await writer.write(first, alone=True)
        # Committed when write returns, by this very call (no thread round trip).
        assert stored(path) == [(first.request_id, "7")]
        assert sink.batches == [1]

        many = [record(fee=i) for i in range(40)]
        await asyncio.gather(*(writer.write(r) for r in many))
        assert len(stored(path)) == 41
        assert sum(sink.batches) == 41
        assert len(sink.batches) < 41  # grouped on the writer thread
    finally:
        await writer.stop()


async def test_locked_database_sends_the_inline_commit_to_the_thread(tmp_path: Path) -> None:
    path = await database(tmp_path)
    writer = RecordWriter(SqliteSink(path, "FULL"))
    await writer.start()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another connection holds the write lock
        rec = record()
        pending = asyncio.ensure_future(writer.write(rec, alone=True))
        await asyncio.sleep(0.05)
        assert not pending.done()  # waiting on the thread, the event loop stays free
        other.execute("COMMIT")
        await asyncio.wait_for(pending, 5)
        assert stored(path) == [(rec.request_id, "7")]
    finally:
        other.close()
        await writer.stop()


async def test_failed_commit_raises_record_failed(tmp_path: Path) -> None:
    path = await database(tmp_path)
    writer = RecordWriter(SqliteSink(path, "FULL"))
    await writer.start()
    try:
        rec = record()
        await writer.write(rec, alone=True)
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TABLE broker_requests")
        with pytest.raises(RecordFailed):
            await writer.write(record(), alone=True)
        with pytest.raises(RecordFailed):
            await writer.write(record())
    finally:
        await writer.stop()
    with pytest.raises(RecordFailed):
        await writer.write(record())


async def test_stop_commits_what_is_queued(tmp_path: Path) -> None:
    path = await database(tmp_path)
    writer = RecordWriter(SqliteSink(path, "FULL"))
    await writer.start()
    writes = [asyncio.ensure_future(writer.write(record())) for _ in range(20)]
    await asyncio.sleep(0)  # all queued
    await writer.stop()
    await asyncio.gather(*writes)
    assert len(stored(path)) == 20
