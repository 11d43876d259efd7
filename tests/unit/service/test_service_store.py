"""SignatureStore: immediate reads, durable writes, retention, no small cap."""

from __future__ import annotations

from pathlib import Path

from zgserve.service.store import SignatureStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_visible_at_once_and_durable_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "sig.sqlite3"
    async with SignatureStore(path) as store:
        store.add_signature("chatcmpl-1", "a:b", "0xsig", "0xAddr")
        entry = await store.get("chatcmpl-1")
        assert entry is not None
        assert entry.signature == "0xsig"
        assert entry.complete
        store.add_incomplete("chatcmpl-2", "response was not completed (client disconnected)")
    async with SignatureStore(path) as store:
        entry = await store.get("chatcmpl-1")
        assert entry is not None
        assert (entry.text, entry.signature, entry.signing_address) == ("a:b", "0xsig", "0xAddr")
        cut = await store.get("chatcmpl-2")
        assert cut is not None
        assert not cut.complete
        assert "client disconnected" in (cut.incomplete_reason or "")
        assert await store.get("nope") is None


async def test_retention_hides_and_purges(tmp_path: Path) -> None:
    clock = Clock()
    async with SignatureStore(tmp_path / "s.db", retention_s=60, clock=clock) as store:
        store.add_signature("old", "t", "s", "a")
        await store.flush()
        clock.now += 30
        store.add_signature("new", "t", "s", "a")
        clock.now += 45  # "old" is 75 s old, "new" 45 s
        assert await store.get("old") is None
        assert await store.get("new") is not None
        assert await store.purge_expired() == 1
        assert await store.count() == 1


async def test_not_capped_by_the_memory_cache(tmp_path: Path) -> None:
    async with SignatureStore(tmp_path / "s.db", memory_entries=100) as store:
        for i in range(5000):
            store.add_signature(f"id-{i}", f"t{i}", f"s{i}", "a")
        await store.flush()
        assert await store.count() == 5000
        first = await store.get("id-0")  # long evicted from memory: read from disk
        assert first is not None
        assert first.text == "t0"


async def test_close_flushes_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SignatureStore(path, flush_interval_s=5)  # the writer would wait 5 s
    await store.open()
    store.add_signature("x", "t", "s", "a")
    await store.close()
    async with SignatureStore(path) as reopened:
        assert await reopened.get("x") is not None
