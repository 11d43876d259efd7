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

When the database goes away (a restart, a lost connection, a disk error, a lock
held elsewhere) a batch is sent again on a fresh connection, with backoff, for up
to ``retry_s``; ``ON CONFLICT (request_id) DO NOTHING`` makes that safe when a
commit went through but its acknowledgement was lost. A batch that still fails
marks the store *down*: :meth:`RecordWriter.ensure_available` then refuses new
charged requests (before anything is generated) until a background probe or a
write succeeds, and the writes of requests already under way get one attempt
each instead of the whole retry budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable

from zgserve.broker.db.models import FeeRecord
from zgserve.broker.db.sink import BlockingSink, RecordSink, SinkBusy, is_record_error
from zgserve.broker.errors import RecordFailed, StorageUnavailable

logger = logging.getLogger(__name__)

_Item = tuple[FeeRecord, asyncio.Future[None]]
_INLINE_PAUSE_S = 10.0  # once inline commits were slow on average, the thread takes them this long
_RETRY_FIRST_S = 0.05  # first pause before a batch is sent again; doubles up to _RETRY_MAX_S
_RETRY_MAX_S = 1.0
_PROBE_FIRST_S = 0.25  # first pause of the background probe; doubles up to probe_max_s


class RecordWriter:
    """Commits fee records in batches, on a writer task or thread depending on the sink."""

    def __init__(
        self,
        sink: RecordSink | BlockingSink,
        *,
        batch: int = 256,
        on_commit: Callable[[list[FeeRecord]], None] | None = None,
        inline_limit_s: float = 0.002,
        retry_s: float = 5.0,
        probe_max_s: float = 5.0,
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
        self._jobs: queue.SimpleQueue[tuple[list[_Item], float] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._busy = False  # a batch is with the thread and not yet answered
        self._next: list[_Item] = []  # records that came meanwhile: the next batch
        self._drained: asyncio.Future[None] | None = None
        # Availability: set while the store is known to be down (the reason, for logs and /ready).
        self._retry_s = retry_s
        self._probe_max_s = probe_max_s
        self._down: str | None = None
        self._probe_task: asyncio.Task[None] | None = None

    # -- availability ---------------------------------------------------------

    @property
    def down_reason(self) -> str | None:
        """Why the store is known to be down, or None while it is not."""
        return self._down

    def ensure_available(self) -> None:
        """Raise :class:`StorageUnavailable` while records cannot be stored; no I/O.

        Call before anything is sent upstream: an answer that could not be recorded is
        withheld, so generating it would only waste the service's work.
        """
        if not self._running:
            raise StorageUnavailable("the broker's fee store is not running")
        if self._down is not None:
            raise StorageUnavailable("the broker's fee store is unavailable; try again shortly")

    async def probe(self) -> None:
        """Check now that the store takes writes; raises the database's error if not.

        The outcome updates the availability ``ensure_available`` reports.
        """
        try:
            if self._blocking is not None:
                await asyncio.get_running_loop().run_in_executor(None, self._blocking.probe)
            else:
                assert not isinstance(self._sink, BlockingSink)
                await self._sink.probe()
        except Exception as exc:
            self._mark_down(exc)
            raise
        self._mark_up()

    def _mark_down(self, error: BaseException) -> None:
        if self._down is None:
            logger.error(
                "the fee store is unavailable (%s); charged requests are refused until it answers",
                _describe(error),
            )
        self._down = _describe(error)
        if self._running and (self._probe_task is None or self._probe_task.done()):
            self._probe_task = asyncio.get_running_loop().create_task(
                self._probe_until_up(), name="broker-record-store-probe"
            )

    def _mark_up(self) -> None:
        if self._down is not None:
            logger.warning("the fee store is available again")
        self._down = None

    async def _probe_until_up(self) -> None:
        """Probe with bounded backoff until the store answers or the writer stops."""
        delay = _PROBE_FIRST_S
        while self._running and self._down is not None:
            await asyncio.sleep(delay)
            with contextlib.suppress(Exception):  # probe() recorded the failure
                await asyncio.wait_for(self.probe(), timeout=max(delay, 2.0))
            delay = min(delay * 2, self._probe_max_s)

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
        probe, self._probe_task = self._probe_task, None
        if probe is not None:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
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
        inline = alone and not self._busy and self._down is None and self._loop.time() >= self._inline_from
        if inline and self._commit_inline(record):
            return
        future = self._loop.create_future()
        if self._busy:
            self._next.append((record, future))
        else:
            self._busy = True
            self._jobs.put(([(record, future)], self._budget()))
        await future

    def _budget(self) -> float:
        """How long a batch may be retried: nothing while the store is known to be down."""
        return 0.0 if self._down is not None else self._retry_s

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
            if is_record_error(exc):
                logger.error("could not store 1 fee record: %s", exc)
                raise RecordFailed("the fee record could not be stored") from None
            return False  # the thread opens a fresh connection and retries
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
        jobs, loop = self._jobs, self._loop
        while (job := jobs.get()) is not None:
            items, budget = job
            error = self._commit_retrying([r for r, _ in items], budget)
            loop.call_soon_threadsafe(self._answer, items, error)

    def _commit_retrying(self, records: list[FeeRecord], budget: float) -> Exception | None:
        """On the writer thread: commit, on a fresh connection after each failure, for ``budget`` s."""
        assert self._blocking is not None
        deadline, delay = time.monotonic() + budget, _RETRY_FIRST_S
        while True:
            try:
                self._blocking.commit(records)
                return None
            except Exception as exc:
                if is_record_error(exc):
                    return exc
                self._blocking.reset()
                if time.monotonic() + delay > deadline:
                    return exc
                logger.warning("storing %d fee record(s) failed (%s); retrying", len(records), _describe(exc))
            time.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_S)

    def _answer(self, items: list[_Item], error: Exception | None) -> None:
        """On the event loop: a batch the thread committed (or could not)."""
        self._note_outcome(error)
        self._settle(items, error)
        # Handed over on the next loop step, after the tasks just answered had their turn: what they
        # write at once joins the batch (one wake-up, one commit for all).
        assert self._loop is not None
        self._loop.call_soon(self._hand_over)

    def _hand_over(self) -> None:
        if self._next:
            batch, self._next = self._next[: self._batch], self._next[self._batch :]
            self._jobs.put((batch, self._budget()))
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
            error = await self._write_retrying([r for r, _ in items], self._budget())
            self._note_outcome(error)
            self._settle(items, error)

    async def _write_retrying(self, records: list[FeeRecord], budget: float) -> Exception | None:
        """Write, on a fresh connection after each failure, for up to ``budget`` seconds."""
        assert not isinstance(self._sink, BlockingSink)
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + budget, _RETRY_FIRST_S
        while True:
            try:
                await self._sink.write(records)
                return None
            except Exception as exc:
                if is_record_error(exc):
                    return exc
                with contextlib.suppress(Exception):
                    await self._sink.reset()
                if loop.time() + delay > deadline:
                    return exc
                logger.warning("storing %d fee record(s) failed (%s); retrying", len(records), _describe(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_S)

    def _note_outcome(self, error: Exception | None) -> None:
        if error is None:
            self._mark_up()
        elif not is_record_error(error):
            self._mark_down(error)

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


def _describe(error: BaseException) -> str:
    """One short line: the error's type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__
