"""Durable fee records with group commit.

``await writer.write(record)`` returns once the record is committed. Records of
concurrent requests are committed together in one transaction (one fsync), so
the cost per request falls as load rises while every caller still waits for its
own commit. The writer is one bounded background task; ``stop`` drains it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from zgserve.broker.db.models import FeeRecord
from zgserve.broker.db.sink import RecordSink
from zgserve.broker.errors import RecordFailed

logger = logging.getLogger(__name__)

_Item = tuple[FeeRecord, asyncio.Future[None]]


class RecordWriter:
    """Single writer task committing queued records in batches."""

    def __init__(
        self,
        sink: RecordSink,
        *,
        batch: int = 256,
        on_commit: Callable[[list[FeeRecord]], None] | None = None,
    ) -> None:
        self._sink = sink
        self._batch = batch
        self._on_commit = on_commit
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            await self._sink.open()
            self._task = asyncio.create_task(self._run(), name="broker-record-writer")

    async def stop(self) -> None:
        """Commit what is queued, then end the task."""
        task, self._task = self._task, None
        if task is None:
            return
        if not task.done():
            self._queue.put_nowait(None)
            await task
        await self._sink.close()

    async def write(self, record: FeeRecord) -> None:
        """Commit ``record``; raises :class:`RecordFailed` if the database refused it."""
        if self._task is None:
            raise RecordFailed("the record writer is not running")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((record, future))
        await future

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            items = [first]
            while len(items) < self._batch:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if nxt is None:
                    stopping = True
                    break
                items.append(nxt)
            await self._commit(items)

    async def _commit(self, items: list[_Item]) -> None:
        records = [r for r, _ in items]
        try:
            await self._sink.write(records)
        except Exception as exc:
            logger.error("could not store %d fee record(s): %s", len(records), exc)
            for _, future in items:
                if not future.done():
                    future.set_exception(RecordFailed("the fee record could not be stored"))
            return
        if self._on_commit is not None:
            self._on_commit(records)
        for _, future in items:
            if not future.done():
                future.set_result(None)
