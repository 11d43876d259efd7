"""The adversarial suite: the real stack, attacked over HTTP, with invariants checked after every input.

* ``fake_stack`` (session): a broker and its verifiable service in front of the fake OpenAI
  backend (fast, for volume), run by ``tests.adversarial.stack`` in a process of their own,
  for a fresh provider registered on the session devnet and acknowledged by the owner;
  settlement engine on (it settles when asked), admin API behind ``ADMIN_TOKEN``; two
  funded users.
* ``llama_stack`` (session): the same in front of the embedded llama.cpp SmolLM2 model,
  with high prices so that a few tokens matter.
* Every input goes through :meth:`Stack.send`, which counts it and checks the answer: no
  5xx, and an answer (a 200 with ``ZG-Res-Key`` or ``choices``) has exactly one fee record
  in the broker's database. :meth:`Stack.after_batch` then checks the log (no traceback),
  the process (alive) and the chain (unsettled fees within each user's balance).
  A dead stack is counted as a crash and started again.
* The counts are printed in the terminal summary and written to ``.zg/adversarial-counts.json``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.adversarial import rawhttp
from tests.adversarial.rawhttp import Header, Reply, ServerGone
from zgserve.common.money import OG
from zgserve.common.net import free_port
from zgserve.common.signing import Signer, eip191_digest
from zgserve.common.tokens import encode_api_key, now_ms, token_hash
from zgserve.devnet.deployment import DevAccount
from zgserve.devnet.network import Devnet

ROOT = Path(__file__).resolve().parents[2]
COUNTS_FILE = ROOT / ".zg" / "adversarial-counts.json"
ADMIN_TOKEN = "adversarial-admin-token"
COUNTERS = (
    "inputs",
    "server_errors",
    "unbilled_answers",
    "overdrafts",
    "tracebacks",
    "crashes",
    "hangs",
    "non_canonical_accepted",
    "undercharged",
    "over_cap",
    "partial_settlements",
    "access_leaks",
)
_TRACEBACK = re.compile(rb"Traceback \(most recent call last\)|Fatal Python error|Segmentation fault")
_ID = re.compile(rb'"id"\s*:\s*"([^"]{1,200})"')


class Tally:
    """Counters of the whole session, with the first few offending inputs of each kind."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.examples: dict[str, list[str]] = {name: [] for name in COUNTERS}
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def add(self, name: str, example: str = "", n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n
            if example and len(self.examples[name]) < 8:
                self.examples[name].append(example[:400])

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)

    def violations(self, since: dict[str, int]) -> dict[str, int]:
        return {k: v - since[k] for k, v in self.counts.items() if k != "inputs" and v > since[k]}

    def assert_clean(self, since: dict[str, int], *, only: tuple[str, ...] | None = None) -> None:
        """Fail with the offending inputs if a counter (of ``only``, default all) grew since ``since``."""
        bad = {k: v for k, v in self.violations(since).items() if only is None or k in only}
        if bad:
            lines = [f"{k}: {v} (e.g. {self.examples[k][:4]})" for k, v in bad.items()]
            pytest.fail("invariants broken:\n  " + "\n  ".join(lines), pytrace=False)

    def report(self) -> dict[str, Any]:
        return {
            **self.counts,
            "seconds": round(time.monotonic() - self.started, 1),
            "examples": {k: v for k, v in self.examples.items() if v},
        }


TALLY = pytest.StashKey[Tally]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[TALLY] = Tally()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The settlement check runs last: it settles what every other test recorded."""
    last = [i for i in items if "test_settlement_after_everything" in i.nodeid]
    items[:] = [i for i in items if i not in last] + last


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    tally = config.stash.get(TALLY, None)
    if tally is None or tally.counts["inputs"] == 0:
        return
    report = tally.report()
    COUNTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    COUNTS_FILE.write_text(json.dumps(report, indent=2) + "\n")
    terminalreporter.write_sep("=", "adversarial counts")
    summary = {k: v for k, v in report.items() if k != "examples"}
    terminalreporter.write_line(json.dumps(summary))
    terminalreporter.write_line(f"(written to {COUNTS_FILE.relative_to(ROOT)}, with example inputs)")


@pytest.fixture(scope="session")
def tally(pytestconfig: pytest.Config) -> Tally:
    return pytestconfig.stash[TALLY]


# ---- tokens --------------------------------------------------------------------------------


def claims(user: DevAccount, provider: str, /, **overrides: Any) -> dict[str, Any]:
    """The SDK's token claims, in its key order; ``overrides`` replace or add fields."""
    now = now_ms()
    out: dict[str, Any] = {
        "address": Signer.from_hex(user.private_key).address,
        "provider": provider,
        "timestamp": now,
        "expiresAt": now + 3_600_000,
        "nonce": f"{now}-adversarial".ljust(32, "0"),
        "generation": 0,
        "tokenId": 255,
    }
    out.update(overrides)
    return out


