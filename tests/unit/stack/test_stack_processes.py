"""Supervised child processes: readiness, failure during start-up, ordered and forced shutdown."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

import pytest

from zgserve.common.net import free_port
from zgserve.stack.processes import ProcessFailed, ProcessGroup, ProcessSpec

# A tiny HTTP server that writes its name to a file when SIGTERM stops it (or ignores SIGTERM).
SERVER = textwrap.dedent(
    """
    import http.server, signal, sys
    name, port, record, on_term = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    def stop(*_):
        with open(record, "a") as fh:
            fh.write(name + "\\n")
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop if on_term == "stop" else signal.SIG_IGN)
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
        def log_message(self, *args):
            pass
    print(name, "listening", flush=True)
    http.server.HTTPServer(("127.0.0.1", port), Ok).serve_forever()
    """
)


def server_spec(tmp_path: Path, name: str, record: Path, on_term: str = "stop") -> ProcessSpec:
    port = free_port()
    return ProcessSpec(
        name,
        [sys.executable, "-c", SERVER, name, str(port), str(record), on_term],
        tmp_path / "logs" / f"{name}.log",
        ready_url=f"http://127.0.0.1:{port}/",
        ready_timeout_s=20,
    )


async def test_children_start_ready_and_stop_in_reverse_order(tmp_path: Path) -> None:
    record = tmp_path / "stopped.txt"
    async with ProcessGroup(grace_s=5) as group:
        first = await group.start(server_spec(tmp_path, "first", record))
        second = await group.start(server_spec(tmp_path, "second", record))
        assert first.returncode is None
        assert second.returncode is None
    assert record.read_text().split() == ["second", "first"]
    assert first.returncode == second.returncode == 0
    assert "first listening" in (tmp_path / "logs" / "first.log").read_text()


async def test_a_child_that_exits_during_start_up_fails_with_its_log(tmp_path: Path) -> None:
    spec = ProcessSpec(
        "broken",
        [sys.executable, "-c", "import sys; print('bad configuration: model'); sys.exit(2)"],
        tmp_path / "broken.log",
        ready_url=f"http://127.0.0.1:{free_port()}/",
    )
    async with ProcessGroup() as group:
        with pytest.raises(ProcessFailed) as failure:
            await group.start(spec)
    assert "exited with status 2" in failure.value.message
    assert "bad configuration: model" in failure.value.message


async def test_a_child_that_never_gets_ready_times_out(tmp_path: Path) -> None:
    spec = ProcessSpec(
        "silent",
        [sys.executable, "-c", "import time; time.sleep(60)"],
        tmp_path / "silent.log",
        ready_url=f"http://127.0.0.1:{free_port()}/",
        ready_timeout_s=0.5,
    )
    async with ProcessGroup(grace_s=5) as group:
        with pytest.raises(ProcessFailed, match="did not answer"):
            await group.start(spec)
        assert group.children[0].returncode is not None  # stopped after the failure


async def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    group = ProcessGroup(grace_s=0.5)
    child = await group.start(server_spec(tmp_path, "stubborn", tmp_path / "stopped.txt", on_term="ignore"))
    statuses = await group.stop_all()
    assert statuses == {"stubborn": -9}
    assert child.returncode == -9
    assert not (tmp_path / "stopped.txt").exists()


async def test_wait_for_exit_names_the_child_that_died(tmp_path: Path) -> None:
    record = tmp_path / "stopped.txt"
    async with ProcessGroup(grace_s=5) as group:
        await group.start(server_spec(tmp_path, "steady", record))
        brief = ProcessSpec(
            "brief", [sys.executable, "-c", "import time; time.sleep(0.2)"], tmp_path / "b.log"
        )
        await group.start(brief)
        crashed = await asyncio.wait_for(group.wait_for_exit(), 20)
        assert crashed.name == "brief"
        assert crashed.returncode == 0
