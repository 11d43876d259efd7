"""Durable fee records with group commit.

``await writer.write(record)`` returns once the record is committed. Records of
concurrent requests are committed together in one transaction (one fsync), so
the cost per request falls as load rises while every caller still waits for its
own commit. ``stop`` commits what is queued.

Two kinds of sink (:mod:`zgserve.broker.db.sink`):

* asynchronous (asyncpg, SQLAlchemy): one writer task commits the queued records;
* blocking (``sqlite3``): one writer thread commits one batch at a time; the
  records that arrive meanwhile form the next batch, handed over when the
  thread's answer reaches the event loop (one wake-up each way per batch).
  When the caller says it is the only request in flight and no batch is out,
  the commit runs right on the event loop instead: nothing else is waiting for
  the loop then, and the two thread wake-ups (about as much CPU as the commit
  itself) are saved. A commit there never waits for a lock (another connection
  of this process may need the loop to release it): a locked database sends the
  record to the thread. A disk slow enough that such commits hold the loop past
  ``inline_limit_s`` on average sends every commit to the thread for a while.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable

from zgserve.broker.db.models import FeeRecord
from zgserve.broker.db.sink import BlockingSink, RecordSink, SinkBusy
from zgserve.broker.errors import RecordFailed

logger = logging.getLogger(__name__)

_Item = tuple[FeeRecord, asyncio.Future[None]]
_INLINE_PAUSE_S = 10.0  # once inline commits were slow on average, the thread takes them this long


class RecordWriter:
    """Commits fee records in batches, on a writer task or thread depending on the sink."""

    def __init__(
        self,
        sink: RecordSink | BlockingSink,
        *,
        batch: int = 256,
        on_commit: Callable[[list[FeeRecord]], None] | None = None,
        inline_limit_s: float = 0.002,
    ) -> None:
        self._sink = sink
        self._blocking = sink if isinstance(sink, BlockingSink) else None
        self._batch = batch
        self._on_commit = on_commit
        self._inline_limit_s = inline_limit_s
        self._inline_from = 0.0
        self._inline_avg_s = 0.0
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # Asynchronous sinks.
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        # Blocking sinks.
        self._jobs: queue.SimpleQueue[list[_Item] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._busy = False  # a batch is with the thread and not yet answered
        self._next: list[_Item] = []  # records that came meanwhile: the next batch
        self._drained: asyncio.Future[None] | None = None

    async def start(self) -> None:
        if self._running:
            return
        self._loop = asyncio.get_running_loop()
        if self._blocking is not None:
            self._blocking.open()
            self._thread = threading.Thread(
                target=self._thread_main, name="broker-record-writer", daemon=True
            )
            self._thread.start()
        else:
            assert not isinstance(self._sink, BlockingSink)
            await self._sink.open()
            self._task = asyncio.create_task(self._run(), name="broker-record-writer")
        self._running = True

    async def stop(self) -> None:
        """Commit what is queued, then end the task or thread."""
        if not self._running:
            return
        self._running = False
        if self._blocking is not None:
            if self._busy:
                self._drained = asyncio.get_running_loop().create_future()
                await self._drained
            thread, self._thread = self._thread, None
            if thread is not None:
                self._jobs.put(None)
                await asyncio.get_running_loop().run_in_executor(None, thread.join)
            self._blocking.close()
            return
        assert not isinstance(self._sink, BlockingSink)
        task, self._task = self._task, None
        if task is not None and not task.done():
            self._queue.put_nowait(None)
            await task
        await self._sink.close()

    async def write(self, record: FeeRecord, *, alone: bool = False) -> None:
        """Commit ``record``; raises :class:`RecordFailed` if the database refused it.

        ``alone``: the caller is the only request in flight, so a blocking commit may run
        on the event loop (see the module docstring).
        """
        if not self._running:
            raise RecordFailed("the record writer is not running")
        assert self._loop is not None
        if self._thread is None:
            future: asyncio.Future[None] = self._loop.create_future()
            self._queue.put_nowait((record, future))
            await future
            return
        inline = alone and not self._busy and self._loop.time() >= self._inline_from
        if inline and self._commit_inline(record):
            return
        future = self._loop.create_future()
        if self._busy:
            self._next.append((record, future))
        else:
            self._busy = True
            self._jobs.put([(record, future)])
        await future

    # -- blocking sinks -------------------------------------------------------

    def _commit_inline(self, record: FeeRecord) -> bool:
        """Commit on the event loop; False if the database was locked (the thread waits for it)."""
        # Only while no batch is out (the thread never touches the connection then).
        assert self._blocking is not None
        assert self._loop is not None
        started = time.perf_counter()
        try:
            self._blocking.commit([record], wait=False)
        except SinkBusy:
            return False
        except Exception as exc:
            logger.error("could not store 1 fee record: %s", exc)
            raise RecordFailed("the fee record could not be stored") from None
        # A moving average of clipped samples: the odd slow commit (a WAL checkpoint, a stalled
        # fsync) is normal and would hold the thread path up just as long; a slow disk is not.
        elapsed = min(time.perf_counter() - started, 4 * self._inline_limit_s)
        self._inline_avg_s += (elapsed - self._inline_avg_s) / 32
        if self._inline_avg_s > self._inline_limit_s:
            logger.info(
                "fee record commits took %.1f ms on the event loop lately; committing on the writer"
                " thread for %g s",
                self._inline_avg_s * 1e3,
                _INLINE_PAUSE_S,
            )
            self._inline_from = self._loop.time() + _INLINE_PAUSE_S
            self._inline_avg_s = 0.0
        if self._on_commit is not None:
            self._on_commit([record])
        return True

    def _thread_main(self) -> None:
        assert self._blocking is not None
        assert self._loop is not None
        jobs, commit, loop = self._jobs, self._blocking.commit, self._loop
        while (items := jobs.get()) is not None:
            error: Exception | None = None
            try:
                commit([r for r, _ in items])
            except Exception as exc:
                error = exc
            loop.call_soon_threadsafe(self._answer, items, error)

    def _answer(self, items: list[_Item], error: Exception | None) -> None:
        """On the event loop: a batch the thread committed (or could not)."""
        self._settle(items, error)
        # Handed over on the next loop step, after the tasks just answered had their turn: what they
        # write at once joins the batch (one wake-up, one commit for all).
        assert self._loop is not None
        self._loop.call_soon(self._hand_over)

    def _hand_over(self) -> None:
        if self._next:
            batch, self._next = self._next[: self._batch], self._next[self._batch :]
            self._jobs.put(batch)
        else:
            self._busy = False
            if self._drained is not None and not self._drained.done():
                self._drained.set_result(None)

    # -- asynchronous sinks ---------------------------------------------------

    async def _run(self) -> None:
        assert not isinstance(self._sink, BlockingSink)
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
            error: Exception | None = None
            try:
                await self._sink.write([r for r, _ in items])
            except Exception as exc:
                error = exc
            self._settle(items, error)

    def _settle(self, items: list[_Item], error: Exception | None) -> None:
        records = [r for r, _ in items]
        if error is not None:
            logger.error("could not store %d fee record(s): %s", len(records), error)
            for _, future in items:
                if not future.done():
                    future.set_exception(RecordFailed("the fee record could not be stored"))
            return
        if self._on_commit is not None:
            self._on_commit(records)
        for _, future in items:
            if not future.done():
                future.set_result(None)