def sign_raw(raw: str, key: str) -> str:
    """``raw`` signed as the SDK signs a token message."""
    return Signer.from_hex(key).sign_digest(eip191_digest(token_hash(raw)))


def bearer(user: DevAccount, provider: str, /, **overrides: Any) -> str:
    raw = json.dumps(claims(user, provider, **overrides), separators=(",", ":"), ensure_ascii=False)
    return "Bearer " + encode_api_key(raw, sign_raw(raw, user.private_key))


# ---- the stack -----------------------------------------------------------------------------


@dataclass
class Stack:
    """One broker + service process, its users, and the invariant checks on what it answers."""

    name: str
    workdir: Path
    spec: dict[str, Any] = field(repr=False)
    provider: DevAccount = field(repr=False)
    tally: Tally = field(repr=False)
    users: list[DevAccount] = field(default_factory=list, repr=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return int(self.spec["port"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return Path(self.spec["log"])

    @property
    def db_path(self) -> Path:
        return self.workdir / "broker.db"

    def token(self, user: int = 0, **overrides: Any) -> str:
        return bearer(self.users[user], self.provider.address, **overrides)

    # -- process --

    def launch(self, timeout: float = 300.0) -> None:
        ready = Path(self.spec["ready"])
        ready.unlink(missing_ok=True)
        spec_file = self.workdir / "spec.json"
        spec_file.write_text(json.dumps(self.spec))
        out = open(self.workdir / "stdout.log", "ab")  # noqa: SIM115 - the child keeps it
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.adversarial.stack", str(spec_file)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        out.close()
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.workdir / "stdout.log").read_bytes()[-3000:].decode(errors="replace")
                self.stop()
                raise RuntimeError(f"the {self.name} stack did not start:\n{tail}")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def revive(self, what: str) -> None:
        """Count a dead stack as a crash (with the input that killed it) and start it again."""
        if self.alive():
            return
        code = self.proc.returncode if self.proc is not None else None
        self.tally.add("crashes", f"{self.name} exited with {code} after: {what}")
        self.launch()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # -- inputs and per-input invariants --

    def send(
        self,
        method: str,
        target: str | bytes,
        *,
        headers: list[Header] | None = None,
        body: bytes = b"",
        what: str = "",
        timeout: float = 30.0,
    ) -> Reply:
        """One input, as raw bytes; counted and judged."""
        self.tally.add("inputs")
        label = what or f"{method} {target!r} {body[:120]!r}"
        try:
            reply = rawhttp.request(self.port, method, target, headers=headers, body=body, timeout=timeout)
        except ServerGone:
            self.revive(label)
            return Reply(0)
        except TimeoutError:
            self.tally.add("hangs", f"no answer in {timeout} s: {label}")
            return Reply(0)
        if reply.status == 0 and not self.alive():
            self.revive(label)
        self.judge(reply, label)
        return reply

    def judge(self, reply: Reply, what: str) -> None:
        if reply.status >= 500:
            self.tally.add("server_errors", f"{reply.status} for {what}: {reply.body[:200]!r}")
        if is_answer(reply):
            key = answer_key(reply)
            count = self.records_for(key) if key else 0
            if count != 1:
                self.tally.add("unbilled_answers", f"{count} fee records for answer {key!r} to {what}")

    # -- the broker's database (SQLite, WAL: read beside the writer) --

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10) as conn:
            return list(conn.execute(sql, args))

    def records_for(self, response_id: str) -> int:
        rows = self.query("SELECT COUNT(*) FROM broker_requests WHERE response_id = ?", response_id[:128])
        return int(rows[0][0])

    def record(self, response_id: str) -> dict[str, Any] | None:
        rows = self.query(
            "SELECT input_tokens, output_tokens, fee, status FROM broker_requests WHERE response_id = ?",
            response_id[:128],
        )
        if len(rows) != 1:
            return None
        inp, out, fee, status = rows[0]
        return {"input_tokens": int(inp), "output_tokens": int(out), "fee": int(fee), "status": status}

    def unsettled_fees(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for user, fee in self.query("SELECT user, fee FROM broker_requests WHERE settled = 0"):
            totals[user] = totals.get(user, 0) + int(fee)
        return totals

    # -- per-batch invariants --

    def scan_log(self) -> None:
        """Count tracebacks written to the stack's log since the last scan."""
        for path in (self.log_path, self.workdir / "stdout.log"):
            if not path.exists():
                continue
            data = path.read_bytes()
            key = f"_offset_{path.name}"
            start = self.spec.get(key, 0)
            new = data[start:]
            self.spec[key] = len(data)
            for match in _TRACEBACK.finditer(new):
                context = new[max(0, match.start() - 300) : match.end() + 900].decode(errors="replace")
                self.tally.add("tracebacks", f"{self.name} {path.name}: {context}")

    async def check_balances(self, devnet: Devnet) -> None:
        inference = devnet.chain.inference(devnet.chain.wallet(self.provider.private_key))
        fees = self.unsettled_fees()
        for user in self.users:
            owed = fees.get(user.address.lower(), 0)
            if owed == 0:
                continue
            account = await inference.get_account(user.address, self.provider.address)
            if owed > account.balance:
                self.tally.add(
                    "overdrafts",
                    f"{self.name}: {user.address} owes {owed / OG:.6f} 0G, has {account.balance / OG:.6f} 0G",
                )

    async def after_batch(self, devnet: Devnet) -> None:
        if not self.alive():
            self.revive("(between inputs)")
        self.scan_log()
        await self.check_balances(devnet)


def is_answer(reply: Reply) -> bool:
    """A completion delivered to the client: what must have been billed."""
    return reply.status == 200 and (
        reply.header("zg-res-key") is not None or b'"choices"' in reply.body[:1_000_000]
    )


def answer_key(reply: Reply) -> str | None:
    key = reply.header("zg-res-key")
    if key:
        return key
    found = _ID.search(reply.body)
    return found.group(1).decode("utf-8", "replace") if found else None


async def _fund(devnet: Devnet, provider: str, amount: int) -> DevAccount:
    user = await devnet.new_account()
    ledger = devnet.chain.ledger(devnet.chain.wallet(user.private_key))
    await ledger.add_ledger(max(10 * OG, amount + 3 * OG))
    await ledger.transfer_fund(provider, amount)
    return user


async def start_stack(
    name: str,
    devnet: Devnet,
    deployment_file: Path,
    workdir: Path,
    tally: Tally,
    *,
    fake: bool,
    model: str,
    prices: tuple[int, int],
    balances: list[int],
    billing: dict[str, Any] | None = None,
    models: list[dict[str, Any]] | None = None,
) -> Stack:
    provider = await devnet.new_account()
    port = free_port()
    spec: dict[str, Any] = {
        "fake": fake,
        "media": models is not None,
        "port": port,
        "log": str(workdir / "stack.log"),
        "backend_log": str(workdir / "backend.log"),
        "llama_log": str(workdir / "llama.log"),
        "ready": str(workdir / "ready.json"),
        "service_store": str(workdir / "signatures.sqlite3"),
        "broker": {
            "servingUrl": f"http://127.0.0.1:{port}",
            "model": model,
            "inputPrice": prices[0],
            "outputPrice": prices[1],
            "privateKeys": [provider.private_key],
            "network": {"deployment": str(deployment_file)},
            "database": {"url": f"sqlite+aiosqlite:///{workdir}/broker.db"},
            "tee": {"backend": "simulated", "keyFile": str(workdir / "tee.json")},
            "auth": {"accountCacheSeconds": 0.5},
            "admin": {"token": ADMIN_TOKEN},
            "settlement": {"enabled": True, "intervalSeconds": 3600},
            "billing": billing or {},
            # The batches are bursts of few users: the official per-user limits would refuse them.
            "limits": {"maxGlobalConcurrent": 0, "maxPerUserConcurrent": 0, "perUserRPM": 0},
        },
    }
    if models is not None:
        spec["broker"]["models"] = models  # "targetUrl": "@media" is the media backend's service
    stack = Stack(name=name, workdir=workdir, spec=spec, provider=provider, tally=tally)
    stack.launch()
    owner = devnet.chain.inference(devnet.owner_wallet())
    await owner.acknowledge_tee_signer_by_owner(provider.address)
    for amount in balances:
        stack.users.append(await _fund(devnet, provider.address, amount))
    return stack


# Prices of the fake stack: the broker tests' (neuron per token).
FAKE_PRICES = (1_000_000_000, 2_000_000_000)
# Prices of the llama stack: 10^-5 0G per prompt token, 0.01 0G per completion token, so that a
# few hundred tokens generated past the cap overdraw the 1 0G (the contract's minimum) sub-account.
LLAMA_PRICES = (10**13, 10**16)
LLAMA_OUTPUT_LIMIT = 48


@pytest.fixture(scope="session")
async def fake_stack(
    devnet: Devnet, deployment_file: Path, tmp_path_factory: pytest.TempPathFactory, tally: Tally
) -> AsyncIterator[Stack]:
    stack = await start_stack(
        "fake",
        devnet,
        deployment_file,
        tmp_path_factory.mktemp("adversarial-fake"),
        tally,
        fake=True,
        model="fake-model",
        prices=FAKE_PRICES,
        balances=[5 * OG, 5 * OG],
    )
    try:
        yield stack
    finally:
        stack.stop()
        stack.scan_log()


@pytest.fixture(scope="session")
async def llama_stack(
    devnet: Devnet, deployment_file: Path, tmp_path_factory: pytest.TempPathFactory, tally: Tally
) -> AsyncIterator[Stack]:
    pytest.importorskip("llama_cpp.server")
    stack = await start_stack(
        "llama",
        devnet,
        deployment_file,
        tmp_path_factory.mktemp("adversarial-llama"),
        tally,
        fake=False,
        model="SmolLM2-135M-Instruct",
        prices=LLAMA_PRICES,
        # user 0: the burst (1 0G: a hundred completion tokens); user 1: disconnects.
        balances=[OG, 2 * OG],
        billing={"maxOutputTokens": LLAMA_OUTPUT_LIMIT},
    )
    try:
        yield stack
    finally:
        stack.stop()
        stack.scan_log()


# Media models of the media stack (neuron per image, per audio second).
MEDIA_PRICES = {"image": 10**15, "stt": 10**14, "tts": 2 * 10**14}
MEDIA_MODELS: list[dict[str, Any]] = [
    {"id": "fake-model", "inputPrice": FAKE_PRICES[0], "outputPrice": FAKE_PRICES[1]},
    {"id": "painter", "type": "text-to-image", "inputPrice": 0, "outputPrice": MEDIA_PRICES["image"],
     "targetUrl": "@media", "sizeMultipliers": {"64x64": "1.5"}},
    {"id": "editor", "type": "image-editing", "inputPrice": 0, "outputPrice": MEDIA_PRICES["image"],
     "targetUrl": "@media"},
    {"id": "ears", "type": "speech-to-text", "inputPrice": MEDIA_PRICES["stt"], "outputPrice": 0,
     "targetUrl": "@media"},
    {"id": "voice", "type": "text-to-speech", "inputPrice": 0, "outputPrice": MEDIA_PRICES["tts"],
     "targetUrl": "@media", "maxAudioSeconds": 20},
]  # fmt: skip


@pytest.fixture(scope="session")
async def media_stack(
    devnet: Devnet, deployment_file: Path, tmp_path_factory: pytest.TempPathFactory, tally: Tally
) -> AsyncIterator[Stack]:
    stack = await start_stack(
        "media",
        devnet,
        deployment_file,
        tmp_path_factory.mktemp("adversarial-media"),
        tally,
        fake=True,
        model="fake-model",
        prices=FAKE_PRICES,
        balances=[5 * OG, 5 * OG],
        models=MEDIA_MODELS,
    )
    try:
        yield stack
    finally:
        stack.stop()
        stack.scan_log()
